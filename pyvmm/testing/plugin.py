"""pytest plugin (entry point `pytest11` = `pyvmm`): the `pyvmm_machine` fixture, a started VM per test.

Configuration, most specific first: `@pytest.mark.pyvmm(kernel=..., initrd=..., cpus=..., memory=..., cmdline=...,
command=[...], options={...})` (the names of `pyvmm run`'s options and of Machine(); `append=` is cmdline's alias, as
`pyvmm run --append` is) on the test (or module via `pytestmark`), then command-line options
(--pyvmm-kernel, --pyvmm-initrd, --pyvmm-cpus, --pyvmm-memory, --pyvmm-append, --pyvmm-option NAME=VALUE), then the
environment (PYVMM_KERNEL, PYVMM_INITRD). `options` are `pyvmm run` options by parameter name (pyvmm.spec.options.RunOptions) (idle policy:
e.g. {"halt_poll_ns": "0", "wfx_trap_threshold": "4"}).

Every test gets its own console log in its own tmp_path (so pytest-xdist workers never share a file); when the test
fails, the console is attached to its report as the section "pyvmm console". The VM is stopped and its fds closed
in the fixture's teardown, whatever the test did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

if TYPE_CHECKING:
    from pyvmm.spec import VmSpec
    from pyvmm.testing.machine import Machine

CONSOLE_SECTION = "pyvmm console"
_MACHINE_KEY = pytest.StashKey["Machine"]()
_SECTION_CHARS = 20000  # the end of the console is what explains a failure; keep reports readable


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyvmm", "pyvmm virtual machines (the pyvmm_machine fixture)")
    group.addoption("--pyvmm-kernel", default=os.environ.get("PYVMM_KERNEL"),
                    help="Kernel to boot (arm64 Image, or a bare-metal payload). Default: $PYVMM_KERNEL, else the "
                         "bundled hello guest.")
    group.addoption("--pyvmm-initrd", default=os.environ.get("PYVMM_INITRD"),
                    help="Initramfs for the kernel. Default: $PYVMM_INITRD.")
    group.addoption("--pyvmm-cpus", type=int, default=None, help="vCPUs (default 1).")
    group.addoption("--pyvmm-memory", default=None, help="Guest RAM, e.g. 512M (default 256M).")
    group.addoption("--pyvmm-append", action="append", default=[],
                    help="Extra kernel command-line arguments (repeatable; added after the marker's).")
    group.addoption("--pyvmm-option", action="append", default=[], metavar="NAME=VALUE",
                    help="A `pyvmm run` option by parameter name, e.g. halt_poll_ns=0 (repeatable).")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pyvmm(kernel=None, initrd=None, cpus=None, memory=None, cmdline='', command=None, options=None, "
                   "guest_args=None): how pyvmm_machine boots the VM for this test")


def _machine_spec(request: pytest.FixtureRequest, log_path: Path) -> "VmSpec":
    from pyvmm.testing.machine import machine_spec

    opts = request.config.option
    marker: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers("pyvmm"))):  # closest marker (the test's) wins
        kwargs = dict(mark.kwargs)
        if "append" in kwargs:  # cmdline's alias, as `pyvmm run --append`
            if "cmdline" in kwargs:
                raise pytest.UsageError("@pytest.mark.pyvmm: give cmdline= or its alias append=, not both")
            kwargs["cmdline"] = kwargs.pop("append")
        marker.update(kwargs)
    unknown = set(marker) - {"kernel", "initrd", "cpus", "memory", "cmdline", "command", "options", "guest_args"}
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.pyvmm: unknown argument(s) {sorted(unknown)}")
    options: dict[str, Any] = {}
    for text in opts.pyvmm_option:
        name, sep, value = text.partition("=")
        if not sep:
            raise pytest.UsageError(f"--pyvmm-option {text!r}: use NAME=VALUE")
        options[name.strip().replace("-", "_")] = value
    options.update(marker.get("options") or {})
    cmdline = " ".join(a for a in [marker.get("cmdline", ""), *opts.pyvmm_append] if a)
    return machine_spec(
        kernel=marker.get("kernel", opts.pyvmm_kernel), initrd=marker.get("initrd", opts.pyvmm_initrd),
        cmdline=cmdline, memory=marker.get("memory") or opts.pyvmm_memory or "256M",
        cpus=marker.get("cpus") or opts.pyvmm_cpus or 1, guest_args=list(marker.get("guest_args") or []),
        console_log=log_path, command=marker.get("command"), options=options,
    )


@pytest.fixture
def pyvmm_machine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator["Machine"]:
    """A started pyvmm Machine (pyvmm.testing.Machine); stopped, joined and closed after the test."""
    from pyvmm.testing.machine import Machine

    machine = Machine(_machine_spec(request, tmp_path / "pyvmm-console.log"))
    request.node.stash[_MACHINE_KEY] = machine
    machine.start()
    try:
        yield machine
    finally:
        machine.stop()


@pytest.hookimpl(hookwrapper=True)  # old-style wrapper: works with every pytest the project allows (>= 7.4)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    result = yield
    report = result.get_result()
    machine = item.stash.get(_MACHINE_KEY, None)
    if machine is not None and report.failed:
        text = machine.console.text
        if len(text) > _SECTION_CHARS:
            text = f"[... {len(text) - _SECTION_CHARS} earlier characters in {machine.spec.console.log_path}]\n" \
                   + text[-_SECTION_CHARS:]
        report.sections.append((f"{CONSOLE_SECTION} ({report.when})", text or "(the guest printed nothing)"))
