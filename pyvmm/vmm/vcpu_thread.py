"""One thread per vCPU, a small state machine around KVM_RUN, and the exit dispatch.

States: CREATED -> RUNNING <-> PAUSED -> STOPPED. A stop or pause is requested by setting kvm_run.immediate_exit
and sending SIGUSR1 to the thread: KVM_RUN then returns EINTR at once, whether the thread was inside it or about to
enter it, so no request is lost.

The loop body is the hot path (one pass per guest I/O exit): names are bound to locals, the port/MMIO exit fields are
read with one struct unpack from the shared kvm_run page, and the bus answers from an exact-address cache.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import threading
import traceback
from typing import TYPE_CHECKING, Callable

from pyvmm_bindings import constants as c

from pyvmm.errors import EXIT_GUEST_REBOOT
from pyvmm.kvm.ioctl import bindings, ffi
from pyvmm.vmm.outcome import StopLatch, VmOutcome

if TYPE_CHECKING:
    from pyvmm.devices.bus import Bus
    from pyvmm.kvm.vcpu import Vcpu

KICK_SIGNAL = signal.SIGUSR1

# kvm_run.io is {u8 direction; u8 size; u16 port; u32 count; u64 data_offset}, kvm_run.mmio is
# {u64 phys_addr; u8 data[8]; u32 len; u8 is_write}: tests/unit/test_run_loop_layout.py checks these against cffi.
IO_EXIT = struct.Struct("<BBHIQ")
MMIO_EXIT = struct.Struct("<Q8sIB")
IO_OFFSET = ffi.offsetof("struct kvm_run", "io")
MMIO_OFFSET = ffi.offsetof("struct kvm_run", "mmio")
MMIO_DATA_OFFSET = MMIO_OFFSET + 8
UNPACK_LE = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
             4: struct.Struct("<I").unpack_from, 8: struct.Struct("<Q").unpack_from}


class VcpuState:
    """The states of a vCPU thread (plain strings: the enum module is not worth its import time here)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


def install_kick_handler() -> None:
    """SIGUSR1 must have a handler (not the default, which kills) so it only interrupts KVM_RUN. Main thread only."""
    signal.signal(KICK_SIGNAL, lambda signum, frame: None)


def exit_name(reason: int) -> str:
    return c.EXIT_REASON_NAMES.get(reason, f"UNKNOWN_{reason}")


