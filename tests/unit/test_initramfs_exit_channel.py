"""How `pyvmm run -- CMD` turns the guest's report into its own exit status (pyvmm.vmm.checks and
pyvmm.outcome.final_status), with a stand-in for the Vmm: the console marker, the test device, and a guest that
reports nothing."""

from __future__ import annotations

import re
from types import SimpleNamespace

from pyvmm.errors import ExitStatus
from pyvmm import spec
from pyvmm.vmm.checks import ConsoleChecks, ConsoleWatch
from pyvmm.vmm.lifecycle import Lifecycle
from pyvmm.outcome import VmOutcome, final_status

POWER_OFF = VmOutcome(ExitStatus.OK, "the guest powered off")


class FakeVmm:
    def __init__(self) -> None:
        self.stopped: list[VmOutcome] = []
        self.output = SimpleNamespace(listeners=[])
        self.events = Lifecycle()
        self.machine = SimpleNamespace(testdev=SimpleNamespace(exit_status=None))

    def stop(self, outcome: VmOutcome) -> None:
        self.stopped.append(outcome)


def command_checks(vmm: FakeVmm, expect: str | None = None) -> ConsoleChecks:
    # (TestingSpec through its module: pytest would try to collect a class named Test* imported here)
    checks = ConsoleChecks(spec.TestingSpec(expect=re.compile(expect) if expect else None, command=["true"]))
    checks.subscribe(vmm)  # type: ignore[arg-type]
    return checks


def feed_bytewise(vmm: FakeVmm, text: bytes) -> None:
    for byte in text:  # the UART hands over one byte per call
        for listener in vmm.output.listeners:
            listener(bytes([byte]))


def test_the_console_marker_gives_the_status():
    vmm = FakeVmm()
    checks = command_checks(vmm)
    feed_bytewise(vmm, b"output\r\nPYVMM-EXIT-STATUS 42\r\n")
    assert final_status(POWER_OFF, checks.verdict()).status == 42


def test_the_test_device_wins_and_a_marker_inside_a_line_is_ignored():
    vmm = FakeVmm()
    checks = command_checks(vmm)
    feed_bytewise(vmm, b"echo PYVMM-EXIT-STATUS 9 is not a marker\n")
    vmm.machine.testdev.exit_status = 7
    outcome = VmOutcome(7, "the guest exited with status 7")
    vmm.events.finished.emit(outcome)
    assert final_status(outcome, checks.verdict()).status == 7


def test_no_report_is_an_error_status():
    final = final_status(POWER_OFF, command_checks(FakeVmm()).verdict())
    assert final.status == ExitStatus.SOFTWARE and final.error
    assert "without reporting the command's exit status" in (final.note or "")


def test_reboot_timeout_and_signals_keep_their_statuses():
    verdict = command_checks(FakeVmm()).verdict()
    assert final_status(VmOutcome(ExitStatus.REBOOT, "the guest rebooted", reboot=True), verdict).status == 80
    assert final_status(VmOutcome(ExitStatus.SIGINT, "stopped by SIGINT"), verdict).status == 130
    timeout = VmOutcome(ExitStatus.TIMEOUT, "timed out", error=True)
    assert final_status(timeout, verdict).status == ExitStatus.TIMEOUT


def test_watch_matches_growing_lines_once_and_bounds_them():
    vmm = FakeVmm()
    watch = ConsoleWatch(re.compile("login: "), re.compile("BUG:"), marker=False)
    watch.vmm = vmm  # type: ignore[assignment]
    watch(b"x" * 10000)
    assert len(watch.line) <= 4096
    watch(b"\nfoo login: ")
    watch(b"more BUG: later\n")
    assert [o.status for o in vmm.stopped] == [0]  # the first verdict stands; later lines are not matched
    vmm2 = FakeVmm()
    watch2 = ConsoleWatch(None, re.compile("BUG:"), marker=False)
    watch2.vmm = vmm2  # type: ignore[assignment]
    feed = b"[ 1.0] BUG: unable to handle\n"
    for byte in feed:
        watch2(bytes([byte]))
    assert [o.status for o in vmm2.stopped] == [ExitStatus.FAILED]


class RecordingVmm(FakeVmm):
    def __init__(self) -> None:
        super().__init__()
        self.printed = bytearray()
        self.output = RecordingOutput(self.printed)


class RecordingOutput:
    def __init__(self, printed: bytearray) -> None:
        self.printed = printed
        self.listeners: list = []

    def __call__(self, data: bytes) -> None:
        self.printed += data


def test_a_match_inside_a_line_stops_at_its_end_with_the_whole_line():
    vmm = FakeVmm()
    watch = ConsoleWatch(None, re.compile("BUG:"), marker=False)
    watch.vmm = vmm  # type: ignore[assignment]
    watch(b"[ 1.0] BUG: unable")
    assert vmm.stopped == []  # not mid-line
    watch(b" to handle page fault\nnext line\n")
    (outcome,) = vmm.stopped
    assert outcome.status == ExitStatus.FAILED and outcome.reason.endswith("BUG: unable to handle page fault")
    watch.close()


def test_a_prompt_stops_after_the_grace_and_the_console_ends_on_a_new_line():
    import time

    from pyvmm.vmm.checks import LINE_GRACE_S

    vmm = RecordingVmm()
    checks = ConsoleChecks(spec.TestingSpec(expect=re.compile("login:")))
    checks.subscribe(vmm)  # type: ignore[arg-type]
    checks.watch(b"host login: ")
    time.sleep(LINE_GRACE_S + 0.3)
    assert [o.status for o in vmm.stopped] == [0]
    vmm.events.finished.emit(vmm.stopped[0])
    assert bytes(vmm.printed) == b"\n"
    checks.close()
