"""HostObserver (pyvmm.idle.observe): observes the vCPU threads' CPUs over a run and keeps the process's other
threads off those CPUs meanwhile, giving them their affinity back at the end. Real threads stand in for vCPUs."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import pytest

from pyvmm.idle.observe import HostObserver

CPUS = sorted(os.sched_getaffinity(0))


@dataclass
class FakeVcpu:
    index: int
    thread_id: int | None


@pytest.fixture
def vcpu_thread():
    """A thread pinned to `cpu` that idles until the test ends (as a vCPU in a trapped WFI)."""
    done = threading.Event()
    threads = []

    def start(cpus: set[int]) -> int:
        ready, box = threading.Event(), []

        def body():
            os.sched_setaffinity(0, cpus)
            box.append(threading.get_native_id())
            ready.set()
            done.wait(10)

        t = threading.Thread(target=body)
        t.start()
        threads.append(t)
        ready.wait(5)
        return box[0]

    yield start
    done.set()
    for t in threads:
        t.join()


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two usable CPUs")
def test_other_threads_kept_off_the_vcpu_cpu_then_restored(vcpu_thread, tmp_path):
    vcpu_cpu = CPUS[-1]
    tid = vcpu_thread({vcpu_cpu})
    mine = os.sched_getaffinity(0)
    obs = HostObserver(interval_s=0.01, root=tmp_path)  # an empty tree: nothing exposed
    obs.start([FakeVcpu(0, tid)])
    try:
        assert vcpu_cpu not in os.sched_getaffinity(0)
        assert os.sched_getaffinity(tid) == {vcpu_cpu}  # the vCPU itself is left alone
        time.sleep(0.03)
        obs.stop()
    finally:
        obs.close()
    assert os.sched_getaffinity(0) == mine
    o = obs.observation
    assert o.cpus == (vcpu_cpu,) and o.pinned and o.notes == ()
    assert o.sched.runqueues[0].cpu == vcpu_cpu and o.sched.threads[0].tid == tid
    assert not o.idle.exposed and "CONFIG_CPU_IDLE" in o.idle.reason
    assert o.as_dict()["cpus"] == str(vcpu_cpu)


def test_unpinned_vcpu_is_said_so(vcpu_thread, tmp_path):
    tid = vcpu_thread(set(CPUS))
    obs = HostObserver(interval_s=0.01, root=tmp_path, keep_threads_off=False)
    obs.start([FakeVcpu(0, tid)])
    obs.close()
    assert not obs.observation.pinned and "not pinned" in obs.observation.notes[0]


def test_stop_and_close_are_idempotent_and_safe_before_start(tmp_path):
    obs = HostObserver(root=tmp_path)
    obs.stop()
    obs.close()
    assert obs.observation is None


def test_vcpu_thread_gone_before_start_is_a_note(tmp_path):
    obs = HostObserver(interval_s=0.01, root=tmp_path)
    obs.start([FakeVcpu(0, 2**22 + 12345), FakeVcpu(1, None)])  # no such thread; no thread yet
    obs.close()
    o = obs.observation
    assert o.cpus == () and not o.pinned and o.sched.threads == []
    assert o.notes == ("vCPU 0's thread ended before it could be observed",
                       "vCPU 1's thread ended before it could be observed")
