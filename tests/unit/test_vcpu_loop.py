"""The vCPU loop driven without /dev/kvm (Firecracker's test_run_emulation): KVM_RUN is a script that writes each exit
into a kvm_run page laid out as the kernel's, recording devices sit on the buses, and every exit kind is checked."""

from __future__ import annotations

import dis
import errno
import signal
import sys
import time
from typing import Callable

import pytest
from pyvmm_bindings import constants as c

from pyvmm.arch.arm64 import exits as arm64_exits
from pyvmm.arch.x86_64 import exits as x86_exits
from pyvmm.devices.bus import Bus
from pyvmm.errors import ExitStatus
from pyvmm.kvm.ioctl import bindings
from pyvmm.kvm.vcpu import IO_EXIT, IO_OFFSET, MMIO_DATA_OFFSET, MMIO_EXIT, MMIO_OFFSET, PIO_DATA_OFFSET, RunPage
from pyvmm.outcome import StopLatch
from pyvmm.vmm.vcpu_thread import VcpuState, VcpuThread, install_kick_handler

PAGE_SIZE = 0x2000
IO_DATA = PIO_DATA_OFFSET  # where x86 KVM puts port I/O data: the mapping's second page
OTHER_IO_DATA = 0x1800  # a data_offset KVM does not use: the loop must still honour it
Step = Callable[["ScriptedVcpu"], int]


class Recorder:
    def __init__(self, name: str = "dev", value: int = 0x1122334455667788) -> None:
        self.name = name
        self.value = value
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class ScriptedVcpu:
    """What the loop needs of a Vcpu: its index, its kvm_run page and `kvm_run` (call, fd, request), here a call that
    plays a script. Like KVM_RUN through fcntl.ioctl, it raises OSError(EINTR) at once while immediate_exit is set."""

    def __init__(self, steps: list[Step]) -> None:
        self.index = 0
        self.thread_id: int | None = None
        self.page = RunPage(bytearray(PAGE_SIZE))
        self.steps = list(steps)
        self.entries = 0
        self.kvm_run = (self.enter, 42, bindings.KVM_RUN)

    def enter(self, fd: int, request: int) -> int:
        assert (fd, request) == (42, bindings.KVM_RUN)
        self.entries += 1
        if self.page.run.immediate_exit:
            return eintr(self)
        if not self.steps:
            raise AssertionError("the loop went on after the last scripted exit")
        return self.steps.pop(0)(self)


def eintr(vcpu: ScriptedVcpu) -> int:
    raise InterruptedError(errno.EINTR, "Interrupted system call")


def reason_only(reason: int) -> Step:
    def step(vcpu: ScriptedVcpu) -> int:
        vcpu.page.run.exit_reason = reason
        return 0

    return step


def mmio(addr: int, length: int, value: int | None = None) -> Step:
    """A store of `value`, or a load when value is None."""

    def step(vcpu: ScriptedVcpu) -> int:
        vcpu.page.run.exit_reason = c.KVM_EXIT_MMIO
        MMIO_EXIT.pack_into(vcpu.page.buffer, MMIO_OFFSET, addr, value or 0, length, int(value is not None))
        return 0

    return step


def pio(port: int, size: int, values: list[int] | None = None, count: int = 1, at: int = IO_DATA) -> Step:
    """OUT of `values` (rep outs when several), or IN of `count` values when values is None, with the data at `at`."""

    def step(vcpu: ScriptedVcpu) -> int:
        run, buffer = vcpu.page.run, vcpu.page.buffer
        run.exit_reason = c.KVM_EXIT_IO
        direction = c.KVM_EXIT_IO_IN if values is None else c.KVM_EXIT_IO_OUT
        IO_EXIT.pack_into(buffer, IO_OFFSET, direction, size, port, len(values) if values else count, at)
        for i, value in enumerate(values or []):
            buffer[at + i * size : at + (i + 1) * size] = value.to_bytes(size, "little")
        return 0

    return step


