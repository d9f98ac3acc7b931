"""Teardown while a device worker is busy: stop wins within a bounded time, and nothing the worker may still use
(its fds, the device's fds, guest memory) is closed or unmapped under it; it is released when the worker returns."""

from __future__ import annotations

import os
import threading
import time

from pyvmm.devices.virtio.worker import DeviceWorker
from pyvmm.kvm.memory import GuestMemory, MemoryRegion, allocate


def open_fds() -> set[int]:
    return set(int(fd) for fd in os.listdir("/proc/self/fd"))


def test_a_stuck_worker_is_left_to_finish_and_releases_everything_when_it_returns():
    worker = DeviceWorker("stuck")
    kick = os.eventfd(0, os.EFD_NONBLOCK)
    device_fd = os.eventfd(0)  # stands for the disk image the callback is reading
    inside, leave = threading.Event(), threading.Event()
    writes: list[int] = []

    def callback() -> None:  # host I/O that hangs, then uses the device's fd
        inside.set()
        leave.wait(30)
        os.eventfd_write(device_fd, 1)
        writes.append(os.eventfd_read(device_fd))

    released: list[bool] = []
    worker.watch(kick, callback, eventfd=True)
    worker.start()
    os.eventfd_write(kick, 1)
    assert inside.wait(5)
    started = time.monotonic()
    assert worker.close(then=lambda: (os.close(device_fd), released.append(True)), timeout=0.2) is False
    assert time.monotonic() - started < 2  # stop does not wait for the stuck I/O
    assert not released
    os.fstat(device_fd)  # still open: no new file can get its number while the worker may write it
    leave.set()
    deadline = time.monotonic() + 5
    while not released and time.monotonic() < deadline:
        time.sleep(0.01)
    assert released == [True] and writes == [1]
    os.close(kick)


def test_an_idle_worker_closes_at_once_and_leaves_no_fds():
    before = open_fds()
    worker = DeviceWorker("idle")
    worker.start()
    released: list[bool] = []
    assert worker.close(then=lambda: released.append(True)) is True
    assert released == [True] and open_fds() == before
    assert not any(t.name == "virtio-idle" for t in threading.enumerate())


def test_guest_memory_is_not_unmapped_under_a_view_a_worker_still_holds():
    memory = GuestMemory()
    memory.add(MemoryRegion(0, 0, 1 << 20, allocate(1 << 20)))
    held = memory.view(0x1000, 16)  # e.g. a buffer a stuck preadv fills
    memory.close()  # used to raise BufferError: cannot close exported pointers exist
    held[:4] = b"late"  # the mapping is still there, and still only ours
    assert bytes(held[:4]) == b"late"
    held.release()
