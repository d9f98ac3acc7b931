"""`pyvmm bench`: measurements users can run on their own host (`pyvmm bench idle`)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def bench() -> None:
    """Experiments that measure pyvmm and KVM settings on this host."""


@bench.command()
@click.option("-k", "--kernel", type=click.Path(path_type=Path, dir_okay=False),
              help="Guest that follows the `idle` guest's DATA contract (docs/MACHINES.md). Default: the bundled "
                   "`idle` guest for this host.")
@click.option("--policy", "policies", multiple=True, metavar="SPEC",
              help="A policy to measure (repeatable, in order): `default`, or KEY=VALUE[,KEY=VALUE...] with "
                   "threshold=N, passthrough=wfi[+wfe], halt-poll=NS, idle-exits=hlt[+pause...], pin=CPUS. "
                   "Default: the policies that make sense on this host.")
@click.option("--repeat", type=click.IntRange(1, 1000), default=3, show_default=True, help="Runs per policy.")
@click.option("--periods", type=click.IntRange(1, 2**32 - 1), default=100, show_default=True,
              help="Timer wake-ups per run (the guest's first argument).")
@click.option("--period-us", type=click.IntRange(1, 2**32 - 1), default=2000, show_default=True,
              help="Timer period in microseconds (the guest's second argument).")
@click.option("--allow-fallback", is_flag=True, help="Run a policy the kernel refuses with the kernel's behaviour.")
@click.option("--cap-number", "cap_numbers", metavar="NAME=N", multiple=True,
              help="Capability number override for out-of-tree caps (as in `pyvmm run`).")
@click.option("--contend", "levels", metavar="LEVELS",
              help="Contention levels to sweep, e.g. 0,1,2: that many busy tasks pinned on each vCPU's host CPU for "
                   "each run (at most 8; killed when the run ends, Ctrl-C included). Pins vCPU 0 to the highest "
                   "online CPU unless a policy's pin= or --cpu-affinity says otherwise.")
@click.option("--cpu-affinity", "affinity", metavar="VCPU=CPUS",
              help="Pinning for every policy without pin=, as in `pyvmm run` (e.g. 0=1).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the table as CSV.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also draw the results as a PNG, one panel per metric (needs matplotlib: pip install "
                   "'pyvmm[bench]').")
@click.option("--json", "as_json", is_flag=True, help="Print the host context and the cells as JSON instead of a table.")
def idle(kernel, policies, repeat, periods, period_us, allow_fallback, cap_numbers, levels, affinity, csv_path,
         plot_path, as_json) -> int:
    """Run an idle guest under each policy (and contention level) and report, per cell: exits per second, WFI/WFE
    (arm64) or HLT (x86) exits per timer period, halt wait and poll time, host CPU time of the vCPU thread, the
    guest's wake-up latency (p50, p99, max) measured by the guest with its own timer, the runqueue depth of the
    vCPU's host CPU, the vCPU thread's PELT util_avg/load_avg, and idle-state residency where the host exposes it.
    Means over --repeat with [min-max]; the CSV and JSON add stdev. The host's preemption model, CPU kinds and
    idle-state support come with every report.

    Exit status 0 when every cell ran, 1 when some were refused or failed (their rows say why).
    """
    from pyvmm.arch import host_arch
    from pyvmm.errors import ExitStatus, PyvmmError, UsageError
    from pyvmm.idle.bench import parse_policy_spec, run_once, with_default_pin
    from pyvmm.idle.caps import CapError, cap_table, parse_cap_override
    from pyvmm.idle.contend import parse_levels, terminate_raises
    from pyvmm.idle.hostcontext import read_host_context
    from pyvmm.idle.policy import PolicyParseError, check_affinity, parse_affinity
    from pyvmm.idle.sweep import aggregate, render_table, to_json, write_csv, write_plot

    arch = host_arch()
    if kernel is None:
        import pyvmm_guests

        kernel = pyvmm_guests.path(arch, "idle")
    if not policies:
        policies = (("default", "threshold=0", "threshold=100", "passthrough=wfi") if arch == "arm64"
                    else ("default", "halt-poll=0", "halt-poll=5000000", "idle-exits=hlt"))
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401  (fail now, not after minutes of runs)
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'pyvmm[bench]'") from None
    context = read_host_context()
    try:
        specs = [parse_policy_spec(p, allow_fallback=allow_fallback) for p in policies]
        overrides = dict(parse_cap_override(t) for t in cap_numbers)
        cap_table(overrides)  # the environment's PYVMM_CAP_* too: refuse a bad one before any run
        steps: tuple[int | None, ...] = parse_levels(levels) if levels is not None else (None,)
        pin = parse_affinity(affinity) if affinity else {}
        if levels is not None and not pin:
            pin = {0: {max(context.cpus.online)}}  # the idle guest has one vCPU
    except (PolicyParseError, CapError) as err:
        raise UsageError(str(err)) from None
    specs = [with_default_pin(s, pin) for s in specs]
    for s in specs:
        check_affinity(s.policy.cpu_affinity, 1)  # CPUs that do not exist or are offline: refused before any run

    cells = []
    with terminate_raises():  # SIGTERM between runs cleans up like Ctrl-C (busy tasks included)
        for spec in specs:
            for level in steps:
                runs, error = [], None
                where = spec.label + ("" if level is None else f" @{level}")
                for i in range(repeat):
                    try:
                        runs.append(run_once(kernel, spec, periods, period_us, overrides, contention=level))
                    except PyvmmError as err:
                        if err.exit_status in (ExitStatus.SIGINT, ExitStatus.SIGTERM):
                            raise
                        error = f"run {i + 1} refused or failed: {err}"
                        break
                    if not as_json:
                        click.echo(f"  {where}: run {i + 1}/{repeat} done", err=True)
                cells.append(aggregate(spec.label, level, runs, error))
    if as_json:
        click.echo(json.dumps({"host": context.as_dict(), "pinning": _pinning(pin), "cells": to_json(cells)},
                              indent=2))
    else:
        click.echo(render_table(cells))
        if pin:
            click.echo(f"pinning: {_pinning(pin)} for every policy without pin=")
        click.echo("\n".join(f"host {line}" for line in context.render()))
    if csv_path is not None:
        write_csv(cells, csv_path)
    if plot_path is not None:
        what = f"{kernel.name}, {periods} x {period_us} µs, {arch}, {repeat} run(s) per point"
        write_plot(cells, plot_path, f"pyvmm bench idle: {what}")
    return ExitStatus.OK if all(c.error is None for c in cells) else ExitStatus.FAILED


def _pinning(pin: dict[int, set[int]]) -> str:
    from pyvmm.idle.hostcpus import format_cpus

    return ",".join(f"vCPU {v}={format_cpus(c)}" for v, c in sorted(pin.items()))


@bench.command()
@click.argument("csv_path", metavar="CSV", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("-o", "--output", "plot_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The PNG to write.")
@click.option("--title", default=None, help="Title of the figure (default: the CSV's name).")
def plot(csv_path: Path, plot_path: Path, title: str | None) -> int:
    """Draw a `bench idle --csv` file as a PNG, one panel per metric: for results from a host without matplotlib
    (an arm64 board, the emulated lane), plotted where matplotlib is."""
    from pyvmm.errors import ImageError, UsageError
    from pyvmm.idle.sweep import read_csv, write_plot

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("plot needs matplotlib: pip install 'pyvmm[bench]'") from None
    try:
        cells = read_csv(csv_path)
        write_plot(cells, plot_path, title or f"pyvmm bench idle: {csv_path.name}")
    except (KeyError, ValueError) as err:
        raise ImageError(f"{csv_path}: not a `pyvmm bench idle --csv` file ({err})") from None
    return 0
