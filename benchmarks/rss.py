#!/usr/bin/env python3
"""Resident memory of the pyvmm process itself, guest RAM excluded, while an idle bare-metal guest runs.

`pyvmm run -k idle --no-stdin -m SIZE --guest-arg PERIODS --guest-arg PERIOD_US` (the idle guest arms a one-shot
timer PERIODS times and halts until it fires: docs/MACHINES.md), long enough to outlast the measure; after
--settle seconds the script reads /proc/PID/smaps, sums Rss over every mapping except guest RAM, then stops the VM
with SIGTERM (pyvmm ends with status 143). Guest RAM is pyvmm's one anonymous private mapping whose size is exactly
the guest memory size (pyvmm/kvm/memory.py); the script requires exactly one such mapping and says how much of it
is resident (the guest's own pages), for information. Target: <= 25 MiB.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from _common import (Summary, default_pyvmm, editable_note, ensure_bytecode, machine_info, machine_note, resolve_tool,
                     table, verdict, write_json)

TARGET_MIB = 25.0
HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)$")


@dataclass
class Mapping:
    start: int
    end: int
    path: str
    rss_kib: int = 0


def read_smaps(pid: int) -> list[Mapping]:
    maps: list[Mapping] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = HEADER.match(line)
            if m:
                maps.append(Mapping(int(m.group(1), 16), int(m.group(2), 16), m.group(3).strip()))
            elif line.startswith("Rss:") and maps:
                maps[-1].rss_kib = int(line.split()[1])
    return maps


def measure(cmd: list[str], guest_bytes: int, settle: float) -> tuple[int, int, int]:
    """(VMM Rss without guest RAM, guest RAM Rss, whole-process Rss), in KiB, of one run."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            sys.exit(f"rss: pyvmm ended early with status {proc.returncode}: {err[-500:]}")
        maps = read_smaps(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
    if status not in (0, 128 + signal.SIGTERM):
        sys.exit(f"rss: pyvmm ended with status {status} after SIGTERM (expected 143)")
    ram = [m for m in maps if not m.path and m.end - m.start == guest_bytes]
    if len(ram) != 1:
        sys.exit(f"rss: expected one anonymous mapping of {guest_bytes} bytes (guest RAM), found {len(ram)}")
    total = sum(m.rss_kib for m in maps)
    return total - ram[0].rss_kib, ram[0].rss_kib, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--repeat", type=int, default=3, help="runs (default 3)")
    ap.add_argument("--pyvmm", default=default_pyvmm(),
                    help="pyvmm executable (default: the console script beside this interpreter, else PATH)")
    ap.add_argument("--memory", type=int, default=256, help="guest RAM in MiB (default 256, pyvmm's)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of running before smaps is read (default 1)")
    ap.add_argument("--json", metavar="FILE", help="also write the summary to FILE as JSON")
    args = ap.parse_args()
    if args.repeat < 1 or args.settle <= 0 or args.memory < 1:
        ap.error("--repeat, --settle and --memory must be positive")
    pyvmm = resolve_tool(args.pyvmm, "pyvmm")
    if pyvmm is None:
        return 1
    # 100000 periods of 10 ms: some 17 minutes, far more than the measure needs; SIGTERM ends it.
    cmd = [pyvmm, "run", "-k", "idle", "--no-stdin", "-m", f"{args.memory}M", "--guest-arg", "100000",
           "--guest-arg", "10000"]
    info = machine_info()
    print(f"VMM resident memory without guest RAM: idle guest, {args.memory} MiB RAM, smaps read after "
          f"{args.settle:g} s, {args.repeat} runs")
    print(machine_note())
    print(f"  pyvmm: {' '.join(cmd)}")
    bytecode = ensure_bytecode(pyvmm, [[pyvmm, "run", "--no-stdin"]])
    print(bytecode)
    if note := editable_note(pyvmm):
        print(note)
    runs = [measure(cmd, args.memory << 20, args.settle) for _ in range(args.repeat)]
    vmm, ram, total = (Summary.of([r[i] / 1024 for r in runs]) for i in range(3))
    rows = [[what, f"{s.median:.2f}", f"{s.low:.2f}-{s.high:.2f}"]
            for what, s in (("VMM (all mappings but guest RAM)", vmm), ("guest RAM resident", ram),
                            ("whole process", total))]
    print()
    print(table(rows, ["Rss", "median MiB", "min-max"]))
    v = verdict(vmm.high, TARGET_MIB)
    print(f"\ntarget: VMM Rss without guest RAM <= {TARGET_MIB:g} MiB (largest of the runs: {vmm.high:.1f}) -> {v}")
    write_json(args.json, {"benchmark": "rss", "memory_mib": args.memory, "settle_s": args.settle,
                           "machine": info, "bytecode": bytecode, "unit": "MiB", "vmm": vmm.scaled(1),
                           "guest_ram": ram.scaled(1), "total": total.scaled(1), "target_mib": TARGET_MIB,
                           "verdict": v, "loadavg_after": list(os.getloadavg())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
