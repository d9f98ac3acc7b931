"""`pyvmm bench`: measurements users can run on their own host (`pyvmm bench idle`)."""

from __future__ import annotations

import json
from dataclasses import asdict
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
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False), help="Also write the table as CSV.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also draw the table as a PNG (needs matplotlib: pip install 'pyvmm[bench]').")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def idle(kernel, policies, repeat, periods, period_us, allow_fallback, cap_numbers, csv_path, plot_path,
         as_json) -> int:
    """Run an idle guest under each policy and report, per policy: exits per second, WFI/WFE (arm64) or HLT (x86)
    exits per timer period, halt wait and poll time, host CPU time of the vCPU thread, and the guest's wake-up
    latency (median, p99) measured by the guest with its own timer.

    Exit status 0 when every policy ran, 1 when some were refused or failed (their rows say why).
    """
    from pyvmm.arch import host_arch
    from pyvmm.errors import ExitStatus, PyvmmError, UsageError
    from pyvmm.idle.bench import parse_policy_spec, render_table, run_once, summarise, write_csv, write_plot
    from pyvmm.idle.caps import CapError, cap_table, parse_cap_override
    from pyvmm.idle.policy import PolicyParseError

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
    try:
        specs = [parse_policy_spec(p, allow_fallback=allow_fallback) for p in policies]
        overrides = dict(parse_cap_override(t) for t in cap_numbers)
        cap_table(overrides)  # the environment's PYVMM_CAP_* too: refuse a bad one before any run
    except (PolicyParseError, CapError) as err:
        raise UsageError(str(err)) from None

    rows = []
    for spec in specs:
        runs, error = [], None
        for i in range(repeat):
            try:
                runs.append(run_once(kernel, spec, periods, period_us, overrides))
            except PyvmmError as err:
                if err.exit_status in (ExitStatus.SIGINT, ExitStatus.SIGTERM):
                    raise
                error = f"run {i + 1} refused or failed: {err}"
                break
            if not as_json:
                click.echo(f"  {spec.label}: run {i + 1}/{repeat} done", err=True)
        rows.append(summarise(spec.label, runs, error))
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        click.echo(render_table(rows))
    if csv_path is not None:
        write_csv(rows, csv_path)
    if plot_path is not None:
        write_plot(rows, plot_path, f"pyvmm bench idle: {kernel.name}, {periods} x {period_us} us, {arch}")
    return 0 if all(r.error is None for r in rows) else 1
