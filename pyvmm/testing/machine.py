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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyvmm.config import ConsoleConfig, VmConfig, parse_size
from pyvmm.errors import PyvmmError, UsageError
from pyvmm.testing.console import Console, ConsoleTimeout

STOP_STATUS = 0  # the status a VM stopped by Machine.stop() reports


class MachineError(PyvmmError):
    """The Machine was used out of order (run before start, start twice), or the VM failed to start."""


@dataclass
class MachineConfig:
    """What to boot. `options` are `pyvmm run` area options by parameter name (e.g. {"halt_poll_ns": "0",
    "wfx_trap_threshold": "1"}), the same values the CLI would pass; see `pyvmm run --help`."""

    kernel: Path | str | None = None  # None: the bundled `hello` guest
    initrd: Path | str | None = None
    cmdline: str = ""
    memory: int | str = "256M"
    cpus: int = 1
    guest_args: list[int] = field(default_factory=list)
    irqchip: str = "auto"
    console_log: Path | str | None = None
    # Linux (arm64): boot an initramfs pyvmm builds around this command, as `pyvmm run -k Image -- CMD` does;
    # Machine.status is then the command's exit status.
    command: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def vm_config(self) -> VmConfig:
        memory = self.memory if isinstance(self.memory, int) else parse_size(self.memory)
        return VmConfig(
            kernel=Path(self.kernel) if self.kernel is not None else None,
            initrd=Path(self.initrd) if self.initrd is not None else None,
            cmdline=self.cmdline, memory=memory, cpus=int(self.cpus), guest_args=[int(a) for a in self.guest_args],
            console=ConsoleConfig(stdin=False, log_path=Path(self.console_log) if self.console_log else None),
            irqchip=self.irqchip,
        )


def area_values(options: dict[str, Any]) -> dict[str, Any]:
    """Every `pyvmm run` area option by parameter name, as the CLI would pass it: defaults, then `options` converted
    and checked by the same click declarations (types, callbacks such as --expect's regex compilation)."""
    import click

    from pyvmm.cli.areas import area_options

    def target(**kwargs: Any) -> None:
        pass

    command = click.Command("machine", params=list(reversed(getattr(area_options(target), "__click_params__", []))))
    ctx = command.make_context("machine", [])
    params = {param.name: param for param in command.params}
    unknown = set(options) - set(params)
    if unknown:
        raise UsageError(f"unknown pyvmm run option(s) {sorted(unknown)}; known: {sorted(params)}")
    values = dict(ctx.params)
    for name, value in options.items():
        try:
            values[name] = params[name].process_value(ctx, value)
        except click.BadParameter as err:
            raise UsageError(f"option {name}={value!r}: {err.format_message()}") from None
    return values


class Machine:
    """A VM with its console. Not started by the constructor: call start() or use it as a context manager."""

    def __init__(self, config: MachineConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise UsageError("Machine(): give a MachineConfig or keyword arguments, not both")
        self.config = config or MachineConfig(**kwargs)
        self.console = Console(self._feed_uart, self._ended_reason)
        self.outcome: Any = None  # the VmOutcome once the VM has ended
        self.status: int | None = None  # the exit status `pyvmm run` would have given
        self.error: BaseException | None = None  # what the run thread raised, if anything
        self._vmm: Any = None
        self._areas: list[Any] = []
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._log: Any = None
        self._run_serial = 0
        self._testdev: Any = None
        self._stats: list[Any] = []  # StatsReaders: the VM's, then each vCPU's

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "Machine":
        """Build the VM (errors raise here, in the caller's thread) and run it on a background thread."""
        if self._thread is not None:
            raise MachineError("this Machine was already started (make a new one to boot again)")
        from pyvmm.cli.areas import AREAS
        from pyvmm.vmm.console import ConsoleOutput
        from pyvmm.vmm.vcpu_thread import KICK_SIGNAL, install_kick_handler
        from pyvmm.vmm.vmm import Vmm

        if threading.current_thread() is threading.main_thread():
            install_kick_handler()
        elif signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
            raise MachineError("start the first Machine from the main thread (it installs the vCPU kick handler)")
        vm_config = self.config.vm_config()
        options = dict(self.config.options)
        if self.config.command:
            options["test_command"] = tuple(self.config.command)
        values = area_values(options)
        try:
            if vm_config.console.log_path is not None:
                self._log = open(vm_config.console.log_path, "ab")
            output = ConsoleOutput(log=self._log, echo=False)
            output.listeners.append(self.console.feed)
            self._areas = [area.from_options(vm_config, values) for area in AREAS]
            self._vmm = Vmm(vm_config, output=output)
            for area in self._areas:
                area.attach(self._vmm)
            self._vmm.on_started.append(lambda vmm: self._started.set())
            machine = self._vmm.build()
            self._testdev = machine.testdev
            self._open_stats(machine)
        except BaseException:
            self._close_resources()
            raise
        self._thread = threading.Thread(target=self._run, name="pyvmm-machine", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout) and self._thread.is_alive():
            self.stop()
            raise MachineError(f"the VM did not start within {timeout:g} s")
        if self.error is not None:
            error, self.error = self.error, None
            self.stop()
            raise error
        return self

    def _run(self) -> None:
        try:
            self.outcome = self._vmm.run()
            status = self.outcome.status
            for area in self._areas:
                status = area.finish(self._vmm, self.outcome, status)
            self.status = status
        except BaseException as err:  # handed to the caller by start()/wait()/stop()
            self.error = err
        finally:
            self._started.set()
            self.console.wake()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the guest ends by itself; return its VmOutcome. ConsoleTimeout if it does not in time."""
        if self._thread is None:
            raise MachineError("wait() before start()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise ConsoleTimeout(f"the VM was still running after {timeout:g} s; console tail:\n"
                                 f"{self.console.tail()}")
        self._raise_error()
        return self.outcome

    def stop(self, timeout: float = 10.0) -> Any:
        """Stop the VM if it runs, join its threads, close its fds. Idempotent; returns the VmOutcome."""
        from pyvmm.vmm.outcome import VmOutcome

        try:
            if self._thread is not None and self._thread.is_alive():
                self._vmm.stop(VmOutcome(STOP_STATUS, "stopped by Machine.stop()"))
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

    def _open_stats(self, machine: Any) -> None:
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
        vmm, self._vmm = self._vmm, None
        if vmm is not None:
            vmm.close()  # the machine (VM, vCPU fds) if run() did not tear it down, and /dev/kvm
        log, self._log = self._log, None
        if log is not None:
            log.close()

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
        vmm = self._vmm
        machine = vmm.machine if vmm is not None else None
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