def system_event(kind: int) -> Step:
    def step(vcpu: ScriptedVcpu) -> int:
        vcpu.page.run.exit_reason = c.KVM_EXIT_SYSTEM_EVENT
        vcpu.page.run.system_event.type = kind
        return 0

    return step


def check(assertion: Callable[[ScriptedVcpu], None], then: Step) -> Step:
    """Look at the page as the previous exit left it (what KVM would hand the guest), then play `then`."""

    def step(vcpu: ScriptedVcpu) -> int:
        assertion(vcpu)
        return then(vcpu)

    return step


def mmio_data(vcpu: ScriptedVcpu, length: int) -> bytes:
    return bytes(vcpu.page.buffer[MMIO_DATA_OFFSET : MMIO_DATA_OFFSET + length])


POWER_OFF = system_event(c.KVM_SYSTEM_EVENT_SHUTDOWN)


def run_loop(steps: list[Step], mmio_bus: Bus | None = None, pio_bus: Bus | None = None):
    """Run the loop on this thread until it leaves; (outcome or None, the thread, the vCPU)."""
    vcpu = ScriptedVcpu(steps)
    arch = x86_exits.exits(vcpu, pio_bus) if pio_bus is not None else arm64_exits.exits(vcpu)
    thread = VcpuThread(vcpu, mmio_bus or Bus("MMIO"), arch, StopLatch())
    thread._loop()
    return thread.latch.outcome, thread, vcpu


def test_mmio_writes_reach_the_device_and_repeat_through_the_bus_cache():
    bus, device = Bus("MMIO"), Recorder()
    bus.register(0x1000, 0x100, device)
    writes = [mmio(0x1010, 4, 0xAABBCCDD), mmio(0x1010, 4, 0x11), mmio(0x1012, 2, 0xDEAD_0022)]
    outcome, _, _ = run_loop([*writes, POWER_OFF], mmio_bus=bus)
    assert device.writes == [(0x10, 4, 0xAABBCCDD), (0x10, 4, 0x11), (0x12, 2, 0x22)]  # masked to the access size
    assert set(bus.write_cache) == {0x1010 * 16 + 4, 0x1012 * 16 + 2}
    assert outcome.status == ExitStatus.OK and outcome.reason == "the guest powered off"


def test_mmio_reads_answer_with_the_device_value_or_all_ones_when_unclaimed():
    bus, device = Bus("MMIO"), Recorder(value=0x1234_5678)
    bus.register(0x1000, 0x100, device)
    outcome, _, _ = run_loop([
        mmio(0x1004, 2),
        check(lambda v: assert_equal(mmio_data(v, 2), b"\x78\x56"), mmio(0x5000, 4)),  # masked to the access size
        check(lambda v: assert_equal(mmio_data(v, 4), b"\xff" * 4), mmio(0x10FE, 4)),  # straddles the end
        check(lambda v: assert_equal(mmio_data(v, 4), b"\xff" * 4), mmio(0x5000, 4, 7)),  # unclaimed write: dropped
        mmio(0x5000, 2),
        check(lambda v: assert_equal(mmio_data(v, 2), b"\xff" * 2), mmio(0x5000, 2)),  # again: through the cache
        check(lambda v: assert_equal(mmio_data(v, 2), b"\xff" * 2), POWER_OFF),
    ], mmio_bus=bus)
    assert device.reads == [(4, 2)] and device.writes == []
    assert {0x5000 * 16 + 4, 0x5000 * 16 + 2, 0x10FE * 16 + 4} <= set(bus.read_cache) and not outcome.error


