"""pyvmm.testing.Machine with the bundled x86_64 guests: console, stats, stop, and nothing left behind."""

from __future__ import annotations

import os
import threading
import time

import pytest
import pyvmm_guests

from pyvmm.errors import MissingFileError, UsageError
from pyvmm.testing import ConsoleTimeout, Machine, MachineError

IDLE = pyvmm_guests.path("x86_64", "idle")


def resources() -> tuple[int, list[str]]:
    return len(os.listdir("/proc/self/fd")), sorted(t.name for t in threading.enumerate())


@pytest.fixture
def no_leaks():
    before = resources()
    yield
    assert resources() == before, "fds or threads were left behind"


def test_hello_through_the_console_and_its_status(no_leaks, tmp_path):
    with Machine(console_log=tmp_path / "log") as vm:
        match = vm.console.expect(r"Hello from the pyvmm (\w+) guest", timeout=30)
        assert match.group(1) == "x86_64"
        outcome = vm.wait(30)
    assert outcome.status == 0 and vm.status == 0
    assert (tmp_path / "log").read_bytes() == b"Hello from the pyvmm x86_64 guest\n"


def test_stats_of_a_running_two_vcpu_guest_then_stop(no_leaks):
    vm = Machine(kernel=IDLE, guest_args=[100000, 2000], cpus=2)
    with vm:
        stats = vm.stats()
        assert len(stats["vcpus"]) == 2 and "exits" in stats["vcpus"][0]
        assert vm.running
        deadline = time.monotonic() + 30
        while not vm.testdev_data and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not vm.running
    assert vm.outcome.reason == "stopped by Machine.stop()"
    assert vm.testdev_data[0] > 0  # the idle guest reports its timer frequency first


def test_an_exception_in_the_body_leaves_nothing_running(no_leaks):
    with pytest.raises(RuntimeError, match="boom"):
        with Machine(kernel=IDLE, guest_args=[100000, 2000], cpus=2) as vm:
            raise RuntimeError("boom")
    assert not vm.running


def test_a_failed_expect_is_an_assertion_with_the_console_tail(no_leaks):
    with Machine(kernel=IDLE, guest_args=[100000, 2000]) as vm:
        with pytest.raises(ConsoleTimeout, match="did not match 'never': 0.2 s passed"):
            vm.console.expect("never", timeout=0.2)
    with Machine() as vm:
        vm.wait(30)
        with pytest.raises(ConsoleTimeout, match=r"the VM ended \(the guest exited with status 0\)"):
            vm.console.expect("never", timeout=30)


def test_run_options_reach_the_features(no_leaks):
    with Machine(kernel=IDLE, guest_args=[100000, 2000], options={"test_timeout": 0.3}) as vm:
        assert vm.wait(30).status == 124
    assert vm.status == 124


def test_bad_configuration_fails_at_start_without_leaks(no_leaks):
    with pytest.raises(MissingFileError, match="does not exist"):
        Machine(kernel="/no/such/kernel").start()
    with pytest.raises(UsageError, match="unknown pyvmm run option"):
        Machine(options={"no_such_option": 1}).start()
    with pytest.raises(UsageError, match="--expect '\\(': not a valid regular expression"):
        Machine(options={"test_expect": "("}).start()
    vm = Machine()
    with pytest.raises(MachineError, match="wait\\(\\) before start\\(\\)"):
        vm.wait(1)


def test_a_machine_starts_once(no_leaks):
    with Machine() as vm:
        with pytest.raises(MachineError, match="already started"):
            vm.start()
