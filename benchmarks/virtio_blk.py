#!/usr/bin/env python3
"""virtio-blk against kvmtool: the same Linux guest runs `dd` with O_DIRECT against a raw image file, under pyvmm and
(with --lkvm) under kvmtool, in the same host. Two modes per boot:
- throughput: bs=1M, --mib MiB written then read (MB/s), target pyvmm >= 0.9 x kvmtool;
- request rate: bs=4k, --ops requests written then read (IOPS, one request in flight), target >= 0.8 x kvmtool.

Runs on an arm64 host with /dev/kvm (pyvmm boots Linux on arm64 only), e.g. inside the arm64 lane's emulated host.
There the figures are INDICATIVE ONLY: everything runs under TCG emulation, so neither absolute numbers nor the
ratio predict real hardware.

The guest is the lane's L2 (Debian's arm64 kernel + the busybox initramfs whose /init runs `pyvmm.cmd=<base64>`);
its kernel and initrd come from --kernel/--initrd or PYVMM_TEST_L2_KERNEL/PYVMM_TEST_L2_INITRD. Time is measured in
the guest from /proc/uptime around each dd (10 ms resolution; use enough MiB / ops that a pass takes seconds).

    python3 benchmarks/virtio_blk.py --mib 32 --ops 2000 --lkvm /path/to/arm64/lkvm
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

from _common import machine_info, write_json

TARGET_THROUGHPUT = 0.9
TARGET_IOPS = 0.8
GUEST = """
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/dev/vda bs=1M count={mib} oflag=direct 2>/dev/null || echo BENCH-FAILED write
t1=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null || echo BENCH-FAILED read
t2=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/dev/vda bs=4k count={ops} oflag=direct 2>/dev/null || echo BENCH-FAILED write4k
t3=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=4k count={ops} iflag=direct 2>/dev/null || echo BENCH-FAILED read4k
t4=$(cut -d' ' -f1 /proc/uptime)
echo "BENCH-RESULT $t0 $t1 $t2 $t3 $t4"
"""
RESULT = re.compile(rb"BENCH-RESULT ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)")
FIGURES = ("write 1M MB/s", "read 1M MB/s", "write 4k IOPS", "read 4k IOPS")


def guest_cmdline(mib: int, ops: int) -> str:
    script = base64.b64encode(GUEST.format(mib=mib, ops=ops).encode()).decode()
    return f"panic=-1 console=ttyS0 pyvmm.cmd={script}"


def measure(cmd: list[str], mib: int, ops: int, timeout: float) -> tuple[float, ...]:
    """(write MB/s, read MB/s, write IOPS, read IOPS) from one guest boot."""
    result = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    found = RESULT.search(result.stdout)
    if found is None or b"BENCH-FAILED" in result.stdout:
        tail = result.stdout[-1500:].decode(errors="replace")
        raise SystemExit(f"{cmd[0]}: the guest did not report a result (status {result.returncode}):\n{tail}")
    t = [float(x) for x in found.groups()]
    size = mib * (1 << 20) / 1e6
    spans = [max(b - a, 0.01) for a, b in zip(t, t[1:])]
    return size / spans[0], size / spans[1], ops / spans[2], ops / spans[3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default=os.environ.get("PYVMM_TEST_L2_KERNEL"))
    parser.add_argument("--initrd", default=os.environ.get("PYVMM_TEST_L2_INITRD"))
    parser.add_argument("--mib", type=int, default=32, help="MiB written then read with bs=1M (default 32)")
    parser.add_argument("--ops", type=int, default=2000, help="4 KiB requests written then read (default 2000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lkvm", help="kvmtool binary for the side-by-side run (skipped when absent)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", help="write the summary (medians, ratios, targets, verdicts, machine) to this file")
    args = parser.parse_args()
    if not args.kernel or not args.initrd:
        parser.error("give --kernel and --initrd (or set PYVMM_TEST_L2_KERNEL / PYVMM_TEST_L2_INITRD)")
    if args.mib < 1 or args.ops < 1:
        parser.error("--mib and --ops must be at least 1")
    if os.uname().machine != "aarch64":
        parser.error("pyvmm boots Linux guests on arm64 only: run this inside an arm64 host (e.g. the arm64 lane)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "bench.img"
        with open(image, "wb") as f:  # written out, not sparse: block allocation must not favour whoever runs second
            for _ in range(max(args.mib, args.ops * 4096 >> 20) + 16):
                f.write(bytes(1 << 20))
        cmdline = guest_cmdline(args.mib, args.ops)
        runs = {"pyvmm": [sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", args.kernel, "-i", args.initrd,
                          "-m", "512M", "-p", cmdline, "--disk", f"{image},cache=writeback"]}
        if args.lkvm and os.access(args.lkvm, os.X_OK):
            runs["kvmtool"] = [args.lkvm, "run", "-k", args.kernel, "-i", args.initrd, "-m", "512", "-c", "1",
                               "--console", "serial", "--irqchip", "gicv3", "-d", str(image), "-p", cmdline]
        else:
            print(f"SKIP kvmtool: {'no --lkvm given' if not args.lkvm else args.lkvm + ' is not executable'}")
        results: dict[str, list[tuple[float, ...]]] = {name: [] for name in runs}
        for i in range(args.repeat):
            for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):  # interleaved, order flipped
                results[name].append(measure(runs[name], args.mib, args.ops, args.timeout))
                print(f"  run {i + 1} {name}: " + ", ".join(f"{v:.1f}" for v in results[name][-1]), flush=True)
    print(f"virtio-blk, guest dd O_DIRECT: bs=1M x {args.mib} and bs=4k x {args.ops}, {args.repeat} runs (medians)")
    medians = {}
    for name, values in results.items():
        columns = [sorted(column) for column in zip(*values)]
        medians[name] = [column[len(column) // 2] for column in columns]
        print(f"  {name:8s} " + "   ".join(f"{what} {m:8.1f}" for what, m in zip(FIGURES, medians[name])))
    rows = []
    for i, what in enumerate(FIGURES):
        row: dict[str, object] = {"what": f"virtio-blk {what}", "pyvmm": round(medians["pyvmm"][i], 1)}
        if "kvmtool" in medians:
            target = TARGET_THROUGHPUT if "MB/s" in what else TARGET_IOPS
            ratio = medians["pyvmm"][i] / medians["kvmtool"][i]
            print(f"  ratio pyvmm/kvmtool {what}: {ratio:.2f} (target >= {target})")
            row |= {"reference": round(medians["kvmtool"][i], 1), "ratio": round(ratio, 2), "target": f">= {target}",
                    "verdict": "MET" if ratio >= target else "NOT MET"}
        rows.append(row)
    print("  INDICATIVE ONLY when run under emulation (the arm64 lane): not a performance figure.")
    write_json(args.json, {"rows": rows, "runs": results, "mib": args.mib, "ops": args.ops, **machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