def test_repeated_mmio_reads_come_through_the_bus_read_cache():
    bus, device = Bus("MMIO"), Recorder(value=0xAABB_CCDD_1122_3344)
    bus.register(0x1000, 0x100, device)
    outcome, _, _ = run_loop([
        mmio(0x1008, 4),
        check(lambda v: assert_equal(mmio_data(v, 4), b"\x44\x33\x22\x11"), mmio(0x1008, 4)),  # cached
        check(lambda v: assert_equal(mmio_data(v, 4), b"\x44\x33\x22\x11"), mmio(0x1008, 1)),  # masked
        check(lambda v: assert_equal(mmio_data(v, 1), b"\x44"), mmio(0x1010, 3)),  # 3 bytes: never cached
        check(lambda v: assert_equal(mmio_data(v, 3), b"\x44\x33\x22"), POWER_OFF),
    ], mmio_bus=bus)
    assert device.reads == [(8, 4), (8, 4), (8, 1), (0x10, 3)] and not outcome.error
    assert set(bus.read_cache) == {0x1008 * 16 + 4, 0x1008 * 16 + 1}


def assert_equal(got, expected) -> None:
    assert got == expected


def test_port_io_goes_to_the_x86_port_bus():
    ports, device = Bus("port I/O"), Recorder(value=0xABCD)
    ports.register(0x500, 0x20, device)
    outcome, _, _ = run_loop([
        pio(0x504, 4, [7]), pio(0x504, 4, [8]),  # the second through the bus's cache
        pio(0x510, 1, [1, 2, 3]),  # rep outsb
        pio(0x508, 2, count=2),  # rep insw
        check(lambda v: assert_equal(bytes(v.page.buffer[IO_DATA : IO_DATA + 4]), b"\xcd\xab\xcd\xab"),
              pio(0x80, 1, count=1)),  # unclaimed IN: all-ones
        check(lambda v: assert_equal(v.page.buffer[IO_DATA], 0xFF), pio(0x80, 1, [9])),  # unclaimed OUT: dropped
        pio(0x80, 1, [10]),  # and again, through the cache's entry for the unclaimed port
        POWER_OFF,
    ], pio_bus=ports)
    assert device.writes == [(4, 4, 7), (4, 4, 8), (0x10, 1, 1), (0x10, 1, 2), (0x10, 1, 3)]
    assert device.reads == [(8, 2), (8, 2)]
    assert {0x504 * 16 + 4, 0x80 * 16 + 1} <= set(ports.write_cache) and not outcome.error


def test_a_port_out_value_is_masked_to_its_size_and_read_where_data_offset_points():
    # The loop reads the data page's first u64 with the record: a byte OUT after a wider one must not see its stale
    # upper bytes, and a data_offset other than KVM's own is still where the value is read.
    ports, device = Bus("port I/O"), Recorder()
    ports.register(0x500, 0x20, device)
    outcome, _, _ = run_loop([
        pio(0x504, 4, [0xAABBCCDD]), pio(0x504, 1, [0x11]), pio(0x504, 2, [0x2233]),
        pio(0x504, 1, [0x44], at=OTHER_IO_DATA), pio(0x506, 2, [0x5566], at=OTHER_IO_DATA),  # cached / through the bus
        POWER_OFF,
    ], pio_bus=ports)
    assert device.writes == [(4, 4, 0xAABBCCDD), (4, 1, 0x11), (4, 2, 0x2233), (4, 1, 0x44), (6, 2, 0x5566)]
    assert not outcome.error


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="CPython 3.11's specialising interpreter")
def test_the_hot_loop_compares_are_specialised_on_cpython_3_11():
    # 3.11 specialises `x == y` only when a conditional jump follows it at once: a branch body longer than 255 code
    # units puts an EXTENDED_ARG in between and leaves that compare generic on every exit (about 60 instructions more).
    ports, memory = Bus("port I/O"), Bus("MMIO")
    ports.register(0x500, 0x20, Recorder())
    memory.register(0x1000, 0x100, Recorder())
    steps = [pio(0x504, 1, [7]), pio(0x508, 1), mmio(0x1010, 4, 1), mmio(0x1010, 4)] * 100
    run_loop([*steps, POWER_OFF], mmio_bus=memory, pio_bus=ports)
    generic = [i for i in dis.get_instructions(VcpuThread._loop, adaptive=True) if i.opname == "COMPARE_OP"]
    assert not generic, f"compares left unspecialised at lines {[i.positions.lineno for i in generic]}"


