"""One event loop thread per virtio device: queue notifications (ioeventfd), interrupt resamples (a level line's
resamplefd, x86_64) and the device's own file descriptors (a TAP) in, completions and interrupts (irqfd) out. No vCPU
thread ever waits on device I/O.

Callbacks run on the worker thread only; `watch`/`unwatch` may be called from callbacks (the selector is not
shared with other threads). `close()` may be called from any thread.

The loop is epoll and a dict of callbacks, not `selectors`: every request wakes it at least once (the kick; on
x86_64 the level interrupt's resample too), and `selectors.select` builds a key object list in Python on each
wake-up.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable

log = logging.getLogger(__name__)

# How long teardown waits for a device's worker: one notification's work is bounded (a ring's worth of chains),
# so only host I/O that hangs (a dead NFS server) takes longer, and then stop must not wait for it.
STOP_TIMEOUT = 2.0


class DeviceWorker:
    def __init__(self, name: str) -> None:
        self.name = name
        self._epoll = select.epoll()
        self._stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._stop_fd, select.EPOLLIN)
        self._handlers: dict[int, Callable[[], None] | None] = {self._stop_fd: None}  # None: the stop fd
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._exit_lock = threading.Lock()
        self._exited = False
        self._late_release: Callable[[], None] | None = None

    def watch(self, fd: int, callback: Callable[[], None], eventfd: bool = False) -> None:
        """Call `callback` when `fd` is readable. With `eventfd`, `fd` is an eventfd that only signals (a queue kick,
        a resample): it is watched edge-triggered and never read. Every write to an eventfd is a new edge, read or
        not (each one wakes its waiters), so `callback` runs once after any number of writes since its last call,
        without a read syscall per wake-up; the counter, which only grows, would saturate after 2**64 - 2 writes."""
        if fd in self._handlers:
            raise KeyError(f"fd {fd} is already watched")
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLET if eventfd else select.EPOLLIN)
        self._handlers[fd] = callback

    def unwatch(self, fd: int) -> None:
        if self._handlers.get(fd) is not None:
            del self._handlers[fd]
            self._epoll.unregister(fd)

    def watching(self, fd: int) -> bool:
        return self._handlers.get(fd) is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"virtio-{self.name}", daemon=True)
        self._thread.start()

    def turn(self, timeout: float | None = None) -> bool:
        """One pass of the loop: wait up to `timeout` (None: for ever), run the ready callbacks; False when the
        worker was told to stop. The thread's whole loop; benchmarks/blk_requests.py turns it by hand."""
        handlers = self._handlers
        for fd, _ in self._epoll.poll(-1 if timeout is None else timeout):
            handler = handlers.get(fd, _nothing)  # _nothing: an fd an earlier callback of this pass unwatched
            if handler is None:
                return False
            try:
                handler()
            except Exception:  # callbacks guard guest errors themselves; this is the last line against bugs
                log.exception("virtio worker %s: callback failed", self.name)
        return True

    def _loop(self) -> None:
        try:
            while not self._stopping and self.turn():
                pass
        finally:
            with self._exit_lock:
                self._exited = True
                release = self._late_release
            if release is not None:
                self._release(release)

    def close(self, then: Callable[[], None] | None = None, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the thread, then close the worker's fds and call `then` (which releases what the callbacks use:
        the device's fds). True when done; False when the thread is still inside a callback after `timeout`:
        everything it may use then stays open, and the thread releases it when its callback returns, so no fd
        number is reused under it and no memory it writes goes away (see GuestMemory.close)."""
        self._stopping = True
        os.eventfd_write(self._stop_fd, 1)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._exit_lock:
            if thread is not None and not self._exited:
                self._late_release = then or _nothing
                if thread is not threading.current_thread():
                    log.warning("virtio worker %s is still busy after %.0f s: it is left to finish on its own",
                                self.name, timeout)
                return False
        self._thread = None
        self._release(then or _nothing)
        return True

    def _release(self, then: Callable[[], None]) -> None:
        self._epoll.close()
        os.close(self._stop_fd)
        then()


def _nothing() -> None:
    pass
