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
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.virtqueue import Chain, read_from, write_to

RX, TX = 0, 1
RX_LIMIT = 1 << 16
TX_LIMIT = 1 << 20  # per chain: a console line is never this long


class Console(VirtioDevice):
    name = "console"
    device_id = ID_CONSOLE
    queue_sizes = (64, 64)
    batch = 32

    def __init__(self, output: Callable[[bytes], None]) -> None:
        super().__init__()
        self.output = output
        self._input: deque[bytes] = deque()
        self._input_size = 0
        self._input_lock = threading.Lock()
        self.input_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def config_space(self) -> bytes:
        return b""  # no F_SIZE, F_MULTIPORT or F_EMERG_WRITE: nothing to configure

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

    def notify(self, index: int) -> None:
        if index == RX:
            self._deliver()
        else:
            super().notify(index)

    def serve(self, index: int, chain: Chain) -> int:
        """A transmitq chain: the guest's output."""
        data = read_from(chain.readable, TX_LIMIT)
        if data:
            self.output(data)
        return 0

    def _deliver(self) -> None:
        if len(self.queues) <= RX:
            return  # not activated: the input waits in the buffer
        queue = self.queues[RX]
        while True:
            with self._input_lock:
                if not self._input:
                    return
            chain = queue.pop()
            if chain is None:
                return  # the guest will notify RX when it posts buffers
            with self._input_lock:
                data = b"".join(self._input)
                self._input.clear()
                self._input_size = 0
                taken = data[: chain.writable_len]
                rest = data[len(taken):]
                if rest:
                    self._input.appendleft(rest)
                    self._input_size = len(rest)
            queue.complete(chain, write_to(chain.writable, taken))

    def close(self) -> None:
        if self.input_fd >= 0:
            os.close(self.input_fd)
            self.input_fd = -1
