"""pyvmm.idle.threads: /proc parsing, real per-thread CPU time, pinning."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pyvmm.idle.threads import (
    ThreadStatError, get_affinity, parse_schedstat, parse_task_stat, set_affinity, thread_times, usage,
)

TICK = os.sysconf("SC_CLK_TCK")


def _stat_line(comm: str, utime: int, stime: int, cpu: int) -> str:
    fields = ["S"] + ["0"] * 49
    fields[14 - 3], fields[15 - 3], fields[39 - 3] = str(utime), str(stime), str(cpu)
    return f"1234 ({comm}) " + " ".join(fields) + "\n"


def test_parse_task_stat_with_tricky_comm():
    state, ut, st, cpu = parse_task_stat(_stat_line("vcpu 0) (x", 2 * TICK, TICK, 3))
    assert (state, ut, st, cpu) == ("S", 2.0, 1.0, 3)
    with pytest.raises(ThreadStatError, match="fields"):
        parse_task_stat("1 (x) S 1 2 3")


def test_parse_schedstat():
    assert parse_schedstat("123 456 7\n") == (123, 456, 7)
    with pytest.raises(ThreadStatError):
        parse_schedstat("1 2")


def _spinner(tid: list[int], go: threading.Event, stop: threading.Event):
    tid.append(threading.get_native_id())
    go.wait(5)
    while not stop.is_set():
        pass


def test_thread_times_of_a_busy_thread():
    tid, go, stop = [], threading.Event(), threading.Event()
    t = threading.Thread(target=_spinner, args=(tid, go, stop))
    t.start()
    try:
        while not tid:
            time.sleep(0.001)
        a = thread_times(tid[0])
        go.set()
        # Read until the spinner has used 50 ms of CPU (a busy host may give it little of each second), so the
        # check is that its CPU time is read, not how fast the host is.
        deadline = time.monotonic() + 30
        while True:
            time.sleep(0.05)
            b = thread_times(tid[0])  # still spinning: it stops only when told
            if b.cpu_s - a.cpu_s >= 0.05 or time.monotonic() > deadline:
                break
    finally:
        go.set()
        stop.set()
        t.join()
    u = usage(a, b)
    assert u.tid == tid[0] and u.interval_s >= 0.05
    assert u.cpu_s >= 0.05 and u.cpu_fraction > 0  # it spun
    assert 0 <= b.last_cpu < os.cpu_count()
    assert a.state in "RS"
    with pytest.raises(ValueError, match="positive"):
        usage(b, b)


def test_thread_times_of_missing_thread():
    with pytest.raises(ThreadStatError, match="thread 999999999"):
        thread_times(999_999_999)


def test_set_and_get_affinity():
    tid, go = [], threading.Event()
    t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), go.wait(5)))
    t.start()
    while not tid:
        time.sleep(0.001)
    try:
        cpu = max(os.sched_getaffinity(0))
        assert set_affinity(tid[0], [cpu]) == {cpu}
        assert get_affinity(tid[0]) == {cpu}
        assert get_affinity(threading.get_native_id()) == os.sched_getaffinity(0)  # others untouched
    finally:
        go.set()
        t.join()
