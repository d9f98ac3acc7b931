"""A 16550A UART, the console of both machines (x86_64 COM1 ports, arm64 MMIO "ns16550a").

Transmission is instant: a byte written to THR goes straight to the output sink, so the transmitter is always empty
and the THRE interrupt follows every write when enabled. Input arrives through `feed()` from the console thread.

Queued writes: where KVM coalesces the guest's writes to THR (`queue_writes`, set up by the device manager), they
wait in KVM's ring instead of exiting. Every register access that does exit applies the queued ones first, in order
and with the UART's state at that point (a divisor latch write with LCR.DLAB set stays one), so the registers read
and the bytes output are those of a UART that saw every write exit. `flush()` applies them from elsewhere (the
device manager's flusher thread, the end of the VM). Output happens under `_tx_lock`, so batches drained by
different threads reach the console in ring order.

Mirrored reads: where the device manager gives the UART a register mirror (`mirror_reads`, a read-only page on
arm64's MMIO UART), the UART keeps the mirror showing what each register reads as while reading is free of side
effects (no input waiting, THRI off, no DLAB, no loopback: the state of a Linux console printing), and hides it
otherwise; then the status read before each console byte costs no exit, and with queued THR writes a byte costs none.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Callable, Sequence

from pyvmm.devices.placement import GuestIdentity

if TYPE_CHECKING:
    from pyvmm.devices.mirror import RegisterMirror

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
        self._mirror: RegisterMirror | None = None
        self._mirrored: bytes | None = None  # the image the mirror shows; None: hidden
        self.read_exits = 0  # register reads that exited to pyvmm (tests, --debug)

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
            self._sync_mirror()
            self._update_irq()

    def read(self, offset: int, size: int) -> int:
        if self._queued is not None:
            self.flush()  # the guest's earlier THR writes come first (LSR, IIR's THRE)
        with self._lock:
            self.read_exits += 1
            value = self._peek(offset)
            if offset == RBR_THR and self._rx and not self._lcr & LCR_DLAB:
                self._rx.popleft()
                self._sync_mirror()
                self._update_irq()
            elif offset == IIR_FCR and value & 0x0F == IIR_THRI:
                self._thre_pending = False  # reading IIR acknowledges THRE
                self._update_irq()
            return value

    # Called with the lock held: what reading a register returns, without the read's side effects.
    def _peek(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                return self._dll
            return self._rx[0] if self._rx else 0
        if offset == IER:
            return self._dlm if dlab else self._ier
        if offset == IIR_FCR:
            fifo = IIR_FIFO_ENABLED if self._fcr & FCR_FIFO_ENABLE else 0
            if self._ier & IER_RDI and self._rx:
                return fifo | IIR_RDI
            if self._ier & IER_THRI and self._thre_pending:
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

    def mirror_reads(self, mirror: RegisterMirror | None) -> bool:
        """Publish the registers' values through `mirror` whenever reading them is free of side effects, so that
        such reads (above all LSR before every console byte) need no exit, and hide them whenever not. None: stop
        (the mirror is hidden first). False if KVM refused the first update: reads exit, as without a mirror."""
        with self._lock:
            if mirror is None and self._mirror is not None and self._mirrored is not None:
                self._mirror.hide()
            self._mirror, self._mirrored = mirror, None
            self._sync_mirror()
            return self._mirror is not None

    # Called with the lock held.
    def register_image(self) -> bytes | None:
        """What each register reads as, if no read changes anything and no queued write can change what they read:
        not with input waiting (RBR pops it, LSR.DR), nor THRI enabled (reading IIR acknowledges THRE, and a queued
        THR write raises it), nor DLAB (queued offset-0 writes are divisor writes), nor loopback (they are input)."""
        if self._rx or self._ier & IER_THRI or self._lcr & LCR_DLAB or self._mcr & MCR_LOOP:
            return None
        return bytes([self._peek(offset) for offset in range(REGISTERS)])

    # Called with the lock held, after every change of what register_image() depends on and before an interrupt
    # is raised for it: a vCPU taking the interrupt must not read a stale image.
    def _sync_mirror(self) -> None:
        mirror = self._mirror
        if mirror is None:
            return
        image = self.register_image()
        if image == self._mirrored:
            return
        try:
            if image is None:
                mirror.hide()
            else:
                mirror.show(image)
        except OSError as err:  # KVM could not update the slot (ENOMEM): from now on every read exits
            self._mirror = None
            _log_mirror_failure(self.name, err)
            return
        self._mirrored = image

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
        if offset != RBR_THR:  # a THR write changes no register image: with DLAB or loopback there is none
            self._sync_mirror()
        self._update_irq()
        return out


def _log_mirror_failure(name: str, err: OSError) -> None:
    import logging

    logging.getLogger(__name__).warning("%s: the register mirror failed (%s): every read exits from now on", name,
                                        err.strerror)
