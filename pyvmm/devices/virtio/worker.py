"""One event loop thread per virtio device: queue notifications (ioeventfd), interrupt resamples and the device's
own file descriptors (a TAP) in, completions and interrupts (irqfd) out. No vCPU thread ever waits on device I/O.

Callbacks run on the worker thread only; `watch`/`unwatch` may be called from callbacks (the selector is not
shared with other threads). `stop()` may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from typing import Callable

log = logging.getLogger(__name__)


class DeviceWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._stop_fd, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = False

    def watch(self, fd: int, callback: Callable[[], None], drain_eventfd: bool = False) -> None:
        """Call `callback` when `fd` is readable; with drain_eventfd, the eventfd counter is read first."""
        if drain_eventfd:
            def handler(fd: int = fd, callback: Callable[[], None] = callback) -> None:
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    return
                callback()
        else:
            handler = callback
        self._selector.register(fd, selectors.EVENT_READ, handler)

    def unwatch(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except KeyError:
            pass

    def watching(self, fd: int) -> bool:
        try:
            self._selector.get_key(fd)
        except KeyError:
            return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"virtio-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                if key.data is None:
                    return
                try:
                    key.data()
                except Exception:  # callbacks guard guest errors themselves; this is the last line against bugs
                    log.exception("virtio worker %s: callback failed", self.name)

    def stop(self) -> None:
        self._stopping = True
        os.eventfd_write(self._stop_fd, 1)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self._thread = None

    def close(self) -> None:
        self.stop()
        self._selector.close()
        os.close(self._stop_fd)
