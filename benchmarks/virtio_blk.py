#!/usr/bin/env python3
"""virtio-blk sequential throughput: the same Linux guest runs `dd` with O_DIRECT against a raw image file, under
pyvmm and (with --lkvm) under kvmtool, in the same host; prints MB/s for each and the ratio pyvmm/kvmtool.

Runs on an arm64 host with /dev/kvm (pyvmm boots Linux on arm64 only), e.g. inside the arm64 lane's emulated host.
There the figures are INDICATIVE ONLY: everything runs under TCG emulation, so neither absolute numbers nor the
ratio predict real hardware. The target of issue 5 is pyvmm >= 0.9 x kvmtool.

The guest is the lane's L2 (Debian's arm64 kernel + the busybox initramfs whose /init runs `pyvmm.cmd=<base64>`);
its kernel and initrd come from --kernel/--initrd or PYVMM_TEST_L2_KERNEL/PYVMM_TEST_L2_INITRD. Time is measured in
the guest from /proc/uptime around each dd (10 ms resolution; use enough MiB that a pass takes seconds).

    python3 benchmarks/virtio_blk.py --mib 64 --lkvm /path/to/arm64/lkvm
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET = 0.9
GUEST = """
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/dev/vda bs=1M count={mib} oflag=direct 2>/dev/null || echo BENCH-FAILED write
t1=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null || echo BENCH-FAILED read
t2=$(cut -d' ' -f1 /proc/uptime)
echo "BENCH-RESULT $t0 $t1 $t2"
"""
RESULT = re.compile(rb"BENCH-RESULT ([\d.]+) ([\d.]+) ([\d.]+)")


def guest_cmdline(mib: int) -> str:
    script = base64.b64encode(GUEST.format(mib=mib).encode()).decode()
    return f"panic=-1 console=ttyS0 pyvmm.cmd={script}"


def measure(cmd: list[str], mib: int, timeout: float) -> tuple[float, float]:
    """(write MB/s, read MB/s) from one guest boot."""
    result = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    found = RESULT.search(result.stdout)
    if found is None or b"BENCH-FAILED" in result.stdout:
        tail = result.stdout[-1500:].decode(errors="replace")
        raise SystemExit(f"{cmd[0]}: the guest did not report a result (status {result.returncode}):\n{tail}")
    t0, t1, t2 = (float(x) for x in found.groups())
    size = mib * (1 << 20) / 1e6
    return size / max(t1 - t0, 0.01), size / max(t2 - t1, 0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default=os.environ.get("PYVMM_TEST_L2_KERNEL"))
    parser.add_argument("--initrd", default=os.environ.get("PYVMM_TEST_L2_INITRD"))
    parser.add_argument("--mib", type=int, default=64, help="MiB written then read by each dd (default 64)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lkvm", help="kvmtool binary for the side-by-side run (skipped when absent)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    if not args.kernel or not args.initrd:
        parser.error("give --kernel and --initrd (or set PYVMM_TEST_L2_KERNEL / PYVMM_TEST_L2_INITRD)")
    if os.uname().machine != "aarch64":
        parser.error("pyvmm boots Linux guests on arm64 only: run this inside an arm64 host (e.g. the arm64 lane)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "bench.img"
        with open(image, "wb") as f:  # written out, not sparse: block allocation must not favour whoever runs second
            for _ in range(args.mib + 16):
                f.write(bytes(1 << 20))
        cmdline = guest_cmdline(args.mib)
        runs = {"pyvmm": [sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", args.kernel, "-i", args.initrd,
                          "-m", "512M", "-p", cmdline, "--disk", f"{image},cache=writeback"]}
        if args.lkvm and os.access(args.lkvm, os.X_OK):
            runs["kvmtool"] = [args.lkvm, "run", "-k", args.kernel, "-i", args.initrd, "-m", "512", "-c", "1",
                               "--console", "serial", "--irqchip", "gicv3", "-d", str(image), "-p", cmdline]
        else:
            print(f"SKIP kvmtool: {'no --lkvm given' if not args.lkvm else args.lkvm + ' is not executable'}")
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for i in range(args.repeat):
            for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):  # interleaved, order flipped
                results[name].append(measure(runs[name], args.mib, args.timeout))
    print(f"virtio-blk, guest dd O_DIRECT bs=1M, {args.mib} MiB, {args.repeat} runs (median MB/s)")
    medians = {}
    for name, values in results.items():
        writes = sorted(w for w, _ in values)
        reads = sorted(r for _, r in values)
        medians[name] = (writes[len(writes) // 2], reads[len(reads) // 2])
        print(f"  {name:8s} write {medians[name][0]:9.1f}   read {medians[name][1]:9.1f}")
    if "kvmtool" in medians:
        for i, what in enumerate(("write", "read")):
            ratio = medians["pyvmm"][i] / medians["kvmtool"][i]
            print(f"  ratio pyvmm/kvmtool {what}: {ratio:.2f} (target >= {TARGET})")
    print("  INDICATIVE ONLY when run under emulation (the arm64 lane): not a performance figure.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
