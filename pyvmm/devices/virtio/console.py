"""virtio-console (virtio 1.2, 5.3), one port and no multiport: the guest's hvc0.

Output (transmitq) goes to the same sink as the UART (pyvmm's stdout and --console-log). Input given to `feed()`
from any thread is buffered (bounded) and delivered into receiveq buffers by the worker.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Callable

from pyvmm.devices.virtio.constants import ID_CONSOLE
from pyvmm.devices.virtio.device import VirtioDeviceBase
from pyvmm.devices.virtio.virtqueue import read_from, write_to

RX, TX = 0, 1
RX_LIMIT = 1 << 16
TX_LIMIT = 1 << 20  # per chain: a console line is never this long


class Console(VirtioDeviceBase):
    name = "console"
    device_id = ID_CONSOLE
    queue_sizes = (64, 64)

    def __init__(self, output: Callable[[bytes], None]) -> None:
        super().__init__()
        self.output = output
        self._input: deque[bytes] = deque()
        self._input_size = 0
        self._input_lock = threading.Lock()
        self.input_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def feed(self, data: bytes) -> None:
        """Host input for the guest (console thread)."""
        with self._input_lock:
            if self._input_size + len(data) > RX_LIMIT:
                return  # nobody is reading hvc0: drop rather than grow without bound
            self._input.append(data)
            self._input_size += len(data)
        os.eventfd_write(self.input_fd, 1)

    def watched_fds(self):
        return [(self.input_fd, self._on_input)]

    def _on_input(self) -> None:
        try:
            os.eventfd_read(self.input_fd)
        except BlockingIOError:
            pass
        self._deliver()

    def notify(self, queue: int) -> None:
        if queue == RX:
            self._deliver()
            return
        transport = self.transport
        while True:
            generation, chains = transport.take(TX, limit=32)
            if not chains:
                return
            for chain in chains:
                data = read_from(transport.memory, chain.readable, TX_LIMIT)
                if data:
                    self.output(data)
            transport.complete(TX, generation, [(chain.head, 0) for chain in chains])

    def _deliver(self) -> None:
        transport = self.transport
        if transport is None:
            return
        while True:
            with self._input_lock:
                if not self._input:
                    return
            generation, chains = transport.take(RX, limit=1)
            if not chains:
                return  # the guest will notify RX when it posts buffers
            chain = chains[0]
            with self._input_lock:
                data = b"".join(self._input)
                self._input.clear()
                self._input_size = 0
                taken = data[: chain.writable_len]
                rest = data[len(taken):]
                if rest:
                    self._input.appendleft(rest)
                    self._input_size = len(rest)
            written = write_to(transport.memory, chain.writable, taken)
            transport.complete(RX, generation, [(chain.head, written)])

    def close(self) -> None:
        if self.input_fd >= 0:
            os.close(self.input_fd)
            self.input_fd = -1
