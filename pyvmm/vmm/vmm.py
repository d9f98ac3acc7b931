"""The VMM: builds a machine from a VmConfig, runs its vCPU threads, and ends it once with one outcome."""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack
from typing import Callable

from pyvmm.arch import host_arch, machine_module
from pyvmm.arch.machine import Machine, MachineContext
from pyvmm.config import VmConfig
from pyvmm.errors import ExitStatus, UsageError
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vm import Vm
from pyvmm.vmm.console import ConsoleInput, ConsoleOutput
from pyvmm.vmm.outcome import StopLatch, VmOutcome
from pyvmm.vmm.vcpu_thread import VcpuThread, install_kick_handler


class Vmm:
    """One VM's life. `run()` blocks until the VM ends and returns how it ended.

    `before_vcpus` hooks run on the VM before vCPUs exist (some capabilities must be set that early);
    `on_started` hooks run once the vCPU threads are running (control socket, stats sampling).
    """

    def __init__(self, config: VmConfig, output: ConsoleOutput | None = None,
                 before_vcpus: list[Callable[[Vm], None]] | None = None, hide_pv_unhalt: bool = False) -> None:
        if not config.arch:
            config.arch = host_arch()
        config.validate()
        self.config = config
        self.output = output or ConsoleOutput()
        self.before_vcpus = list(before_vcpus or [])
        self.hide_pv_unhalt = hide_pv_unhalt
        self.on_started: list[Callable[["Vmm"], None]] = []
        self.on_finished: list[Callable[["Vmm", VmOutcome], None]] = []
        self.latch = StopLatch()
        self.machine: Machine | None = None
        self.kvm: Kvm | None = None
        self.threads: list[VcpuThread] = []
        self._final: VmOutcome | None = None  # a stop that must end the VM even while it restarts on reboot

    # -- lifecycle requests (any thread) ------------------------------------------------------------------------
    def stop(self, outcome: VmOutcome) -> None:
        if not outcome.reboot and self._final is None:
            self._final = outcome
        self.latch.set(outcome)
        for thread in self.threads:
            thread.request_stop()

    def pause(self) -> bool:
        return all([thread.pause() for thread in self.threads])

    def resume(self) -> None:
        for thread in self.threads:
            thread.resume()

    def _guest_exit(self, status: int) -> None:
        self.stop(VmOutcome(status, f"the guest exited with status {status}", error=False))

    # -- building and running -----------------------------------------------------------------------------------
    def build(self) -> Machine:
        config = self.config
        if self.kvm is None:
            self.kvm = Kvm.open()
        max_vcpus = self.kvm.max_vcpus()
        if config.cpus > max_vcpus:
            raise UsageError(f"--cpus {config.cpus} is more than this KVM allows ({max_vcpus}, KVM_CAP_MAX_VCPUS)")
        context = MachineContext(
            config=config, kvm=self.kvm, console_output=self.output, on_guest_exit=self._guest_exit,
            before_vcpus=self.before_vcpus, hide_pv_unhalt=self.hide_pv_unhalt,
        )
        self.machine = machine_module(config.arch).build(context)
        return self.machine

    def run(self) -> VmOutcome:
        """Build (if needed), run until the VM ends, tear down. Restarts on reboot when configured to."""
        while True:
            outcome = self._run_once()
            if outcome.reboot and self._final is not None:
                return self._final  # stopped (signal, timeout, API) while the guest was rebooting
            if outcome.reboot and self.config.on_reboot == "restart":
                self.latch = StopLatch()
                continue
            return outcome

    def _run_once(self) -> VmOutcome:
        in_main = threading.current_thread() is threading.main_thread()
        with ExitStack() as cleanup:
            if self.machine is None:
                self.build()
            machine = self.machine
            cleanup.callback(self._teardown)
            if in_main:
                install_kick_handler()
                self._install_signal_handlers(cleanup)
            self.threads = [
                VcpuThread(vcpu, machine.mmio_bus, machine.pio_bus, self.latch, self.config.on_reboot,
                           machine.on_system_event)
                for vcpu in machine.vcpus
            ]
            console_in = None
            if self.config.console.stdin:
                console_in = ConsoleInput(machine.console_input or machine.uart.feed, self._quit_from_console)
                console_in.start()
                cleanup.callback(console_in.close)
            for thread in self.threads:
                thread.start()
            for hook in self.on_started:
                hook(self)
            while not self.latch.wait(0.5):
                if not any(t.is_alive() for t in self.threads):
                    self.latch.set(VmOutcome(ExitStatus.SOFTWARE, "every vCPU thread ended without an outcome", error=True))
            self.stop(self.latch.outcome)  # make every vCPU leave KVM_RUN
            for thread in self.threads:
                thread.join(5.0)
            outcome = self.latch.outcome
            for hook in self.on_finished:
                hook(self, outcome)
            return outcome

    def _teardown(self) -> None:
        machine, self.machine = self.machine, None
        if machine is not None:
            machine.close()

    def close(self) -> None:
        self._teardown()
        if self.kvm is not None:
            self.kvm.close()
            self.kvm = None

    def _quit_from_console(self) -> None:
        self.stop(VmOutcome(0, "stopped from the console (Ctrl-a x)"))

    def _install_signal_handlers(self, cleanup: ExitStack) -> None:
        def on_signal(signum: int, frame: object) -> None:
            status = ExitStatus.SIGINT if signum == signal.SIGINT else ExitStatus.SIGTERM
            self.stop(VmOutcome(status, f"stopped by {signal.Signals(signum).name}"))

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, on_signal)
            cleanup.callback(signal.signal, signum, previous)
