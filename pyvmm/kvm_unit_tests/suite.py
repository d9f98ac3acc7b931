"""A whole kvm-unit-tests run: load and select, write the environ file, run each test, report.

The report is run_tests.sh's (one `PASS|SKIP|FAIL name (detail)` line per test) plus a summary line; --json gives
the same as data. Any FAIL makes the run fail.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from pyvmm.errors import KvmPermissionError, KvmUnavailableError, MissingFileError, UsageError
from pyvmm.kvm_unit_tests import environ, execute, plan, unittests
from pyvmm.kvm_unit_tests.execute import FAIL, PASS, SKIP, TestResult
from pyvmm.kvm_unit_tests.plan import PlannedTest, Selection


@dataclass
class SuiteOptions:
    directory: Path
    selection: Selection = field(default_factory=Selection)
    run_options: list[str] = field(default_factory=list)  # passed to every `pyvmm run` (idle policy, ...)
    max_smp: int | None = None  # None: the host's online CPUs, as run_tests.sh's MAX_SMP
    timeout: str | None = None  # overrides every test's timeout (upstream's TIMEOUT variable)
    environ_extra: Path | None = None  # a user's environ file merged in (upstream's KVM_UNIT_TESTS_ENV)
    log_dir: Path | None = None  # each test's command and output, in DIR/<test>.log
    kernel_release: str = field(default_factory=lambda: os.uname().release)
    environment: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass
class Suite:
    options: SuiteOptions
    config: Path
    tests: list[PlannedTest]
    environ_text: str

    @property
    def binaries(self) -> list[Path]:
        return binary_folders(self.options.directory, self.config)


def binary_folders(directory: Path, config: Path) -> list[Path]:
    """Where `file =` names are looked up: next to unittests.cfg, then DIR/arm (the built tree's layout)."""
    folders = [config.parent, directory / "arm"]
    return list(dict.fromkeys(folders))


def prepare(options: SuiteOptions) -> Suite:
    """Everything decided before the first VM starts, so that bad input fails in one line and at once."""
    config, tests = unittests.load(options.directory)
    selected = plan.select(tests, options.selection, str(config))
    max_smp = options.max_smp if options.max_smp is not None else int(
        options.environment.get("MAX_SMP") or os.cpu_count() or 1)
    variables = plan.variables(max_smp)
    if options.timeout is not None:
        plan.parse_duration(options.timeout, "--timeout")
    folders = binary_folders(options.directory, config)
    planned = [plan.plan(test, options.selection, folders, variables, options.timeout) for test in selected]
    errata_path = options.directory / "errata.txt"
    errata = environ.read_errata(errata_path) if errata_path.is_file() else []
    environment = dict(options.environment)
    if options.selection.run_all:
        environment["ERRATA_FORCE"] = "y"  # run_tests.sh -a: also the tests guarded by errata
    extra = ""
    if options.environ_extra is not None:
        try:
            extra = options.environ_extra.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise MissingFileError(f"cannot read --environ {options.environ_extra}: {err.strerror}") from None
    text = environ.build(environ.KernelVersion.parse(options.kernel_release), errata, environment,
                         source=str(errata_path), extra=extra)
    return Suite(options, config, planned, text)


def check_host(machine: str | None = None, kvm: str = "/dev/kvm") -> None:
    """These are arm64 test binaries: they need an arm64 host with a usable /dev/kvm (checked once, not per test)."""
    machine = machine or os.uname().machine
    if machine not in ("aarch64", "arm64"):
        raise KvmUnavailableError(f"kvm-unit-tests for arm64 run on an arm64 host with KVM (this is {machine}); on "
                                  f"this project's x86_64 machine use the lane: tests/arm64/lane")
    try:
        os.close(os.open(kvm, os.O_RDWR))
    except PermissionError:
        from pyvmm.kvm.system import permission_advice

        raise KvmPermissionError(f"no permission to open {kvm}: {permission_advice(kvm)}") from None
    except OSError as err:
        raise KvmUnavailableError(f"{kvm} is not usable ({err.strerror}): this host has no KVM") from None


def run(suite: Suite, report: Callable[[TestResult], None], vmm: list[str] | None = None) -> list[TestResult]:
    """Run the planned tests one after the other (each VM gets the host to itself), reporting each as it ends."""
    results: list[TestResult] = []
    if suite.options.log_dir is not None:
        try:
            suite.options.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"cannot create --log-dir {suite.options.log_dir}: {err.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="pyvmm-kut-") as scratch:
        environ_file = Path(scratch) / "environ"
        environ_file.write_text(suite.environ_text)
        for planned in suite.tests:
            if planned.skip is not None:
                result = TestResult(planned.name, SKIP, planned.skip)
            elif planned.missing is not None:
                result = TestResult(planned.name, FAIL, planned.missing)
            else:
                result = execute.run(planned, environ_file, suite.options.run_options, vmm)
                _write_log(suite.options.log_dir, result)
            results.append(result)
            report(result)
    return results


def _write_log(log_dir: Path | None, result: TestResult) -> None:
    if log_dir is None:
        return
    (log_dir / f"{result.name}.log").write_text(f"{plan.quote(result.command)}\n{result.output}\n{result.line()}\n")


def summary_line(results: list[TestResult], seconds: float) -> str:
    counts = {verdict: sum(r.verdict == verdict for r in results) for verdict in (PASS, SKIP, FAIL)}
    return f"{len(results)} tests: {counts[PASS]} PASS, {counts[SKIP]} SKIP, {counts[FAIL]} FAIL ({seconds:.1f} s)"


def as_json(suite: Suite, results: list[TestResult], seconds: float) -> str:
    return json.dumps({"directory": str(suite.options.directory), "config": str(suite.config),
                       "seconds": round(seconds, 3), "results": [r.as_json() for r in results],
                       "failed": sum(r.verdict == FAIL for r in results)}, indent=2)


def exit_status(results: list[TestResult]) -> int:
    return 1 if any(r.verdict == FAIL for r in results) else 0


def listing(suite: Suite) -> list[str]:
    """`--list`: each selected test with its groups and what would happen to it."""
    lines = []
    for planned in suite.tests:
        what = (f"skip: {planned.skip}" if planned.skip else f"FAIL: {planned.missing}" if planned.missing
                else plan.quote(["pyvmm", *planned.command(Path("ENVIRON"), suite.options.run_options)]))
        lines.append(f"{planned.name} [{' '.join(planned.test.groups)}] {what}")
    return lines


def timed(function: Callable[[], list[TestResult]]) -> tuple[list[TestResult], float]:
    start = time.monotonic()
    results = function()
    return results, time.monotonic() - start