class VcpuThread(threading.Thread):
    def __init__(self, vcpu: "Vcpu", mmio_bus: "Bus", pio_bus: "Bus | None", latch: StopLatch,
                 on_reboot: str = "exit", on_system_event: Callable[[int, int], VmOutcome | None] | None = None,
                 ) -> None:
        super().__init__(name=f"vcpu{vcpu.index}", daemon=True)
        self.vcpu = vcpu
        self.mmio_bus = mmio_bus
        self.pio_bus = pio_bus
        self.latch = latch
        self.on_reboot = on_reboot
        self.on_system_event = on_system_event
        self.state = VcpuState.CREATED
        self.exits = 0  # userspace exits handled, for a cheap sanity figure in stats
        self._stop_requested = False
        self._pause_requested = False
        self._resume = threading.Event()
        self._paused = threading.Event()
        self._started = threading.Event()

    # -- control from other threads -----------------------------------------------------------------------------
    def _kick(self) -> None:
        run = self.vcpu.run
        if run is not None:
            run.immediate_exit = 1
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
            import logging  # only on this rare path: logging costs start-up time

            logging.getLogger(__name__).debug("vCPU %d crashed", self.vcpu.index, exc_info=True)
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            self.latch.set(VmOutcome(70, f"internal error on vCPU {self.vcpu.index}: {detail}", error=True))
        finally:
            self.state = VcpuState.STOPPED
            self._paused.set()

    def _interrupted(self) -> bool:
        """After EINTR: True to leave the loop (stop), else park while paused and go on."""
        self.vcpu.run.immediate_exit = 0
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

    def _loop(self) -> None:
        vcpu = self.vcpu
        run = vcpu.run
        mm = vcpu.run_mmap
        fd = vcpu.fd
        kvm_run = bindings.lib.ioctl
        KVM_RUN = bindings.KVM_RUN
        null = ffi.NULL
        EXIT_IO = c.KVM_EXIT_IO
        EXIT_MMIO = c.KVM_EXIT_MMIO
        IO_OUT = c.KVM_EXIT_IO_OUT
        EINTR = errno.EINTR
        unpack_io = IO_EXIT.unpack_from
        unpack_mmio = MMIO_EXIT.unpack_from
        io_offset = IO_OFFSET
        mmio_offset = MMIO_OFFSET
        mmio_data = MMIO_DATA_OFFSET
        pio_find = self.pio_bus.find if self.pio_bus is not None else None
        mmio_find = self.mmio_bus.find
        from_bytes = int.from_bytes
        unpack_value = UNPACK_LE
        out_targets: dict[int, tuple] = {}  # port << 4 | size -> (bound write, offset in device), for claimed ports
        mmio_write_targets: dict[int, tuple] = {}  # addr << 4 | length -> (bound write, offset), claimed only
        exits = 0

        while True:
            if kvm_run(fd, KVM_RUN, null) < 0:
                err = ffi.errno
                if err == EINTR or err == errno.EAGAIN:
                    if self._interrupted():
                        break
                    continue
                self.latch.set(VmOutcome(70, f"KVM_RUN failed on vCPU {vcpu.index}: {os.strerror(err)}", error=True))
                break
            exits += 1
            reason = run.exit_reason
            if reason == EXIT_IO and pio_find is not None:
                direction, size, port, count, data = unpack_io(mm, io_offset)
                if direction == IO_OUT and count == 1:
                    # The common case: one OUT to a claimed port. One dict probe gives the bound write method.
                    target = out_targets.get(port << 4 | size)
                    if target is not None:
                        target[0](target[1], size, unpack_value[size](mm, data)[0])
                        if self._stop_requested:
                            break
                        continue
                hit = pio_find(port)
                if hit is None or port + size > hit.end:
                    if direction != IO_OUT:
                        mm[data : data + size * count] = b"\xff" * (size * count)
                    continue
                offset = port - hit.base
                if direction == IO_OUT:
                    write = hit.device.write
                    out_targets[port << 4 | size] = (write, offset)
                    for i in range(count):
                        at = data + i * size
                        write(offset, size, from_bytes(mm[at : at + size], "little"))
                else:
                    read = hit.device.read
                    for i in range(count):
                        at = data + i * size
                        mm[at : at + size] = (read(offset, size) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            elif reason == EXIT_MMIO:
                addr, raw, length, is_write = unpack_mmio(mm, mmio_offset)
                if is_write:
                    target = mmio_write_targets.get(addr << 4 | length)
                    if target is not None:
                        target[0](target[1], length, from_bytes(raw[:length], "little"))
                        if self._stop_requested:
                            break
                        continue
                if not 0 < length <= 8:
                    continue
                hit = mmio_find(addr)
                if hit is None or addr + length > hit.end:
                    if not is_write:
                        mm[mmio_data : mmio_data + length] = b"\xff" * length
                    continue
                if is_write:
                    write = hit.device.write
                    if len(mmio_write_targets) < 4096:
                        mmio_write_targets[addr << 4 | length] = (write, addr - hit.base)
                    write(addr - hit.base, length, from_bytes(raw[:length], "little"))
                else:
                    value = hit.device.read(addr - hit.base, length) & ((1 << (8 * length)) - 1)
                    mm[mmio_data : mmio_data + length] = value.to_bytes(length, "little")
            else:
                outcome = self._slow_exit(reason)
                if outcome is not None:
                    self.latch.set(outcome)
                    break
            if self._stop_requested:
                break
        self.exits += exits

    def _slow_exit(self, reason: int) -> VmOutcome | None:
        """Exits that end the VM (or need the arch's judgement). None: go on running."""
        run = self.vcpu.run
        index = self.vcpu.index
        if reason == c.KVM_EXIT_SYSTEM_EVENT:
            event = run.system_event.type
            if self.on_system_event is not None:
                handled = self.on_system_event(index, event)
                if handled is not None:
                    return handled
            if event == c.KVM_SYSTEM_EVENT_SHUTDOWN:
                return VmOutcome(0, "the guest powered off")
            if event == c.KVM_SYSTEM_EVENT_RESET:
                return VmOutcome(EXIT_GUEST_REBOOT, "the guest asked for a reboot", reboot=True)
            if event == c.KVM_SYSTEM_EVENT_CRASH:
                return VmOutcome(70, "the guest reported a crash (PSCI/system event CRASH)", error=True)
            return VmOutcome(70, f"unhandled system event {event} from vCPU {index}", error=True)
        if reason == c.KVM_EXIT_SHUTDOWN:
            # x86 triple fault: what a PC does is reset.
            return VmOutcome(EXIT_GUEST_REBOOT, f"vCPU {index} shut down (triple fault): treated as a reboot",
                             reboot=True)
        if reason == c.KVM_EXIT_HLT:
            return VmOutcome(70, f"vCPU {index} halted (HLT) and nothing can wake it", error=True)
        if reason == c.KVM_EXIT_INTR:
            return None
        if reason == c.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            data = ", ".join(f"{int(internal.data[i]):#x}" for i in range(min(int(internal.ndata), 16)))
            return VmOutcome(70, f"KVM internal error on vCPU {index}: suberror {int(internal.suberror)}"
                                 f" ({c.INTERNAL_ERROR_NAMES.get(int(internal.suberror), 'unknown')})"
                                 f"{'; data ' + data if data else ''}", error=True)
        if reason == c.KVM_EXIT_FAIL_ENTRY:
            fail = run.fail_entry
            return VmOutcome(70, f"KVM could not enter vCPU {index}: hardware entry failure reason "
                                 f"{int(fail.hardware_entry_failure_reason):#x} on host CPU {int(fail.cpu)}",
                             error=True)
        if reason == c.KVM_EXIT_UNKNOWN:
            return VmOutcome(70, f"vCPU {index} exited for an unknown hardware reason "
                                 f"{int(run.hw.hardware_exit_reason):#x}", error=True)
        if reason == c.KVM_EXIT_IO:  # port I/O on an architecture without a port bus
            return VmOutcome(70, f"vCPU {index}: port I/O exit on a machine without ports", error=True)
        return VmOutcome(70, f"vCPU {index} stopped on an exit pyvmm does not handle: {exit_name(reason)} ({reason})",
                         error=True)
