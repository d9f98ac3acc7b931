#!/usr/bin/env python3
"""Per-exit cost of pyvmm's real run loop against a minimal C KVM loop, same guest, same machine.

Both sides run the bundled x86_64 `exits` guest as a fresh process: the guest reads N from the test device's ARG
port and does N port writes (N userspace exits). Process start-up and teardown cancel in
    per-exit cost = (time(N) - time(1)) / (N - 1)
(the baseline is N = 1, not 0, because the guest treats ARG 0 as "use the default", 100000). Runs are interleaved
(C and pyvmm alternate, order flipped every repetition) so that drift in the machine hits both alike.

The C side is benchmarks/c/exit_loop.c, compiled with gcc into a temporary directory on every run.
The pyvmm side is `pyvmm run -k exits.bin --no-stdin --guest-arg N`: the CLI, vcpu_thread.VcpuThread._loop and the
test device, exactly as a user runs it. `--also LABEL=EXE` adds other pyvmm builds (e.g. an older commit's venv)
to the same rotation, for a before/after comparison in one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from _common import (GUESTS_X86, Summary, default_pyvmm, editable_note, ensure_bytecode, machine_info, machine_note,
                     resolve_tool, script_interpreter, table, verdict, write_json)

TARGET = 1.08      # pyvmm/C, medians of the per-exit cost
ADDED_US = 0.7     # pyvmm median - C median, microseconds: what Python adds to one exit
C_SOURCE = Path(__file__).resolve().parent / "c" / "exit_loop.c"


def timed(cmd: list[str], what: str, exits: int | None = None) -> float:
    """Wall time of one process run; the run must succeed (exit 0), or the figure means nothing."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        sys.exit(f"exit_roundtrip: {what} failed with status {proc.returncode}: {tail[0]}")
    # The C loop counts its exits: N SINK writes + the ARG read + the EXIT write + the guest's `exits: N` report (an
    # LSR read and a THR write per character). A mismatch means it measured something else than the guest's loop.
    expected = None if exits is None else exits + 2 + 2 * len(f"exits: {exits}\n")
    if expected is not None and f"exit_loop: {expected} exits".encode() not in proc.stderr:
        sys.exit(f"exit_roundtrip: {what} did not see {expected} exits: {proc.stderr.decode(errors='replace')!r}")
    return elapsed


