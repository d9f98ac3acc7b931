#!/usr/bin/env python3
"""Linux boot time, quiet and console-heavy: the same arm64 Linux guest boots to userspace and powers off under
pyvmm (with the UART's writes coalesced in KVM's ring and its status reads from a read-only page, and with
--no-coalesced-console: an exit per access) and (with --lkvm) under kvmtool, interleaved; prints medians, min-max
and the ratios pyvmm/kvmtool.

Runs on an arm64 host with /dev/kvm (pyvmm boots Linux on arm64 only), e.g. inside the arm64 lane's emulated host.
There the figures are INDICATIVE ONLY: everything runs under TCG emulation. The target of issue 15 is a
console-heavy boot (no `quiet`) within 1.15 x kvmtool.

The guest is the lane's L2 (Debian's arm64 kernel + the busybox initramfs whose /init prints PYVMM-L2-USERSPACE-OK,
runs `pyvmm.cmd=<base64>` and powers off); kernel and initrd from --kernel/--initrd or PYVMM_TEST_L2_KERNEL/
PYVMM_TEST_L2_INITRD. Times are the host's, from just before the VMM is started to that line on its stdout
("userspace") and to the VMM's exit ("power-off").

    python3 benchmarks/boot.py --repeat 3 --lkvm /path/to/arm64/lkvm
"""

from __future__ import annotations

import argparse
import base64
import os
import selectors
import statistics
import subprocess
import sys
import time

from _common import Summary, machine_info, verdict, write_json

TARGET = 1.15
USERSPACE = b"PYVMM-L2-USERSPACE-OK"
DONE = b"PYVMM-L2-CMD-EXIT 0"
# The same kernel command line for every VMM: the console on the UART, no earlycon (kvmtool's device tree may not
# name a stdout-path), and a command that returns at once so /init powers off.
BASE_CMDLINE = f"console=ttyS0 panic=-1 pyvmm.cmd={base64.b64encode(b'true').decode()}"
CONSOLES = {"quiet": "quiet", "verbose": ""}


def boot(cmd: list[str], timeout: float) -> tuple[float, float, int]:
    """(seconds to userspace, seconds to exit, console bytes) of one boot."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    userspace = None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        open_pipes = 2
        while open_pipes:
            left = start + timeout - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                tail = bytes(out[-1500:]).decode(errors="replace")
                raise SystemExit(f"{cmd[0]}: no exit within {timeout:g} s:\n{tail}")
            for key, _ in sel.select(left):
                data = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not data:
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
                elif key.fileobj is proc.stdout:
                    out += data
                    if userspace is None and USERSPACE in out:
                        userspace = time.monotonic() - start
    proc.wait()
    ended = time.monotonic() - start
    if userspace is None or DONE not in out:
        raise SystemExit(f"{cmd[0]}: the guest did not reach userspace and its command (status {proc.returncode}):\n"
                         f"{bytes(out[-1500:]).decode(errors='replace')}")
    return userspace, ended, len(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default=os.environ.get("PYVMM_TEST_L2_KERNEL"))
    parser.add_argument("--initrd", default=os.environ.get("PYVMM_TEST_L2_INITRD"))
    parser.add_argument("--repeat", type=int, default=3, help="boots per VMM and console mode (default 3)")
    parser.add_argument("--lkvm", help="kvmtool binary for the side-by-side run (skipped when absent)")
    parser.add_argument("--timeout", type=float, default=900, help="bound on one boot, seconds")
    parser.add_argument("--json", help="write the summary (medians, ratios, targets, verdicts, machine) to this file")
    args = parser.parse_args()
    if not args.kernel or not args.initrd:
        parser.error("give --kernel and --initrd (or set PYVMM_TEST_L2_KERNEL / PYVMM_TEST_L2_INITRD)")
    if os.uname().machine != "aarch64":
        parser.error("pyvmm boots Linux guests on arm64 only: run this inside an arm64 host (e.g. the arm64 lane)")
    pyvmm = [sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", args.kernel, "-i", args.initrd, "-m", "512M"]
    vmms = {"pyvmm": lambda p: [*pyvmm, "-p", p],
            "pyvmm-nocoal": lambda p: [*pyvmm, "--no-coalesced-console", "-p", p]}
    if args.lkvm and os.access(args.lkvm, os.X_OK):
        vmms["kvmtool"] = lambda p: [args.lkvm, "run", "-k", args.kernel, "-i", args.initrd, "-m", "512", "-c", "1",
                                     "--console", "serial", "--irqchip", "gicv3", "-p", p]
    else:
        print(f"SKIP kvmtool: {'no --lkvm given' if not args.lkvm else args.lkvm + ' is not executable'}")
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    names = list(vmms)
    for i in range(args.repeat):
        for console, extra in CONSOLES.items():
            cmdline = f"{extra} {BASE_CMDLINE}".strip()
            for name in names[i % len(names):] + names[:i % len(names)]:  # interleaved, order rotated
                results.setdefault((console, name), []).append(boot(vmms[name](cmdline), args.timeout))
    print(f"Linux boot (lane L2 kernel + initrd, 1 vCPU, 512 MiB), {args.repeat} boots each: seconds, median "
          f"(min-max)")
    rows = []
    for console in CONSOLES:
        print(f"  {console} ({'`quiet`' if CONSOLES[console] else 'no `quiet`'}):")
        medians = {}
        for name in names:
            runs = results[(console, name)]
            userspace, power_off = Summary.of([r[0] for r in runs]), Summary.of([r[1] for r in runs])
            cells = [f"{what} {s.median:6.2f} ({s.low:.2f}-{s.high:.2f})"
                     for what, s in (("userspace", userspace), ("power-off", power_off))]
            medians[name] = (userspace.median, power_off.median)
            print(f"    {name:13s} {'   '.join(cells)}   console {statistics.median(r[2] for r in runs):.0f} B")
        for name in names:
            if name == "kvmtool" or "kvmtool" not in medians:
                continue
            ratios = [medians[name][k] / medians["kvmtool"][k] for k in (0, 1)]
            print(f"    ratio {name}/kvmtool: userspace {ratios[0]:.2f}, power-off {ratios[1]:.2f} "
                  f"(target <= {TARGET})")
            rows.append({"what": f"arm64 Linux boot to power-off, {console}, s ({name})",
                         "pyvmm": round(medians[name][1], 2), "reference": round(medians["kvmtool"][1], 2),
                         "ratio": round(ratios[1], 2), "target": f"<= {TARGET}",
                         "verdict": verdict(ratios[1], TARGET)})
        if "pyvmm-nocoal" in medians:
            print(f"    ratio pyvmm/pyvmm-nocoal: power-off {medians['pyvmm'][1] / medians['pyvmm-nocoal'][1]:.2f}")
    print("  INDICATIVE ONLY when run under emulation (the arm64 lane): not a performance figure.")
    runs = {f"{console} {name}": values for (console, name), values in results.items()}
    write_json(args.json, {"rows": rows, "runs": runs, "repeat": args.repeat, **machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
