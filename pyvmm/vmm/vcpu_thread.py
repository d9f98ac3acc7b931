"""One thread per vCPU, a small state machine around KVM_RUN, and the exit dispatch.

States: CREATED -> RUNNING <-> PAUSED -> STOPPED. A stop or pause is requested by setting kvm_run.immediate_exit
and sending SIGUSR1 to the thread: KVM_RUN then returns EINTR at once, whether the thread was inside it or about to
enter it, so no request is lost.

The loop (kvmtool's kvm_cpu__start, Firecracker's run_emulation) is one if/elif on the exit reason. MMIO goes to the
MMIO bus, port I/O to the arch's port bus (x86_64): an access whose exact address and size were seen before costs one
probe of the bus's own cache. Exits only one architecture has (x86's triple fault) go to the arch's `ArchExits`; the
exits that end the VM each have a named handler. The Vcpu decodes its kvm_run page (pyvmm.kvm.vcpu.RunPage).
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from typing import TYPE_CHECKING

from pyvmm_bindings import constants as c

from pyvmm.errors import ExitStatus
from pyvmm.kvm.vcpu import MMIO_DATA_OFFSET, PACK_VALUE, PIO_DATA_OFFSET, UNPACK_VALUE, VALUE_MASK
from pyvmm.outcome import StopLatch, VmOutcome

if TYPE_CHECKING:
    from pyvmm.arch.machine import ArchExits
    from pyvmm.devices.bus import Bus
    from pyvmm.kvm.vcpu import Vcpu

KICK_SIGNAL = signal.SIGUSR1


class VcpuState:
    """The states of a vCPU thread (plain strings: the enum module is not worth its import time here)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


def install_kick_handler() -> None:
    """SIGUSR1 must have a handler (not the default, which kills) so it only interrupts KVM_RUN. Main thread only."""
    signal.signal(KICK_SIGNAL, lambda signum, frame: None)


def _error(reason: str) -> VmOutcome:
    return VmOutcome(ExitStatus.SOFTWARE, reason, error=True)