def build_c(gcc: str, workdir: Path) -> Path:
    binary = workdir / "exit_loop"
    proc = subprocess.run([gcc, "-O2", "-o", str(binary), str(C_SOURCE)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        sys.exit(f"exit_roundtrip: gcc failed on {C_SOURCE}:\n{proc.stderr.strip()}")
    return binary


def also_side(spec: str) -> tuple[str, str]:
    label, eq, exe = spec.partition("=")
    if not eq or not label or not exe:
        raise argparse.ArgumentTypeError(f"expected LABEL=PYVMM_EXECUTABLE, got {spec!r}")
    if label in ("C", "pyvmm"):
        raise argparse.ArgumentTypeError(f"label {label!r} is taken")
    return label, exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--exits", type=int, default=100_000, help="exits per measured run (default 100000)")
    ap.add_argument("-r", "--repeat", type=int, default=7, help="repetitions, interleaved (default 7)")
    ap.add_argument("--pyvmm", default=default_pyvmm(),
                    help="pyvmm executable (default: the console script beside this interpreter, else PATH)")
    ap.add_argument("--also", type=also_side, action="append", default=[], metavar="LABEL=PYVMM_EXECUTABLE",
                    help="another pyvmm build measured in the same rotation (repeatable), e.g. an older commit's "
                         "venv: before=/tmp/old/.venv/bin/pyvmm")
    ap.add_argument("--gcc", default="gcc", help="C compiler for the reference loop (default: gcc on PATH)")
    ap.add_argument("--guest", type=Path, default=GUESTS_X86 / "exits.bin", help="the exits guest (flat binary)")
    ap.add_argument("--memory", type=int, default=256, help="guest RAM in MiB for both sides (default 256, pyvmm's)")
    ap.add_argument("--json", metavar="FILE", help="also write the summary to FILE as JSON")
    args = ap.parse_args()
    if args.exits < 2 or args.repeat < 1:
        ap.error("--exits must be at least 2 and --repeat at least 1")
    if not args.guest.is_file():
        ap.error(f"guest {args.guest} not found (build it with `make -C guest-kernels`)")
    if len({label for label, _ in args.also}) != len(args.also):
        ap.error("--also labels must differ")

    pyvmm = resolve_tool(args.pyvmm, "pyvmm")
    gcc = resolve_tool(args.gcc, "C reference loop (gcc)")
    if pyvmm is None:
        return 1
    builds = {"pyvmm": pyvmm}
    for label, exe in args.also:
        found = resolve_tool(exe, f"--also {label}")
        if found is None:
            return 1
        builds[label] = found
    info_before = machine_info()
    n = args.exits
    print(f"exit round trip: guest {args.guest.name}, N = {n} exits, {args.repeat} interleaved repetitions, "
          f"per-exit = (t(N) - t(1)) / (N - 1)")
    print(machine_note())
    bytecode = {}
    for label, exe in builds.items():
        print(f"{label}: {exe} (python: {script_interpreter(exe) or 'unknown'})")
        bytecode[label] = ensure_bytecode(exe, [[exe, "run", "-k", str(args.guest), "--no-stdin", "--guest-arg", "1"]])
        print(f"  {bytecode[label]}")
        if note := editable_note(exe):
            print(f"  {note}")

    with tempfile.TemporaryDirectory(prefix="pyvmm-bench-") as tmp:
        c_loop = build_c(gcc, Path(tmp)) if gcc else None
        if c_loop:
            print(f"C loop: {C_SOURCE.relative_to(C_SOURCE.parent.parent.parent)} built with {gcc} -O2")

        def py_cmd(exe: str) -> Callable[[int], list[str]]:
            return lambda k: [exe, "run", "-k", str(args.guest), "--no-stdin", "-m", f"{args.memory}M",
                              "--guest-arg", str(k)]

        def c_cmd(k: int) -> list[str]:
            return [str(c_loop), str(args.guest), str(k), str(args.memory)]

        sides = {label: py_cmd(exe) for label, exe in builds.items()} | ({"C": c_cmd} if c_loop else {})
        names = list(sides)
        per_exit: dict[str, list[float]] = {name: [] for name in sides}
        base: dict[str, list[float]] = {name: [] for name in sides}
        for rep in range(args.repeat):
            k = rep % len(names)  # rotate the order so that no side always runs first (or right after another)
            for name in names[k:] + names[:k]:
                t1 = timed(sides[name](1), f"{name} N=1", 1 if name == "C" else None)
                tn = timed(sides[name](n), f"{name} N={n}", n if name == "C" else None)
                base[name].append(t1)
                per_exit[name].append((tn - t1) / (n - 1))
            line = "  ".join(f"{name} {per_exit[name][-1] * 1e6:6.2f} us/exit" for name in sides)
            print(f"  rep {rep + 1}/{args.repeat}: {line}", flush=True)

    print(machine_note())
    stats = {name: Summary.of(v) for name, v in per_exit.items()}
    rows = []
    for name in sides:
        s, b = stats[name], Summary.of(base[name])
        rows.append([name, f"{s.median * 1e6:.2f}", f"{s.low * 1e6:.2f}-{s.high * 1e6:.2f}", f"{s.spread_pct():.0f}%",
                     f"{b.median * 1e3:.1f}"])
    print()
    print(table(rows, ["loop", "median us/exit", "min-max", "spread", "t(N=1) ms"]))
    summary: dict[str, object] = {
        "benchmark": "exit_roundtrip", "exits": n, "repeat": args.repeat, "guest": args.guest.name,
        "machine": info_before, "loadavg_after": list(os.getloadavg()), "note": machine_note(),
        "bytecode": bytecode,
        "sides": {name: {"exe": builds.get(name, f"{C_SOURCE.name} (gcc -O2)"), "unit": "us", **stats[name].scaled(1e6),
                         "t1_ms": Summary.of(base[name]).median * 1e3} for name in sides},
        "targets": {"ratio_max": TARGET, "added_us_max": ADDED_US},
    }
    if "C" in stats:
        c = stats["C"]
        ratio = stats["pyvmm"].median / c.median
        pair = sorted(p / q for p, q in zip(per_exit["pyvmm"], per_exit["C"]))
        extra = (stats["pyvmm"].median - c.median) * 1e6
        print(f"\nratio pyvmm/C (medians): {ratio:.3f}   per-repetition ratios {pair[0]:.3f}-{pair[-1]:.3f}   "
              f"pyvmm adds {extra:.2f} us per exit")
        print(f"ratio of the fastest runs (less sensitive to a busy machine, not the target's figure): "
              f"{stats['pyvmm'].low / c.low:.3f}")
        v_ratio, v_added = verdict(ratio, TARGET), verdict(extra, ADDED_US)
        print(f"target: pyvmm/C (medians) <= {TARGET:.2f} -> {v_ratio}")
        print(f"target: Python's added cost per exit (pyvmm median - C median) <= {ADDED_US} us -> {v_added}")
        summary |= {"ratio": ratio, "ratio_per_rep": [pair[0], pair[-1]], "ratio_fastest": stats["pyvmm"].low / c.low,
                    "added_us": extra, "verdicts": {"ratio": v_ratio, "added_us": v_added}}
    else:
        print(f"\ntargets: pyvmm/C <= {TARGET:.2f}, added cost <= {ADDED_US} us -> not checked (no C reference)")
        summary |= {"verdicts": {"ratio": "NOT CHECKED", "added_us": "NOT CHECKED"}}
    also: dict[str, dict[str, float]] = {}
    for label in list(builds)[1:]:
        s, main_ = stats[label], stats["pyvmm"]
        also[label] = {"ratio_pyvmm": s.median / main_.median}
        line = f"{label}: {s.median * 1e6:.2f} us/exit, {label}/pyvmm {s.median / main_.median:.3f}"
        if "C" in stats:
            also[label] |= {"ratio_c": s.median / stats["C"].median, "added_us": (s.median - stats["C"].median) * 1e6}
            line += f", {label}/C {also[label]['ratio_c']:.3f} (adds {also[label]['added_us']:.2f} us per exit)"
        print(line)
    summary["also"] = also
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