def test_a_triple_fault_is_a_reboot_on_x86_and_unknown_elsewhere():
    outcome, _, _ = run_loop([reason_only(c.KVM_EXIT_SHUTDOWN)], pio_bus=Bus("port I/O"))
    assert outcome.reboot and outcome.status == ExitStatus.REBOOT and "triple fault" in outcome.reason
    outcome, _, _ = run_loop([reason_only(c.KVM_EXIT_SHUTDOWN)])
    assert outcome.error and "KVM_EXIT_SHUTDOWN" in outcome.reason
    outcome, _, _ = run_loop([pio(0x3F8, 1, [65])])  # port I/O on arm64: not an exit it has
    assert outcome.error and "KVM_EXIT_IO" in outcome.reason


@pytest.mark.parametrize("kind,status,reboot,error,words", [
    (c.KVM_SYSTEM_EVENT_SHUTDOWN, ExitStatus.OK, False, False, "powered off"),
    (c.KVM_SYSTEM_EVENT_RESET, ExitStatus.REBOOT, True, False, "reboot"),
    (c.KVM_SYSTEM_EVENT_CRASH, ExitStatus.SOFTWARE, False, True, "crash"),
    (77, ExitStatus.SOFTWARE, False, True, "unhandled system event 77"),
])
def test_system_events(kind, status, reboot, error, words):
    outcome, _, _ = run_loop([system_event(kind)])
    assert (outcome.status, outcome.reboot, outcome.error) == (status, reboot, error)
    assert words in outcome.reason


def internal_error(vcpu: ScriptedVcpu) -> int:
    run = vcpu.page.run
    run.exit_reason = c.KVM_EXIT_INTERNAL_ERROR
    run.internal.suberror = 1
    run.internal.ndata = 2
    run.internal.data[0], run.internal.data[1] = 0x10, 0x20
    return 0


def fail_entry(vcpu: ScriptedVcpu) -> int:
    vcpu.page.run.exit_reason = c.KVM_EXIT_FAIL_ENTRY
    vcpu.page.run.fail_entry.hardware_entry_failure_reason = 0x21
    vcpu.page.run.fail_entry.cpu = 3
    return 0


def unknown_hardware(vcpu: ScriptedVcpu) -> int:
    vcpu.page.run.exit_reason = c.KVM_EXIT_UNKNOWN
    vcpu.page.run.hw.hardware_exit_reason = 0x99
    return 0


@pytest.mark.parametrize("step,words", [
    (reason_only(c.KVM_EXIT_HLT), "halted (HLT)"),
    (internal_error, "suberror 1 (emulation failure); data 0x10, 0x20"),
    (fail_entry, "hardware entry failure reason 0x21 on host CPU 3"),
    (unknown_hardware, "unknown hardware reason 0x99"),
    (reason_only(200), "does not handle: KVM_EXIT_200 (unknown) (200)"),
])
def test_exits_that_end_the_vm_with_an_error(step, words):
    outcome, _, _ = run_loop([step])
    assert outcome.error and outcome.status == ExitStatus.SOFTWARE
    assert words in outcome.reason, outcome.reason


def test_intr_and_eintr_go_on_running():
    outcome, _, vcpu = run_loop([reason_only(c.KVM_EXIT_INTR), eintr, POWER_OFF])
    assert vcpu.entries == 3 and outcome.reason == "the guest powered off"


def test_a_failing_kvm_run_ends_the_vm():
    def efault(vcpu: ScriptedVcpu) -> int:
        raise OSError(errno.EFAULT, "Bad address")

    outcome, _, _ = run_loop([efault])
    assert outcome.error and "KVM_RUN failed on vCPU 0: Bad address" in outcome.reason


