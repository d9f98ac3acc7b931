"""The VMM: builds a machine from a VmSpec, runs its vCPU threads, ends it once with one outcome, and tells its
features about each step through typed lifecycle events (pyvmm.vmm.lifecycle)."""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack

from pyvmm.arch import machine_module
from pyvmm.arch.machine import Machine, MachineContext
from pyvmm.errors import ExitStatus, UsageError
from pyvmm.kvm.system import Kvm
from pyvmm.spec import VmSpec
from pyvmm.vmm.console import ConsoleInput, ConsoleOutput
from pyvmm.vmm.lifecycle import Lifecycle
from pyvmm.outcome import StopLatch, VmOutcome
from pyvmm.vmm.vcpu_thread import VcpuThread, install_kick_handler


class Vmm:
    """One VM's life. `run()` blocks until the VM ends and returns how it ended. The spec is validated already
    (pyvmm.vmm.runner does it once); features subscribe to `events` before `run()`."""

    def __init__(self, spec: VmSpec, output: ConsoleOutput | None = None) -> None:
        self.spec = spec
        self.output = output or ConsoleOutput()
        self.events: Lifecycle[Vmm] = Lifecycle()
        self.latch = StopLatch()
        self.machine: Machine | None = None
        self.kvm: Kvm | None = None
        self.threads: list[VcpuThread] = []
        self._final: VmOutcome | None = None  # a stop that must end the VM even while it restarts on reboot
        self._started_told = False  # this boot's `started` was emitted
        self._stopping_told = False  # this boot's `stopping` was emitted
        self._stopping_lock = threading.Lock()

    # -- lifecycle requests (any thread) ------------------------------------------------------------------------
    def stop(self, outcome: VmOutcome) -> None:
        if not outcome.reboot and self._final is None:
            self._final = outcome
        self.latch.set(outcome)
        self._tell_stopping()
        for thread in self.threads:
            thread.request_stop()

    def _tell_stopping(self) -> None:
        """Emit `stopping` once per boot, and never before `started` (a guest may stop before that is emitted)."""
        with self._stopping_lock:
            if not self._started_told or self._stopping_told:
                return
            self._stopping_told = True
        outcome = self.latch.outcome
        assert outcome is not None  # only called once the latch is set
        self.events.stopping.emit(outcome)

    def pause(self) -> bool:
        return all([thread.pause() for thread in self.threads])

    def resume(self) -> None:
        for thread in self.threads:
            thread.resume()

    def _guest_exit(self, status: int) -> None:
        self.stop(VmOutcome(status, f"the guest exited with status {status}", error=False))

    # -- building and running -----------------------------------------------------------------------------------
    def build(self) -> Machine:
        spec = self.spec
        if self.kvm is None:
            self.kvm = Kvm.open()
        max_vcpus = self.kvm.max_vcpus()
        if spec.cpus > max_vcpus:
            raise UsageError(f"--cpus {spec.cpus} is more than this KVM allows ({max_vcpus}, KVM_CAP_MAX_VCPUS)")
        context = MachineContext(
            spec=spec, kvm=self.kvm, console_output=self.output, on_guest_exit=self._guest_exit,
            before_vcpus=self.events.before_vcpus.emit,
        )
        self.machine = machine_module(spec.arch).build(context)
        return self.machine

    def run(self) -> VmOutcome:
        """Build (if needed), run until the VM ends, tear down. Restarts on reboot when the spec says so."""
        try:
            while True:
                outcome = self._run_once()
                if outcome.reboot and self._final is not None:
                    outcome = self._final  # stopped (signal, timeout, API) while the guest was rebooting
                elif outcome.reboot and self.spec.on_reboot == "restart":
                    self._teardown()
                    self.latch = StopLatch()
                    self._started_told = self._stopping_told = False
                    continue
                self.events.finished.emit(outcome)
                return outcome
        finally:
            if not self.latch.is_set():  # an error on the way (build, a feature): nothing may outlive the machine
                failed = VmOutcome(ExitStatus.SOFTWARE, "the VMM failed", error=True)
                if self.threads:
                    self.stop(failed)
                    for thread in self.threads:
                        thread.join(5.0)
                else:
                    self.latch.set(failed)
            self._teardown()

    def _run_once(self) -> VmOutcome:
        in_main = threading.current_thread() is threading.main_thread()
        with ExitStack() as cleanup:
            if self.machine is None:
                self.build()
            machine = self.machine
            if in_main:
                install_kick_handler()
                self._install_signal_handlers(cleanup)
            self.threads = [VcpuThread(vcpu, machine.devices.mmio, machine.arch_exits(vcpu), self.latch)
                            for vcpu in machine.vcpus]
            console_in = None
            if self.spec.console.stdin:
                console_in = ConsoleInput(machine.console_input or machine.uart.feed, self._quit_from_console)
                console_in.start()
                cleanup.callback(console_in.close)
            for thread in self.threads:
                thread.start()
                # Known once start() returns (the thread itself sets it only when it gets to run): `started`
                # handlers pin and sample the vCPU threads by it.
                thread.vcpu.thread_id = thread.native_id
            self.events.started.emit(self)
            with self._stopping_lock:
                self._started_told = True
            if self.latch.is_set():
                self._tell_stopping()  # the guest stopped while `started` was being emitted
            while not self.latch.wait(0.5):
                if not any(t.is_alive() for t in self.threads):
                    self.latch.set(VmOutcome(ExitStatus.SOFTWARE, "every vCPU thread ended without an outcome",
                                             error=True))
            self.stop(self.latch.outcome)  # make every vCPU leave KVM_RUN
            for thread in self.threads:
                thread.join(5.0)
            machine.devices.flush()  # console output KVM still holds queued, before anyone reads the verdicts
            return self.latch.outcome

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
        self.stop(VmOutcome(ExitStatus.OK, "stopped from the console (Ctrl-a x)"))

    def _install_signal_handlers(self, cleanup: ExitStack) -> None:
        def on_signal(signum: int, frame: object) -> None:
            status = ExitStatus.SIGINT if signum == signal.SIGINT else ExitStatus.SIGTERM
            self.stop(VmOutcome(status, f"stopped by {signal.Signals(signum).name}"))

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.signal(signum, on_signal)
            cleanup.callback(signal.signal, signum, previous)
