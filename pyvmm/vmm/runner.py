"""The one way to run a VM: spec -> features -> Vmm -> run -> close -> final status.

`pyvmm run`, `pyvmm.testing.Machine` (on its background thread) and `pyvmm bench idle` all go through `VmRun`:

    result = run_vm(build_spec(kernel="Image", options=RunOptions(test_expect="login:")))
    sys.exit(result.status)

Everything a run opens (the console log, the features' sockets, timers, stats fds, temporary files, the VM and
/dev/kvm) is closed by `VmRun.close()`, which `run()` calls however the VM ended; nothing is left to atexit.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, Protocol, Sequence, TypeVar

from pyvmm.arch.machine import Machine
from pyvmm.errors import MissingFileError
from pyvmm.spec import VmSpec
from pyvmm.vmm.console import ConsoleOutput
from pyvmm.outcome import FinalStatus, VmOutcome, final_status
from pyvmm.vmm.vmm import Vmm

if TYPE_CHECKING:
    from pyvmm.idle.feature import IdleFeature
    from pyvmm.vmm.checks import ConsoleChecks


class Feature(Protocol):
    """Something a VmSpec asks for beyond the machine itself (idle control, console checks, ...)."""

    def subscribe(self, vmm: "Vmm") -> None:
        """Subscribe to vmm.events (and vmm.output) before the VM is built."""

    def close(self) -> None:
        """Release everything the feature opened. The runner calls it once the VM has ended, however it ended."""


class _HasClose(Protocol):
    def close(self) -> None: ...


Closable = TypeVar("Closable", bound=_HasClose)


class RunResult(NamedTuple):
    outcome: VmOutcome  # how the VM ended
    final: FinalStatus  # the exit status decided from it, with a note when the features changed it
    report: dict | None  # the idle report when the spec asks for one (--stats-json, or `measure` for bench)

    @property
    def status(self) -> int:
        return self.final.status


class VmRun:
    """One VM's run. The constructor validates the spec and sets everything up (errors raise there, in the caller's
    thread); `build()` may be called first to build the machine early; `run()` blocks and always closes."""

    def __init__(self, spec: VmSpec, extra: Sequence[Feature] = ()) -> None:
        """`extra`: features of the caller's own, subscribed after the spec's and closed like them. Each feature's
        module is imported only when the spec asks for it (start-up time: the initramfs builder alone pulls in
        construct)."""
        self.spec = spec.validate()
        for note in spec.ignored():
            print(f"pyvmm: warning: {note}", file=sys.stderr)
        self._resources = ExitStack()
        self._new_log = False
        try:
            log = self._open_log()
            boot = spec
            features: list[Feature] = []
            if spec.testing.command:
                from pyvmm.initramfs.feature import CommandInitramfs

                initramfs = self._own(CommandInitramfs(spec))
                features.append(initramfs)
                boot = initramfs.boot_spec(spec)
            self.vmm = self._own(Vmm(boot, ConsoleOutput(log=log, echo=spec.console.echo)))
            # Made after the Vmm, so closed before it: they use its machine until they are closed.
            self.idle: IdleFeature | None = None
            self.checks: ConsoleChecks | None = None
            if spec.idle.active:
                from pyvmm.idle.feature import IdleFeature

                self.idle = self._own(IdleFeature(spec.idle))
            if spec.testing.active:
                from pyvmm.vmm.checks import ConsoleChecks

                self.checks = self._own(ConsoleChecks(spec.testing))
            features += [f for f in (self.idle, self.checks) if f is not None]
            features += [self._own(f) for f in extra]
            for feature in features:
                feature.subscribe(self.vmm)
        except BaseException:
            self.close()
            self._remove_new_empty_log()
            raise

    def _own(self, resource: Closable) -> Closable:
        """Close `resource` when the run ends (in the reverse order of ownership)."""
        self._resources.callback(resource.close)
        return resource

    def _open_log(self) -> BinaryIO | None:
        path = self.spec.console.log_path
        if path is None:
            return None
        self._new_log = not path.exists()
        try:
            log = open(path, "ab")
        except OSError as err:
            raise MissingFileError(f"cannot open console log {path}: {err.strerror}") from None
        return self._own(log)

    def _remove_new_empty_log(self) -> None:
        """A VM that never started leaves no console log it created."""
        path = self.spec.console.log_path
        if path is not None and self._new_log and path.is_file() and path.stat().st_size == 0:
            path.unlink()

    def build(self) -> Machine:
        return self.vmm.build()

    def run(self) -> RunResult:
        try:
            outcome = self.vmm.run()
            report = self.idle.write_report(outcome) if self.idle is not None and self.idle.reports else None
            verdict = self.checks.verdict() if self.checks is not None else None
            return RunResult(outcome, final_status(outcome, verdict), report)
        except BaseException:
            self.close()
            self._remove_new_empty_log()  # e.g. an image the machine build refused
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Idempotent: features first, then the VM and /dev/kvm, then the console log."""
        self._resources.close()


def run_vm(spec: VmSpec, extra: Sequence[Feature] = ()) -> RunResult:
    return VmRun(spec, extra).run()
