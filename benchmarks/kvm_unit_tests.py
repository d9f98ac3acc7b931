#!/usr/bin/env python3
"""kvm-unit-tests under pyvmm and (with --lkvm) under kvmtool, side by side in the same arm64 host: micro-bench's
exit costs (its `mmio_read_user` is the round trip of an exit to the userspace VMM; `hyp_call`, `mmio_read_vgic`, `eoi`,
`ipi` never leave the kernel) and the wall time of the same tests, run by the same runner (pyvmm.kvm_unit_tests,
which spells each test's command as kvm-unit-tests' kvmtool runner does, so `lkvm run` takes it unchanged). Prints
each figure and the ratio pyvmm/kvmtool.

Runs on an arm64 host with /dev/kvm, e.g. inside the arm64 lane (see benchmarks/README.md). There the figures are
INDICATIVE ONLY: everything runs under TCG emulation on a shared machine.

    python3 benchmarks/kvm_unit_tests.py --dir /path/to/kvm-unit-tests --lkvm /path/to/arm64/lkvm
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from pyvmm.kvm_unit_tests import execute, plan, suite

# The tests kvmtool passes in the lane (/work/shared/kvm-unit-tests/README.md) that need nothing beyond a GICv3, so
# that both VMMs run the same thing; micro-bench is measured on its own.
SUITE = ("selftest-setup selftest-vectors-kernel selftest-vectors-user selftest-smp gicv3-ipi gicv3-active psci timer "
         "cache debug-bp debug-wp debug-sstep fpu-context").split()
ROW = re.compile(r"^(\w+)\s+(\d+(?:\.\d+)?)\s+(\d+(?:\.\d+)?)\s*$", re.MULTILINE)


def micro_bench(output: str) -> dict[str, float]:
    """micro-bench's table: name -> average ns per iteration (the last column)."""
    return {name: float(avg) for name, _total, avg in ROW.findall(output)}


def run_selection(directory: Path, names: list[str], vmm: list[str], run_options: list[str], timeout: str | None,
                  ) -> tuple[list[execute.TestResult], float]:
    options = suite.SuiteOptions(directory, plan.Selection(tuple(names)), run_options, timeout=timeout)
    prepared = suite.prepare(options)
    return suite.timed(lambda: suite.run(prepared, lambda r: print(f"    {r.line()} [{r.seconds:.1f} s]", flush=True),
                                         vmm))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("PYVMM_KUT_DIR", "/lane/ship/kvm-unit-tests")),
                        help="the kvm-unit-tests arm64 build (default: $PYVMM_KUT_DIR or /lane/ship/kvm-unit-tests)")
    parser.add_argument("--lkvm", help="kvmtool binary for the side-by-side run (skipped when absent)")
    parser.add_argument("--no-micro-bench", action="store_true", help="only the suite's wall time")
    parser.add_argument("--timeout", default="900", help="per-test timeout (default 900 s: emulation is slow)")
    args = parser.parse_args()
    if os.uname().machine != "aarch64":
        parser.error("kvm-unit-tests for arm64 need an arm64 host with KVM (e.g. the arm64 lane)")
    vmms = {"pyvmm": (execute.PYVMM, ["--no-stdin"])}
    if args.lkvm and os.access(args.lkvm, os.X_OK):
        vmms["kvmtool"] = ([args.lkvm], [])
    else:
        print(f"SKIP kvmtool: {'no --lkvm given' if not args.lkvm else args.lkvm + ' is not executable'}")
    bench: dict[str, dict[str, float]] = {}
    wall: dict[str, float] = {}
    for name, (vmm, run_options) in vmms.items():
        print(f"{name}:", flush=True)
        if not args.no_micro_bench:
            results, _ = run_selection(args.dir, ["micro-bench"], vmm, run_options, args.timeout)
            bench[name] = micro_bench(results[0].output)
        results, seconds = run_selection(args.dir, SUITE, vmm, run_options, args.timeout)
        wall[name] = seconds
        failed = [r.name for r in results if r.verdict != execute.PASS]
        print(f"  {len(SUITE)} tests in {seconds:.1f} s" + (f"; not passed: {', '.join(failed)}" if failed else ""))
    print("\nkvm-unit-tests, pyvmm vs kvmtool (INDICATIVE ONLY under emulation: not performance figures)")
    if bench:
        print(f"  micro-bench, average ns per iteration  {'  '.join(f'{n:>12s}' for n in vmms)}  ratio pyvmm/kvmtool")
        for row in bench["pyvmm"]:
            values = [bench[n].get(row) for n in vmms]
            ratio = (f"{values[0] / values[1]:.2f}" if len(values) == 2 and values[1] else "-")
            cells = "  ".join(f"{v:12.0f}" if v is not None else f"{'-':>12s}" for v in values)
            print(f"    {row:34s}  {cells}  {ratio}")
    print(f"  suite of {len(SUITE)} tests, wall time s  {'  '.join(f'{wall[n]:12.1f}' for n in vmms)}"
          + (f"  {wall['pyvmm'] / wall['kvmtool']:.2f}" if "kvmtool" in wall else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
