"""A long-lived process (the Machine API, a pytest session) runs a few hundred VMs through each way a VM ends:
afterwards nothing of them remains: no fd, thread, memory mapping, atexit entry or socket file, and RSS is back
near where it was."""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
from pathlib import Path
from typing import Callable

import pytest

from pyvmm.api.client import Client
from pyvmm.errors import ExitStatus, HostResourceError
from pyvmm.testing import Machine
from tests.hostile_guest import LOOP, WRITE

ROUNDS = 50  # per end path: 250 VMs in all, about 15 s
IDLE_FOREVER = {"kernel": "idle", "guest_args": [100000, 2000]}  # 200 s of timer wake-ups if left alone


def resources() -> dict[str, int]:
    with open("/proc/self/maps") as maps:
        mappings = sum(1 for _ in maps)
    with open("/proc/self/statm") as statm:
        rss_mib = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
    return {"fds": len(os.listdir("/proc/self/fd")), "threads": threading.active_count(), "maps": mappings,
            "atexit": atexit._ncallbacks(), "rss_mib": rss_mib}


def exits_by_itself_with_a_client_still_connected(tmp: Path, i: int) -> None:
    socket = str(tmp / f"exit-{i}.sock")
    vm = Machine(options={"api_socket": socket, "halt_poll_ns": "0"}).start()
    try:
        client = Client(socket, timeout=5)  # idle: it outlives the VM, and must not keep anything of it alive
    except Exception:  # the guest may already have ended
        client = None
    assert vm.wait(30).status == ExitStatus.OK
    vm.stop()
    if client is not None:
        client.close()


def stopped(tmp: Path, i: int) -> None:
    with Machine(**IDLE_FOREVER, options={"api_socket": str(tmp / f"stop-{i}.sock")}) as vm:
        assert vm.running
    assert vm.outcome is not None and vm.outcome.reason == "stopped by Machine.stop()"


def timed_out(tmp: Path, i: int) -> None:
    with Machine(**IDLE_FOREVER, options={"test_timeout": 0.05}) as vm:
        assert vm.wait(30).status == ExitStatus.TIMEOUT


def fails_after_the_socket_listens(tmp: Path, i: int) -> None:
    # The disk is opened (and found locked) after the control socket is listening.
    with pytest.raises(HostResourceError, match="in use by another process"):
        Machine(options={"api_socket": str(tmp / f"fail-{i}.sock"), "halt_poll_ns": "0",
                         "disks": [str(tmp / "locked.img")]}).start()


def serves_a_disk(tmp: Path, i: int) -> None:
    mask = 1 << WRITE | 1 << LOOP  # a legitimate write, then a broken chain and a reset: the worker at work
    with Machine(kernel="hostile", memory="64M", guest_args=[mask, 64], options={"disks": [str(tmp / "disk.img")]}
                 ) as vm:
        assert vm.wait(30).status == 0


END_PATHS: list[Callable[[Path, int], None]] = [
    exits_by_itself_with_a_client_still_connected, stopped, timed_out, fails_after_the_socket_listens, serves_a_disk]


def test_hundreds_of_vms_through_every_end_path_leave_nothing_behind(tmp_path):
    (tmp_path / "disk.img").write_bytes(bytes(1 << 20))
    locked = tmp_path / "locked.img"
    locked.write_bytes(bytes(1 << 20))
    with open(locked, "r+b") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as another pyvmm would
        for end in END_PATHS:  # the first of each imports and caches what it needs
            end(tmp_path, -1)
        before = resources()
        for i in range(ROUNDS):
            for end in END_PATHS:
                end(tmp_path, i)
        after = resources()
    assert {k: after[k] for k in ("fds", "threads", "atexit")} == {k: before[k] for k in ("fds", "threads", "atexit")}
    assert after["maps"] <= before["maps"] + 8, (before, after)  # allocator arenas may come and go, VMs may not
    assert after["rss_mib"] <= before["rss_mib"] + 24, (before, after)
    assert not list(tmp_path.glob("*.sock")), "socket files were left behind"
