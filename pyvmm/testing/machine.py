"""`Machine`: one pyvmm VM driven from Python (tests, scripts), running on a background thread.

    with Machine(kernel="Image", cmdline="rdinit=/bin/sh") as vm:
        vm.console.expect(r"# ")
        status, output = vm.run("uname -r")

Whatever happens (an exception in the `with` body, a failed expect, a guest that hangs), leaving the context stops
the vCPUs, joins every thread pyvmm started and closes every fd it opened.
"""

from __future__ import annotations

import re
import signal
import threading
from typing import TYPE_CHECKING, Any, Mapping

from pyvmm.errors import ExitStatus, PyvmmError, UsageError
from pyvmm.spec import VmSpec
from pyvmm.spec.options import RunOptions, build_spec
from pyvmm.testing.console import Console, ConsoleTimeout
from pyvmm.outcome import VmOutcome

if TYPE_CHECKING:
    from pyvmm.arch.machine import Machine as BuiltMachine
    from pyvmm.devices.testdev import TestDevice
    from pyvmm.kvm.stats import StatsReader
    from pyvmm.vmm.runner import VmRun


class MachineError(PyvmmError):
    """The Machine was used out of order (run before start, start twice), or the VM failed to start."""


def machine_spec(*, command: list[str] | None = None, options: Mapping[str, Any] | None = None,
                 **core: Any) -> VmSpec:
    """The VmSpec of a Machine. `core`: the core values build_spec takes (kernel=, initrd=, cmdline=, memory=, cpus=,
    guest_args=, irqchip=, console_log=, ...); the console has no stdin and no echo (the Machine's Console reads it).
    `options`: `pyvmm run` options by parameter name (e.g. {"halt_poll_ns": "0", "test_timeout": 5}, see
    pyvmm.spec.options.RunOptions). `command` (Linux, arm64): boot an initramfs pyvmm builds around it, as
    `pyvmm run -k Image -- CMD` does; Machine.status is then the command's exit status."""
    values = dict(options or {})
    if command:
        values["test_command"] = list(command)
    return build_spec(stdin=False, echo=False, options=RunOptions.from_mapping(values), **core)


