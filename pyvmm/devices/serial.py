"""A 16550A UART, the console of both machines (x86_64 COM1 ports, arm64 MMIO "ns16550a").

Transmission is instant: a byte written to THR goes straight to the output sink, so the transmitter is always empty
and the THRE interrupt follows every write when enabled. Input arrives through `feed()` from the console thread.

Queued writes: where KVM coalesces the guest's writes to THR (`queue_writes`, set up by the device manager), they
wait in KVM's ring instead of exiting. Every register access that does exit applies the queued ones first, in order
and with the UART's state at that point (a divisor latch write with LCR.DLAB set stays one), so the registers read
and the bytes output are those of a UART that saw every write exit. `flush()` applies them from elsewhere (the
device manager's flusher thread, the end of the VM). Output happens under `_tx_lock`, so batches drained by
different threads reach the console in ring order.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Sequence

from pyvmm.devices.placement import GuestIdentity

# Register offsets (DLAB = 0 unless noted).
RBR_THR = 0
IER = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01  # receive data available interrupt
IER_THRI = 0x02  # transmitter holding register empty interrupt
IIR_NO_INT = 0x01
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_FIFO_ENABLED = 0xC0
FCR_FIFO_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
LCR_DLAB = 0x80
MCR_LOOP = 0x10
LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40
MSR_DCD_DSR_CTS = 0xB0  # carrier, data set ready, clear to send: a cable is plugged in

RX_LIMIT = 1 << 16  # bytes buffered from the host side before input is dropped
REGISTERS = 8  # one byte each (reg-shift 0)
CLOCK_HZ = 1_843_200  # the classic PC UART input clock: divisor 1 = 115200 baud


class Serial16550:
    identity = GuestIdentity("serial", ("ns16550a",), (("clock-frequency", CLOCK_HZ),))

    def __init__(self, output: Callable[[bytes], None], set_irq: Callable[[int], None], name: str = "uart") -> None:
        self.name = name
        self._output = output
        self._set_irq = set_irq
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self._ier = 0
        self._lcr = 0x03
        self._mcr = 0x08
        self._scr = 0
        self._fcr = 0
        self._dll = 0x0C
        self._dlm = 0
        self._thre_pending = False
        self._irq_level = 0
        # (offset, size, value) of writes KVM queued, oldest first; None: every write exits (the default).
        self._queued: Callable[[], Sequence[tuple[int, int, int]]] | None = None
        self._tx_lock = threading.Lock()  # held from taking queued writes until their bytes are output
        self.queued_writes = 0  # how many writes arrived through the queue (tests, --debug)

    def queue_writes(self, take: Callable[[], Sequence[tuple[int, int, int]]]) -> None:
        """From now on some writes arrive through `take()` (KVM's coalesced ring) rather than `write()`."""
        self._queued = take

    def flush(self) -> int:
        """Apply the queued writes, in order, and output their bytes; returns how many there were."""
        if self._queued is None:
            return 0
        with self._tx_lock:
            return self._apply_queued()

    # Called with _tx_lock held.
    def _apply_queued(self) -> int:
        assert self._queued is not None
        out = bytearray()
        with self._lock:
            writes = self._queued()
            for offset, _size, value in writes:
                byte = self._write_register(offset, value & 0xFF)
                if byte is not None:
                    out.append(byte)
            self.queued_writes += len(writes)
        if out:
            self._output(bytes(out))
        return len(writes)

    # Called with the lock held.
    def _update_irq(self) -> None:
        level = int(bool((self._ier & IER_RDI and self._rx) or (self._ier & IER_THRI and self._thre_pending)))
        if level != self._irq_level:
            self._irq_level = level
            self._set_irq(level)

    def feed(self, data: bytes) -> None:
        """Bytes typed on the host side, for the guest to read."""
        with self._lock:
            room = RX_LIMIT - len(self._rx)
            self._rx.extend(data[:room])
            self._update_irq()

    def read(self, offset: int, size: int) -> int:
        if self._queued is not None:
            self.flush()  # the guest's earlier THR writes come first (LSR, IIR's THRE)
        with self._lock:
            dlab = self._lcr & LCR_DLAB
            if offset == RBR_THR:
                if dlab:
                    return self._dll
                value = self._rx.popleft() if self._rx else 0
                self._update_irq()
                return value
            if offset == IER:
                return self._dlm if dlab else self._ier
            if offset == IIR_FCR:
                fifo = IIR_FIFO_ENABLED if self._fcr & FCR_FIFO_ENABLE else 0
                if self._ier & IER_RDI and self._rx:
                    return fifo | IIR_RDI
                if self._ier & IER_THRI and self._thre_pending:
                    self._thre_pending = False  # reading IIR acknowledges THRE
                    self._update_irq()
                    return fifo | IIR_THRI
                return fifo | IIR_NO_INT
            if offset == LCR:
                return self._lcr
            if offset == MCR:
                return self._mcr
            if offset == LSR:
                return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
            if offset == MSR:
                if self._mcr & MCR_LOOP:  # loopback: modem inputs mirror the outputs
                    m = self._mcr
                    return ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                return MSR_DCD_DSR_CTS
            if offset == SCR:
                return self._scr
            return 0

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if self._queued is not None:
            with self._tx_lock:
                self._apply_queued()  # earlier THR writes first: an LCR or DLAB change must not overtake them
                with self._lock:
                    out = self._write_register(offset, value)
                if out is not None:
                    self._output(bytes((out,)))
            return
        with self._lock:
            out = self._write_register(offset, value)
        if out is not None:
            self._output(bytes((out,)))

    # Called with the lock held; returns the byte to output, if any.
    def _write_register(self, offset: int, value: int) -> int | None:
        out = None
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                self._dll = value
            elif self._mcr & MCR_LOOP:
                if len(self._rx) < RX_LIMIT:
                    self._rx.append(value)
                self._thre_pending = True
            else:
                out = value
                self._thre_pending = True
        elif offset == IER:
            if dlab:
                self._dlm = value
            else:
                enabling_thri = value & IER_THRI and not self._ier & IER_THRI
                self._ier = value & 0x0F
                if enabling_thri:
                    self._thre_pending = True  # the transmitter is always empty
        elif offset == IIR_FCR:
            self._fcr = value
            if value & FCR_CLEAR_RX:
                self._rx.clear()
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            self._mcr = value & 0x1F
        elif offset == SCR:
            self._scr = value
        self._update_irq()
        return out
