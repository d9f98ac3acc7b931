"""Busy tasks for contention sweeps (pyvmm.idle.contend): pinned, bounded in time, always reaped, and bad levels or
CPUs refused in one line. The hogs are real processes, kept to a fraction of a second (a shared 2-core machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pyvmm.idle.contend import MAX_PER_CPU, ContentionError, Hogs, parse_levels, terminate_raises, wait_gone
from pyvmm.idle.hostcpus import HostCpuError, HostCpus

CPU = min(os.sched_getaffinity(0))


def test_levels_parsed_in_order():
    assert parse_levels("0,1,2") == (0, 1, 2) and parse_levels(" 2, 0 ") == (2, 0)


@pytest.mark.parametrize("text, message", [
    ("-1", "-1 is negative; levels are busy tasks per CPU, 0 to 8"),
    ("0,9", f"9 busy tasks per CPU is over the limit of {MAX_PER_CPU}"),
    ("1,x", "'x' is not a whole number"),
    ("1,1", "level 1 given twice"),
])
def test_bad_levels_are_one_line_errors(text, message):
    with pytest.raises(ContentionError) as e:
        parse_levels(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cpus_that_do_not_exist_or_are_offline_are_refused_before_anything_starts():
    host = HostCpus(present=frozenset({0, 1, 2}), online=frozenset({0, 1}))
    with pytest.raises(HostCpuError, match="CPU 5 does not exist"):
        Hogs({5}, 1, max_seconds=1, host=host)
    with pytest.raises(HostCpuError, match="CPU 2 is offline"):
        Hogs({2}, 1, max_seconds=1, host=host)
    with pytest.raises(ContentionError, match="0 to 8"):
        Hogs({0}, 9, max_seconds=1, host=host)


def test_hogs_are_pinned_busy_and_reaped():
    with Hogs({CPU}, 2, max_seconds=20) as hogs:
        pids = hogs.pids
        assert len(pids) == 2
        for pid in pids:
            assert os.sched_getaffinity(pid) == {CPU}
    assert wait_gone(pids, 0) == []  # reaped on exit, not merely killed


def test_level_zero_starts_nothing():
    with Hogs({CPU}, 0, max_seconds=1) as hogs:
        assert hogs.pids == []


def test_hogs_reaped_on_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        with Hogs({CPU}, 1, max_seconds=20) as hogs:
            pids = hogs.pids
            raise KeyboardInterrupt
    assert wait_gone(pids, 0) == []


def test_hogs_end_by_themselves_at_their_time_bound():
    hogs = Hogs({CPU}, 1, max_seconds=0.3)
    hogs.__enter__()
    try:
        assert hogs.hogs[0].process.wait(10) == 0
    finally:
        hogs.stop()


SCRIPT = """
import os, signal, sys, time
from pyvmm.idle.contend import Hogs, terminate_raises
with terminate_raises():
    with Hogs({%d}, 1, max_seconds=30) as hogs:
        print(*hogs.pids, flush=True)
        time.sleep(30)
"""


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_hogs_do_not_outlive_a_terminated_or_killed_parent(sig, status):
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT % CPU], stdout=subprocess.PIPE)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 1
        parent.send_signal(sig)
        assert parent.wait(20) == status
        # SIGTERM: reaped by the parent's `with`; SIGKILL: the orphan notices its parent is gone
        assert wait_gone(pids, 10) == [], f"hog {pids} outlived its parent ({sig.name})"
    finally:
        parent.kill()
        parent.wait()


def test_terminate_raises_restores_the_previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    with terminate_raises():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