class Machine:
    """A VM with its console. Not started by the constructor: call start() or use it as a context manager."""

    def __init__(self, spec: VmSpec | None = None, **kwargs: Any) -> None:
        """`spec`, or the keyword arguments of `machine_spec` (kernel=, memory=, options=, ...)."""
        if spec is not None and kwargs:
            raise UsageError("Machine(): give a VmSpec or keyword arguments, not both")
        self.spec = spec or machine_spec(**kwargs)
        self.console = Console(self._feed_uart, self._ended_reason)
        self.outcome: VmOutcome | None = None  # once the VM has ended
        self.status: int | None = None  # the exit status `pyvmm run` would have given
        self.error: BaseException | None = None  # what the run thread raised, if anything
        self._run: "VmRun | None" = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._run_serial = 0
        self._testdev: "TestDevice | None" = None
        self._stats: list["StatsReader"] = []  # the VM's, then each vCPU's

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Machine":
        """Build the VM (errors raise here, in the caller's thread) and run it on a background thread."""
        if self._thread is not None:
            raise MachineError("this Machine was already started (make a new one to boot again)")
        from pyvmm.vmm.runner import VmRun
        from pyvmm.vmm.vcpu_thread import KICK_SIGNAL, install_kick_handler

        if threading.current_thread() is threading.main_thread():
            install_kick_handler()
        elif signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
            raise MachineError("start the first Machine from the main thread (it installs the vCPU kick handler)")
        self._run = VmRun(self.spec)
        try:
            self._run.vmm.output.listeners.append(self.console.feed)
            self._run.vmm.events.started.subscribe(lambda vmm: self._started.set())
            machine = self._run.build()
            self._testdev = machine.testdev
            self._open_stats(machine)
        except BaseException:
            self._close_resources()
            raise
        self._thread = threading.Thread(target=self._run_vm, name="pyvmm-machine", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) and self._thread.is_alive():
            self.stop()
            raise MachineError(f"the VM did not start within {timeout:g} s")
        if self.error is not None:
            error, self.error = self.error, None
            self.stop()
            raise error
        return self

    def _run_vm(self) -> None:
        try:
            assert self._run is not None
            result = self._run.run()
            self.outcome, self.status = result.outcome, result.status
        except BaseException as err:  # handed to the caller by start()/wait()/stop()
            self.error = err
        finally:
            self._started.set()
            self.console.wake()

    def wait(self, timeout: float | None = None) -> VmOutcome | None:
        """Block until the guest ends by itself; return its VmOutcome. ConsoleTimeout if it does not in time."""
        if self._thread is None:
            raise MachineError("wait() before start()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise ConsoleTimeout(f"the VM was still running after {timeout:g} s; console tail:\n"
                                 f"{self.console.tail()}")
        self._raise_error()
        return self.outcome

    def stop(self, timeout: float = 10.0) -> VmOutcome | None:
        """Stop the VM if it runs, join its threads, close its fds. Idempotent; returns the VmOutcome."""
        try:
            if self._thread is not None and self._thread.is_alive() and self._run is not None:
                self._run.vmm.stop(VmOutcome(ExitStatus.OK, "stopped by Machine.stop()"))
                self._thread.join(timeout)
                if self._thread.is_alive():
                    raise MachineError(f"the VM thread did not end within {timeout:g} s of stop()")
        finally:
            if self._thread is None or not self._thread.is_alive():
                self._close_resources()
        self._raise_error()
        return self.outcome

    def _raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _open_stats(self, machine: "BuiltMachine") -> None:
        """Stats fds are taken now: KVM_GET_STATS_FD on a vCPU waits for its mutex, which KVM_RUN holds."""
        from pyvmm.kvm.stats import StatsReader

        try:
            self._stats.append(StatsReader.from_object(machine.vm))
            for vcpu in machine.vcpus:
                self._stats.append(StatsReader.from_object(vcpu))
        except OSError:
            self._close_stats()  # a kernel without binary stats (< 5.14): stats() says so

    def _close_stats(self) -> None:
        readers, self._stats = self._stats, []
        for reader in readers:
            reader.close()

    def _close_resources(self) -> None:
        self._close_stats()
        if self._run is not None:
            self._run.close()  # idempotent: everything the run opened, if run() did not get to close it

    def __enter__(self) -> "Machine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- while it runs ----------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _ended_reason(self) -> str | None:
        if self._thread is None or self._thread.is_alive():
            return None
        return self.outcome.reason if self.outcome is not None else f"error: {self.error!r}"

    def _feed_uart(self, data: bytes) -> None:
        machine = self._run.vmm.machine if self._run is not None else None
        if machine is None:
            raise MachineError("the VM is not running: nothing reads the console")
        machine.uart.feed(data)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a shell command on the guest's console shell; return (exit status, output).

        Needs a shell reading the console (e.g. busybox sh as /init or the lane's L2 initrd without pyvmm.cmd=).
        The output is what the console shows between the echoed command line and a unique end marker.
        """
        self._run_serial += 1
        tag = f"PYVMM-RUN-{self._run_serial}"  # short: a typed line longer than the terminal gets redrawn
        # The marker is split in the typed line ('"A""B"') so the echo of the command itself never matches.
        half = len(tag) // 2
        self.console.send(f'{command}; echo "{tag[:half]}""{tag[half:]}" $?')
        match = self.console.expect(re.compile(re.escape(tag) + r" (\d+)\n"), timeout)
        text = self.console.text[:match.start()]
        # Drop the echoed command line: the output starts after the last line that contains the typed command.
        echoed = text.rfind(f'"{tag[:half]}""{tag[half:]}"')
        if echoed >= 0:
            text = text[text.find("\n", echoed) + 1:]
        return int(match.group(1)), text

    def stats(self) -> dict[str, Any]:
        """KVM's binary statistics now: {"vm": {...}, "vcpus": [{...}, ...]} (natural units, histograms as such)."""
        if not self.running:
            raise MachineError("stats() needs a running VM")
        if not self._stats:
            raise MachineError("this kernel has no binary statistics (KVM_GET_STATS_FD, Linux 5.14+)")
        vm, *vcpus = self._stats
        return {"vm": vm.snapshot().values(), "vcpus": [reader.snapshot().values() for reader in vcpus]}

    @property
    def testdev_data(self) -> list[int]:
        """The values the guest wrote to the test device's DATA register so far."""
        return list(self._testdev.data) if self._testdev is not None else []
