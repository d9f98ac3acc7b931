"""Register-level interleavings (hypothesis): a driver that writes any register at any time, in any order, with
chains in flight on the device side, never makes the transport raise, log an internal error or touch memory
outside RAM, and a driver reset always brings the device back.

Before the bounds, such sequences found: QueueReady = 0 then QueueNum = 0 with a chain in flight ->
ZeroDivisionError; DRIVER_OK without FEATURES_OK then a notify -> AttributeError (9 in 20,000 sequences).
"""

from __future__ import annotations

import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.devices.virtio import constants as v
from pyvmm.devices.virtio.virtqueue import Chain
from tests.unit.test_virtio_queue import DATA, EchoDevice, make


class HoldingDevice(EchoDevice):
    """Takes chains on notify and completes them only when told: requests in flight across register writes."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[object, Chain]] = []

    def notify(self, index: int) -> None:
        if index < len(self.queues):
            queue = self.queues[index]
            self.held += [(queue, chain) for chain in queue.drain(4)]

    def complete_some(self, count: int) -> None:
        done, self.held = self.held[:count], self.held[count:]
        for queue, chain in done:
            queue.complete(chain, self.serve(queue.index, chain))


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


REGISTERS = [v.MMIO_QUEUE_SEL, v.MMIO_QUEUE_NUM, v.MMIO_QUEUE_READY, v.MMIO_QUEUE_NOTIFY, v.MMIO_STATUS,
             v.MMIO_DRIVER_FEATURES, v.MMIO_DRIVER_FEATURES_SEL, v.MMIO_DEVICE_FEATURES_SEL, v.MMIO_INTERRUPT_ACK,
             v.MMIO_QUEUE_DESC_LOW, v.MMIO_QUEUE_DESC_HIGH, v.MMIO_QUEUE_DRIVER_LOW, v.MMIO_QUEUE_DEVICE_LOW,
             v.MMIO_CONFIG]
S = v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER
# What a driver can do, as a small alphabet so that the sequences that matter (disable, resize, then a completion
# of a chain taken before) come up often: queue registers, status values in and out of order, its own set-up,
# chains made available, and the device side's turns.
ACTIONS = [
    ("write", v.MMIO_QUEUE_READY, 0), ("write", v.MMIO_QUEUE_READY, 1), ("write", v.MMIO_QUEUE_NUM, 0),
    ("write", v.MMIO_QUEUE_NUM, 2), ("write", v.MMIO_QUEUE_NUM, 16), ("write", v.MMIO_QUEUE_SEL, 1),
    ("write", v.MMIO_QUEUE_SEL, 0), ("write", v.MMIO_STATUS, 0), ("write", v.MMIO_STATUS, S | v.STATUS_DRIVER_OK),
    ("write", v.MMIO_STATUS, S | v.STATUS_FEATURES_OK | v.STATUS_DRIVER_OK), ("write", v.MMIO_INTERRUPT_ACK, 3),
    ("start", 0, 0), ("add", 1, 0), ("add", 3, 0), ("notify", 0, 0), ("complete", 1, 0), ("complete", 8, 0),
]
RAW = st.tuples(st.just("write"), st.sampled_from(REGISTERS), st.integers(0, 0xFFFF_FFFF))
# Every sequence starts from a running device with two chains in flight: the state where the bugs were.
IN_FLIGHT = [("start", 0, 0), ("add", 1, 0), ("add", 2, 0), ("notify", 0, 0)]


def play(ops: list[tuple[str, int, int]]) -> None:
    device = HoldingDevice()
    t, d, mem, irq, _ = make(device)
    errors = ErrorLog()
    logger = logging.getLogger("pyvmm.devices.virtio")
    logger.addHandler(errors)
    try:
        for op, a, b in IN_FLIGHT + ops:
            if op == "write":
                t.write(a, 4, b)
            elif op == "start":
                d.start()
            elif op == "add" and d.rings:
                d.add(0, [(DATA + 0x100 * i, 4) for i in range(a - 1)], [(DATA + 0x800, 4)])
            elif op == "notify":
                t.notify(a)
            elif op == "complete":
                device.complete_some(a)
            t.read(v.MMIO_STATUS, 4)
            assert t.broken is None or "internal error" not in t.broken, t.broken
        assert all(mem.inside(gpa, length) for gpa, length in mem.accesses)
        # Whatever happened, a reset and a proper set-up bring the device back.
        device.complete_some(len(device.held))
        assert d.start()
        assert not t.read(v.MMIO_STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET
        mem.write(DATA + 0x1000, b"abcd")
        head = d.add(0, [(DATA + 0x1000, 4)], [(DATA + 0x1800, 4)])
        t.notify(0)
        device.complete_some(len(device.held))
        assert (head, 4) in d.used(0) and mem.read(DATA + 0x1800, 4) == b"dcba"
        assert not errors.records, [r.getMessage() for r in errors.records]
    finally:
        logger.removeHandler(errors)
        device.complete_some(len(device.held))
        t.close()


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.sampled_from(ACTIONS), min_size=3, max_size=40))
def test_any_driver_interleaving_with_chains_in_flight_is_survived(ops):
    play(ops)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(st.sampled_from(ACTIONS), RAW), max_size=30))
def test_any_register_value_at_any_time_is_survived(ops):
    play(ops)
