"""Which tests of unittests.cfg run, which are skipped and why, and the `pyvmm run` command line of each.

The filters and their order are run_tests.sh's (`run` in scripts/runtime.bash) with TARGET=kvmtool, ARCH=arm64 and
ACCEL=kvm: pyvmm plays kvmtool's part, so a test gets its `kvmtool_params` (kvmtool's option spelling, which
`pyvmm run` accepts) and `qemu_params` are ignored. An older unittests.cfg has no test_args/kvmtool_params but an
`extra_params` in QEMU's spelling; its -append, -smp, -m and `-machine gic-version=` are translated.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from pyvmm.errors import UsageError
from pyvmm.kvm_unit_tests import shell
from pyvmm.kvm_unit_tests.environ import TARGET
from pyvmm.kvm_unit_tests.unittests import UnitTest

ARCH = "arm64"
ACCEL = "kvm"
DEFAULT_TIMEOUT = "90s"
# What kvm-unit-tests' kvmtool target always passes (scripts/vmm.bash, KVMTOOL_DEFAULT_OPTS): the exact command
# line, no network device, and quiet.
DEFAULT_OPTIONS = ("--nodefaults", "--network", "mode=none", "--loglevel=warning")
_DURATION = re.compile(r"^(\d+(?:\.\d*)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Selection:
    names: tuple[str, ...] = ()  # tests named on the command line
    groups: tuple[str, ...] = ()  # -g GROUP, repeatable
    run_all: bool = False  # -a: also the `nodefault` tests (e.g. micro-bench) when not asked for by name or group


@dataclass
class PlannedTest:
    test: UnitTest
    skip: str | None = None  # why the test does not run, in run_tests.sh's words
    missing: str | None = None  # its binary is not there (a FAIL: the build is incomplete)
    kernel: Path | None = None
    cpus: int = 1
    args: str | None = None  # the test's argv as one string; None: no --params at all (upstream's choice)
    options: list[str] = field(default_factory=list)  # from kvmtool_params (or translated extra_params)
    timeout: float = 90.0
    timeout_text: str = DEFAULT_TIMEOUT

    @property
    def name(self) -> str:
        return self.test.name

    def command(self, environ_file: Path, run_options: list[str]) -> list[str]:
        """`pyvmm run` arguments, in the order kvm-unit-tests' arm/run gives lkvm its own (which `lkvm` takes too);
        `run_options` go last (e.g. --no-stdin and an idle policy for pyvmm)."""
        assert self.kernel is not None
        argv = ["run", "--kernel", str(self.kernel), "--cpus", str(self.cpus)]
        if self.args is not None:
            argv += ["--params", self.args]
        argv += [*DEFAULT_OPTIONS, *self.options, "--initrd", str(environ_file), *run_options]
        return argv


def parse_duration(text: str, what: str) -> float:
    """timeout(1)'s DURATION: a number with an optional s, m, h or d suffix."""
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(f"{what}: {text!r} is not a duration (e.g. 90s, 10, 2m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def select(tests: list[UnitTest], selection: Selection, source: str) -> list[UnitTest]:
    """The tests named and those in the groups asked for (all tests when neither is given), in file order."""
    names = {test.name for test in tests}
    unknown = [name for name in selection.names if name not in names]
    if unknown:
        raise UsageError(f"{source} has no test {', '.join(unknown)}: list them with --list")
    groups = {group for test in tests for group in test.groups}
    unknown = [group for group in selection.groups if group not in groups]
    if unknown:
        raise UsageError(f"{source} has no group {', '.join(unknown)} (groups: {', '.join(sorted(groups))})")
    if not selection.names and not selection.groups:
        return list(tests)
    return [test for test in tests
            if test.name in selection.names or any(group in selection.groups for group in test.groups)]


def plan(test: UnitTest, selection: Selection, binaries: list[Path], variables: Mapping[str, str],
         timeout_override: str | None = None) -> PlannedTest:
    """Apply run_tests.sh's filters to one selected test, then expand its values the way its eval does."""
    planned = PlannedTest(test)
    planned.skip = _skip_reason(test, selection, variables)
    if planned.skip is not None:
        return planned
    planned.kernel = next((folder / test.file for folder in binaries if (folder / test.file).is_file()), None)
    if not test.file or planned.kernel is None:
        where = " or ".join(str(folder) for folder in binaries)
        planned.missing = (f"{test.file or 'no file ='} is not in {where}: build kvm-unit-tests for arm64 "
                           f"(./configure --arch=arm64 && make) or copy its .flat files there")
        return planned
    planned.timeout_text = timeout_override or test.timeout or DEFAULT_TIMEOUT
    planned.timeout = parse_duration(planned.timeout_text, f"[{test.name}] timeout")
    smp = shell.words(test.smp, variables, f"[{test.name}] smp")
    if len(smp) != 1 or not smp[0].isdigit() or int(smp[0]) < 1:
        raise UsageError(f"[{test.name}] smp = {test.smp} expands to {' '.join(smp)!r}, not a vCPU count")
    planned.cpus = int(smp[0])
    if test.test_args:
        planned.args = " ".join(shell.words(test.test_args, variables, f"[{test.name}] test_args"))
    if "kvmtool_params" in test.params:
        planned.options = shell.words(test.params["kvmtool_params"], variables, f"[{test.name}] kvmtool_params")
    elif "extra_params" in test.params and not test.test_args:
        _translate_qemu_params(planned, shell.words(test.params["extra_params"], variables,
                                                    f"[{test.name}] extra_params"))
    return planned


def _skip_reason(test: UnitTest, selection: Selection, variables: Mapping[str, str]) -> str | None:
    chosen_by_name = test.name in selection.names
    if "nodefault" in test.groups and not (selection.groups or selection.run_all or chosen_by_name):
        return "test marked as manual run only"
    if test.arch and test.arch != ARCH:
        return f"{test.arch} only"
    if test.accel and not re.match(rf"^{re.escape(test.accel)}(,|$)", ACCEL):
        return f"{test.accel} only, but ACCEL={ACCEL}"
    if test.disabled_if and shell.condition(test.disabled_if, variables):
        return f"disabled because: {test.disabled_if}"
    for check in test.check.split():
        path, _, value = check.partition("=")
        try:
            actual = Path(path).read_text().removesuffix("\n")
        except OSError:
            actual = None
        if actual != value:
            return f"{path} not equal to {value}"
    return None


def _translate_qemu_params(planned: PlannedTest, words: list[str]) -> None:
    """An older cfg's `extra_params` (QEMU spelling): the options with a pyvmm meaning; the rest is QEMU's own."""
    rest = iter(words)
    for word in rest:
        if word == "-append":
            planned.args = next(rest, "")
        elif word == "-smp":
            planned.cpus = int(next(rest, "1").split(",")[0])
        elif word == "-m":
            planned.options += ["--mem", next(rest, "")]
        elif word == "-machine":
            version = re.search(r"gic-version=(\d)", next(rest, ""))
            if version:
                planned.options += [f"--irqchip=gicv{version.group(1)}"]


def variables(max_smp: int) -> dict[str, str]:
    """What a cfg value may refer to: run_tests.sh's shell variables for the kvmtool target on arm64."""
    return {"MAX_SMP": str(max_smp), "TARGET": TARGET, "ARCH": ARCH, "ACCEL": ACCEL, "HOST": "aarch64"}


def quote(argv: list[str]) -> str:
    return shlex.join(argv)
