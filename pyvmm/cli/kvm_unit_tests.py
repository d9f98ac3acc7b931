"""`pyvmm kvm-unit-tests DIR [TEST...] [-g GROUP]...`: run kvm-unit-tests' arm64 suite under pyvmm, as run_tests.sh.

Every idle option of `pyvmm run` is accepted and given to each test's VM, so that the suite runs under a chosen idle
policy (e.g. --wfx-trap-threshold 0). The work is done by pyvmm.kvm_unit_tests; this module is the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from pyvmm.cli.run_options import IDLE_OPTIONS


def _with_idle_options(function: Callable) -> Callable:
    for option in reversed(IDLE_OPTIONS):
        function = option(function)
    return function


def idle_arguments(values: Mapping[str, Any]) -> list[str]:
    """The idle options given, spelled back as `pyvmm run` arguments (each test is a `pyvmm run` process)."""
    argv: list[str] = []
    for param in click.command()(_with_idle_options(lambda **_: None)).params:
        if not isinstance(param, click.Option) or param.name not in values:
            continue
        value, flag = values[param.name], param.opts[-1]
        if param.is_flag:
            argv += [flag] if value else []
        elif param.multiple:
            for item in value or ():
                argv += [flag, str(item)]
        elif value not in (None, "", param.default):
            argv += [flag, str(value)]
    return argv


@click.command("kvm-unit-tests")
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
@click.argument("tests", nargs=-1, metavar="[TEST]...")
@click.option("-g", "--group", "groups", multiple=True, metavar="GROUP",
              help="Run the tests of GROUP (repeatable), e.g. -g gic -g psci. Also runs `nodefault` tests of it.")
@click.option("-a", "--all", "run_all", is_flag=True,
              help="Also run tests marked `nodefault` (micro-bench, fpu-context) and set ERRATA_FORCE=y.")
@click.option("-l", "--list", "list_only", is_flag=True,
              help="Print each selected test with its groups and its `pyvmm run` command (or why it is skipped).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON report on stdout (the per-test lines then go to stderr).")
@click.option("--timeout", metavar="DURATION",
              help="Every test's timeout (e.g. 300, 5m) instead of unittests.cfg's (90s by default, 10s for timer).")
@click.option("--max-smp", type=click.IntRange(min=1), metavar="N",
              help="$MAX_SMP of unittests.cfg (default: $MAX_SMP, else the host's online CPUs).")
@click.option("--environ", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="A KEY=VALUE file merged into the tests' environ (kvm-unit-tests' KVM_UNIT_TESTS_ENV).")
@click.option("--log-dir", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Write each test's command and output to DIR/<test>.log.")
@click.option("-v", "--verbose", is_flag=True, help="Print each test's `pyvmm run` command with its result.")
@_with_idle_options
def kvm_unit_tests(directory: Path, tests: tuple[str, ...], groups: tuple[str, ...],
                   run_all: bool, list_only: bool, as_json: bool, timeout: str | None, max_smp: int | None,
                   environ: Path | None, log_dir: Path | None, verbose: bool, **idle: Any) -> int:
    """Run kvm-unit-tests' arm64 tests from DIR (its unittests.cfg, arm/*.flat, errata.txt) under pyvmm.

    Each test runs in its own `pyvmm run` with the vCPUs, arguments and options its unittests.cfg section gives
    (kvmtool's spelling), the environ initrd kvm-unit-tests would build, and its timeout. Prints one
    `PASS|SKIP|FAIL name (detail)` line per test and a summary. Exit status: 1 if any test failed, else 0.
    """
    from pyvmm.kvm_unit_tests import plan, suite

    options = suite.SuiteOptions(
        directory, plan.Selection(tuple(tests), tuple(groups), run_all), ["--no-stdin", *idle_arguments(idle)],
        max_smp=max_smp, timeout=timeout, environ_extra=environ, log_dir=log_dir)
    prepared = suite.prepare(options)
    if list_only:
        for line in suite.listing(prepared):
            click.echo(line)
        return 0
    suite.check_host()
    lines = sys.stderr if as_json else sys.stdout

    def report(result) -> None:
        if verbose and result.command:
            print(plan.quote(result.command), file=lines, flush=True)
        print(result.line(), file=lines, flush=True)

    results, seconds = suite.timed(lambda: suite.run(prepared, report))
    print(suite.summary_line(results, seconds), file=lines, flush=True)
    if as_json:
        click.echo(suite.as_json(prepared, results, seconds))
    return suite.exit_status(results)