class VcpuThread(threading.Thread):
    def __init__(self, vcpu: "Vcpu", mmio_bus: "Bus", arch_exits: "ArchExits", latch: StopLatch) -> None:
        super().__init__(name=f"vcpu{vcpu.index}", daemon=True)
        self.vcpu = vcpu
        self.mmio_bus = mmio_bus
        self.arch_exits = arch_exits
        self.latch = latch
        self.state = VcpuState.CREATED
        self._stop_requested = False
        self._pause_requested = False
        self._resume = threading.Event()
        self._paused = threading.Event()

    # -- control from other threads -----------------------------------------------------------------------------
    def _kick(self) -> None:
        page = self.vcpu.page
        if page.run is not None:  # None once the vCPU is closed
            page.set_immediate_exit(True)
        if self.ident is not None and self.is_alive():
            try:
                signal.pthread_kill(self.ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def request_stop(self) -> None:
        self._stop_requested = True
        self._resume.set()
        self._kick()

    def pause(self, timeout: float = 5.0) -> bool:
        """Take the vCPU out of KVM_RUN and keep it out until resume(); True once it is parked."""
        if self.state == VcpuState.STOPPED:
            return False
        self._resume.clear()
        self._paused.clear()
        self._pause_requested = True
        self._kick()
        return self._paused.wait(timeout)

    def resume(self) -> None:
        self._pause_requested = False
        self._resume.set()

    # -- the thread ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        # Process-directed signals (Ctrl-C, SIGTERM) belong to the main thread, which owns the lifecycle.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        self.vcpu.thread_id = threading.get_native_id()
        self.state = VcpuState.RUNNING
        try:
            self._loop()
        except Exception as err:  # a bug or a device failure: stop the VM and say where, never die silently
            import logging  # only on this rare path: logging and traceback cost start-up time
            import traceback

            logging.getLogger(__name__).debug("vCPU %d crashed", self.vcpu.index, exc_info=True)
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            self.latch.set(_error(f"internal error on vCPU {self.vcpu.index}: {detail}"))
        finally:
            self.state = VcpuState.STOPPED
            self._paused.set()

    def _loop(self) -> None:
        # Everything the hot path touches is bound to a local once; the two bus branches come first and are written
        # out in full (a call per exit into a helper would cost a Python frame).
        vcpu = self.vcpu
        page = vcpu.page
        kvm_run, fd, KVM_RUN = vcpu.kvm_run
        buffer = page.buffer
        unpack_mmio, mmio_view = page.mmio_record
        complete_read = page.complete_mmio_read
        mmio_read = self.mmio_bus.read
        mmio_write = self.mmio_bus.write
        mmio_writes = self.mmio_bus.write_cache  # the bus clears both in place on every register/unregister
        mmio_reads = self.mmio_bus.read_cache
        pack_value = PACK_VALUE
        DATA = MMIO_DATA_OFFSET
        PIO_DATA = PIO_DATA_OFFSET
        port_bus = self.arch_exits.port_bus
        # One unpack per exit reads the reason with the record of the arch's usual exit (port I/O on x86, where MMIO
        # then costs a second unpack; MMIO elsewhere).
        record_is_mmio = port_bus is None or page.io_record is None
        unpack_exit, exit_view = page.mmio_record if record_is_mmio else page.io_record
        unpack_value = UNPACK_VALUE
        arch_reasons = self.arch_exits.reasons
        arch_exit = self.arch_exits.handle
        mask = VALUE_MASK
        EXIT_MMIO = c.KVM_EXIT_MMIO
        EXIT_IO = c.KVM_EXIT_IO if port_bus is not None else -1  # without a port bus, IO is an unhandled exit
        IO_OUT = c.KVM_EXIT_IO_OUT
        if port_bus is not None:
            port_read, port_write, port_writes = port_bus.read, port_bus.write, port_bus.write_cache

        outcome: VmOutcome | None = None  # set by an exit that ends the VM
        # `while True` on purpose: CPython 3.11 specialises a running function's bytecode only at function entry or
        # at an unconditional JUMP_BACKWARD. A loop whose condition sits at its end (POP_JUMP_BACKWARD_IF_*), entered
        # once per thread like this one, would run unspecialised for the VM's whole life, at about half the speed.
        # No stop check per exit: a stop (or pause) request sets immediate_exit, so the next KVM_RUN returns EINTR and
        # _run_failed decides. The exits that end the VM leave with `break`.
        while True:
            try:
                kvm_run(fd, KVM_RUN)
            except OSError as err:
                if self._run_failed(err.errno):
                    break
                continue
            record = unpack_exit(exit_view)
            reason = record[0]
            if reason == EXIT_MMIO:
                _, addr, data, length, is_write = record if record_is_mmio else unpack_mmio(mmio_view)
                if is_write:
                    try:
                        write, offset = mmio_writes[addr * 16 + length]
                    except KeyError:  # the first write of this address and size
                        mmio_write(addr, length, data & mask[length])
                    else:
                        write(offset, length, data & mask[length])
                else:
                    try:
                        read, offset = mmio_reads[addr * 16 + length]
                    except KeyError:  # the first read of this address and size, or one of a size never cached
                        complete_read(length, mmio_read(addr, length))
                    else:
                        pack_value[length](buffer, DATA, read(offset, length) & mask[length])
            elif reason == EXIT_IO:
                _, direction, size, port, count, at, data = record
                if direction == IO_OUT and count == 1:
                    # x86 KVM puts the data at PIO_DATA, which the record holds; any other data_offset: an unpack
                    value = data & mask[size] if at == PIO_DATA else unpack_value[size](buffer, at)[0]
                    try:
                        write, offset = port_writes[port * 16 + size]
                    except KeyError:  # the first write of this port and size
                        port_write(port, size, value)
                    else:
                        write(offset, size, value)
                elif direction == IO_OUT:  # rep outs
                    page.io_out(port_write, port, size, count, at)
                else:  # port IN, `count` times for rep ins
                    page.io_in(port_read, port, size, count, at)
            elif reason in arch_reasons:
                if (outcome := arch_exit(reason)) is not None:
                    break
            elif reason == c.KVM_EXIT_INTR:
                pass  # a signal arrived as KVM_RUN returned: immediate_exit, if set, makes the next KVM_RUN say EINTR
            elif reason == c.KVM_EXIT_SYSTEM_EVENT:
                outcome = self._system_event()
                break
            elif reason == c.KVM_EXIT_HLT:
                outcome = _error(f"vCPU {vcpu.index} halted (HLT) and nothing can wake it")
                break
            elif reason == c.KVM_EXIT_INTERNAL_ERROR:
                outcome = self._internal_error()
                break
            elif reason == c.KVM_EXIT_FAIL_ENTRY:
                outcome = self._fail_entry()
                break
            elif reason == c.KVM_EXIT_UNKNOWN:
                outcome = _error(f"vCPU {vcpu.index} exited for an unknown hardware reason "
                                 f"{page.hardware_exit_reason():#x}")
                break
            else:
                outcome = _error(f"vCPU {vcpu.index} stopped on an exit pyvmm does not handle: "
                                 f"{c.exit_reason_name(reason)} ({reason})")
                break
        if outcome is not None:
            self.latch.set(outcome)

    def _run_failed(self, err: int) -> bool:
        """KVM_RUN returned an error: True to leave the loop. EINTR/EAGAIN is a kick: stop, or park while paused."""
        if err != errno.EINTR and err != errno.EAGAIN:
            self.latch.set(_error(f"KVM_RUN failed on vCPU {self.vcpu.index}: {os.strerror(err)}"))
            return True
        self.vcpu.page.set_immediate_exit(False)
        if self._stop_requested or self.latch.is_set():
            return True
        if self._pause_requested:
            self.state = VcpuState.PAUSED
            self._paused.set()
            self._resume.wait()
            if self._stop_requested:
                return True
            self.state = VcpuState.RUNNING
        return False

    # -- exits that end the VM ----------------------------------------------------------------------------------
    def _system_event(self) -> VmOutcome:
        event = self.vcpu.page.system_event_type()
        if event == c.KVM_SYSTEM_EVENT_SHUTDOWN:
            return VmOutcome(ExitStatus.OK, "the guest powered off")
        if event == c.KVM_SYSTEM_EVENT_RESET:
            return VmOutcome(ExitStatus.REBOOT, "the guest asked for a reboot", reboot=True)
        if event == c.KVM_SYSTEM_EVENT_CRASH:
            return _error("the guest reported a crash (PSCI/system event CRASH)")
        return _error(f"unhandled system event {event} from vCPU {self.vcpu.index}")

    def _internal_error(self) -> VmOutcome:
        suberror, words = self.vcpu.page.internal_error()
        data = ", ".join(f"{word:#x}" for word in words)
        return _error(f"KVM internal error on vCPU {self.vcpu.index}: suberror {suberror}"
                      f" ({c.INTERNAL_ERROR_NAMES.get(suberror, 'unknown')}){'; data ' + data if data else ''}")

    def _fail_entry(self) -> VmOutcome:
        reason, cpu = self.vcpu.page.fail_entry()
        return _error(f"KVM could not enter vCPU {self.vcpu.index}: hardware entry failure reason {reason:#x} "
                      f"on host CPU {cpu}")