def test_a_stop_request_leaves_the_loop_without_an_outcome():
    thread: VcpuThread

    def stop_from_another_thread(vcpu: ScriptedVcpu) -> int:
        thread.request_stop()
        assert vcpu.page.run.immediate_exit == 1  # so that KVM_RUN returns at once
        return eintr(vcpu)

    vcpu = ScriptedVcpu([mmio(0x5000, 1, 1), stop_from_another_thread])
    thread = VcpuThread(vcpu, Bus("MMIO"), arm64_exits.exits(vcpu), StopLatch())
    thread._loop()
    assert thread.latch.outcome is None and vcpu.page.run.immediate_exit == 0


def test_a_stop_requested_while_an_exit_is_handled_is_not_lost():
    # The loop checks no flag per exit: the request's immediate_exit makes the next KVM_RUN return EINTR.
    class Stopper(Recorder):
        def write(self, offset, size, value):
            thread.request_stop()

    bus = Bus("MMIO")
    bus.register(0x1000, 0x10, Stopper())
    vcpu = ScriptedVcpu([mmio(0x1000, 4, 1), POWER_OFF])
    thread = VcpuThread(vcpu, bus, arm64_exits.exits(vcpu), StopLatch())
    thread._loop()
    assert thread.latch.outcome is None and vcpu.entries == 2 and len(vcpu.steps) == 1  # POWER_OFF never played


def test_a_device_error_stops_the_vm_with_an_internal_error():
    class Broken(Recorder):
        def write(self, offset, size, value):
            raise RuntimeError("device bug")

    bus = Bus("MMIO")
    bus.register(0x1000, 0x10, Broken())
    vcpu = ScriptedVcpu([mmio(0x1000, 4, 1)])
    thread = VcpuThread(vcpu, bus, arm64_exits.exits(vcpu), StopLatch())
    thread.start()
    thread.join(5)
    outcome = thread.latch.outcome
    assert thread.state == VcpuState.STOPPED and outcome.error and "RuntimeError: device bug" in outcome.reason


def test_pause_parks_the_vcpu_and_resume_and_stop_work_from_another_thread():
    previous = signal.getsignal(signal.SIGUSR1)
    install_kick_handler()
    bus, device = Bus("MMIO"), Recorder()
    bus.register(0x1000, 0x10, device)

    def forever(vcpu: ScriptedVcpu) -> int:
        vcpu.steps.append(forever)
        time.sleep(0.001)
        return mmio(0x1000, 1, 1)(vcpu)

    vcpu = ScriptedVcpu([forever])
    thread = VcpuThread(vcpu, bus, arm64_exits.exits(vcpu), StopLatch())
    try:
        thread.start()
        wait_for(lambda: len(device.writes) > 3)
        assert thread.pause() and thread.state == VcpuState.PAUSED
        parked = len(device.writes)
        time.sleep(0.05)
        assert len(device.writes) == parked
        thread.resume()
        wait_for(lambda: len(device.writes) > parked + 3)
        assert thread.state == VcpuState.RUNNING
        thread.request_stop()
        thread.join(5)
        assert not thread.is_alive() and thread.state == VcpuState.STOPPED and thread.latch.outcome is None
        assert thread.pause() is False  # nothing left to pause
    finally:
        thread.request_stop()
        thread.join(5)
        signal.signal(signal.SIGUSR1, previous)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_the_bus_cache_is_cleared_on_register_and_unregister():
    bus, first, second = Bus("MMIO"), Recorder("first"), Recorder("second")
    bus.register(0x1000, 0x10, first)
    assert bus.write(0x1004, 4, 1) and bus.write_cache
    assert bus.read(0x2000, 4) is None and bus.read(0x1008, 4) == first.value and bus.read_cache
    bus.register(0x2000, 0x10, second)  # an address that missed before is claimed now
    assert not bus.write_cache and not bus.read_cache and bus.read(0x2000, 4) == second.value
    bus.write(0x1004, 4, 2)
    bus.unregister(first)
    assert not bus.write_cache and not bus.write(0x1004, 4, 3) and bus.read(0x1004, 4) is None
    assert first.writes == [(4, 4, 1), (4, 4, 2)]
