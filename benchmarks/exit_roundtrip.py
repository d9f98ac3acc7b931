#!/usr/bin/env python3
"""Per-exit cost of pyvmm's real run loop against a minimal C KVM loop, same guest, same machine.

Both sides run the bundled x86_64 `exits` guest as a fresh process: the guest reads N from the test device's ARG
port and does N port writes (N userspace exits). Process start-up and teardown cancel in
    per-exit cost = (time(N) - time(1)) / (N - 1)
(the baseline is N = 1, not 0, because the guest treats ARG 0 as "use the default", 100000). Runs are interleaved
(C and pyvmm alternate, order flipped every repetition) so that drift in the machine hits both alike.

The C side is benchmarks/c/exit_loop.c, compiled with gcc into a temporary directory on every run.
The pyvmm side is `pyvmm run -k exits.bin --no-stdin --guest-arg N`: the CLI, vcpu_thread.VcpuThread._loop and the
test device, exactly as a user runs it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import GUESTS_X86, machine_note, Summary, default_pyvmm, resolve_tool, script_interpreter, table, verdict

TARGET = 1.15
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--exits", type=int, default=100_000, help="exits per measured run (default 100000)")
    ap.add_argument("-r", "--repeat", type=int, default=7, help="repetitions, interleaved (default 7)")
    ap.add_argument("--pyvmm", default=default_pyvmm(),
                    help="pyvmm executable (default: the console script beside this interpreter, else PATH)")
    ap.add_argument("--gcc", default="gcc", help="C compiler for the reference loop (default: gcc on PATH)")
    ap.add_argument("--guest", type=Path, default=GUESTS_X86 / "exits.bin", help="the exits guest (flat binary)")
    ap.add_argument("--memory", type=int, default=256, help="guest RAM in MiB for both sides (default 256, pyvmm's)")
    args = ap.parse_args()
    if args.exits < 2 or args.repeat < 1:
        ap.error("--exits must be at least 2 and --repeat at least 1")
    if not args.guest.is_file():
        ap.error(f"guest {args.guest} not found (build it with `make -C guest-kernels`)")

    pyvmm = resolve_tool(args.pyvmm, "pyvmm")
    gcc = resolve_tool(args.gcc, "C reference loop (gcc)")
    if pyvmm is None:
        return 1
    n = args.exits
    print(f"exit round trip: guest {args.guest.name}, N = {n} exits, {args.repeat} interleaved repetitions, "
          f"per-exit = (t(N) - t(1)) / (N - 1)")
    print(machine_note())
    print(f"pyvmm: {pyvmm} (python: {script_interpreter(pyvmm) or 'unknown'})")

    with tempfile.TemporaryDirectory(prefix="pyvmm-bench-") as tmp:
        c_loop = build_c(gcc, Path(tmp)) if gcc else None
        if c_loop:
            print(f"C loop: {C_SOURCE.relative_to(C_SOURCE.parent.parent.parent)} built with {gcc} -O2")

        def py_cmd(k: int) -> list[str]:
            return [pyvmm, "run", "-k", str(args.guest), "--no-stdin", "-m", f"{args.memory}M", "--guest-arg", str(k)]

        def c_cmd(k: int) -> list[str]:
            return [str(c_loop), str(args.guest), str(k), str(args.memory)]

        sides = {"pyvmm": py_cmd} | ({"C": c_cmd} if c_loop else {})
        per_exit: dict[str, list[float]] = {name: [] for name in sides}
        base: dict[str, list[float]] = {name: [] for name in sides}
        for rep in range(args.repeat):
            order = list(sides) if rep % 2 == 0 else list(reversed(sides))
            for name in order:
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
    if "C" in stats:
        ratio = stats["pyvmm"].median / stats["C"].median
        pair = sorted(p / c for p, c in zip(per_exit["pyvmm"], per_exit["C"]))
        extra = (stats["pyvmm"].median - stats["C"].median) * 1e6
        print(f"\nratio pyvmm/C (medians): {ratio:.3f}   per-repetition ratios {pair[0]:.3f}-{pair[-1]:.3f}   "
              f"pyvmm adds {extra:.2f} us per exit")
        print(f"ratio of the fastest runs (less sensitive to a busy machine, not the target's figure): "
              f"{stats['pyvmm'].low / stats['C'].low:.3f}")
        print(f"target: pyvmm/C (medians) <= {TARGET:.2f} -> {verdict(ratio, TARGET)}")
    else:
        print(f"\ntarget: pyvmm/C <= {TARGET:.2f} -> not checked (no C reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
