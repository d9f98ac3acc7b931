"""How `pyvmm run -- CMD` turns the guest's report into its own exit status (pyvmm/cli/run_testing.py), with a
stand-in for the Vmm: the console marker, the test device, and a guest that reports nothing."""

from __future__ import annotations

import re
from types import SimpleNamespace

from pyvmm.cli import run_testing
from pyvmm.cli.run_testing import EXIT_FAIL_ON, EXIT_NO_STATUS, ConsoleWatch
from pyvmm.errors import EXIT_TIMEOUT
from pyvmm.vmm.outcome import VmOutcome

POWER_OFF = VmOutcome(0, "the guest powered off")


class FakeVmm:
    def __init__(self) -> None:
        self.stopped: list[VmOutcome] = []
        self.output = SimpleNamespace(listeners=[])
        self.before_vcpus: list = []
        self.on_started: list = []
        self.on_finished: list = []
        self.machine = SimpleNamespace(testdev=SimpleNamespace(exit_status=None))

    def stop(self, outcome: VmOutcome) -> None:
        self.stopped.append(outcome)


def command_area(vmm: FakeVmm, expect: str | None = None) -> run_testing.TestingArea:
    # (imported through the module: pytest would try to collect a class named Test* imported here)
    area = run_testing.TestingArea(None, re.compile(expect) if expect else None, None, command_mode=True)
    area.attach(vmm)
    return area


def feed_bytewise(vmm: FakeVmm, text: bytes) -> None:
    for byte in text:  # the UART hands over one byte per call
        for listener in vmm.output.listeners:
            listener(bytes([byte]))


def test_the_console_marker_gives_the_status():
    vmm = FakeVmm()
    area = command_area(vmm)
    feed_bytewise(vmm, b"output\r\nPYVMM-EXIT-STATUS 42\r\n")
    assert area.finish(vmm, POWER_OFF, 0) == 42


def test_the_test_device_wins_and_a_marker_inside_a_line_is_ignored():
    vmm = FakeVmm()
    area = command_area(vmm)
    feed_bytewise(vmm, b"echo PYVMM-EXIT-STATUS 9 is not a marker\n")
    vmm.machine.testdev.exit_status = 7
    for hook in vmm.on_finished:
        hook(vmm, VmOutcome(7, "the guest exited with status 7"))
    assert area.finish(vmm, VmOutcome(7, "the guest exited with status 7"), 7) == 7


def test_no_report_is_an_error_status(capsys):
    vmm = FakeVmm()
    area = command_area(vmm)
    assert area.finish(vmm, POWER_OFF, 0) == EXIT_NO_STATUS
    assert "without reporting the command's exit status" in capsys.readouterr().err


def test_reboot_timeout_and_signals_keep_their_statuses():
    vmm = FakeVmm()
    area = command_area(vmm)
    assert area.finish(vmm, VmOutcome(80, "the guest rebooted", reboot=True), 80) == 80
    assert area.finish(vmm, VmOutcome(130, "stopped by SIGINT"), 130) == 130
    assert area.finish(vmm, VmOutcome(EXIT_TIMEOUT, "timed out", error=True), EXIT_TIMEOUT) == EXIT_TIMEOUT


def test_watch_matches_growing_lines_once_and_bounds_them():
    vmm = FakeVmm()
    watch = ConsoleWatch(re.compile("login: "), re.compile("BUG:"), marker=False)
    watch.vmm = vmm
    watch(b"x" * 10000)
    assert len(watch.line) <= 4096
    watch(b"\nfoo login: ")
    watch(b"more BUG: later\n")
    assert [o.status for o in vmm.stopped] == [0]  # the first verdict stands; later lines are not matched
    vmm2 = FakeVmm()
    watch2 = ConsoleWatch(None, re.compile("BUG:"), marker=False)
    watch2.vmm = vmm2
    feed = b"[ 1.0] BUG: unable to handle\n"
    for byte in feed:
        watch2(bytes([byte]))
    assert [o.status for o in vmm2.stopped] == [EXIT_FAIL_ON]
