"""Console checks of a run (--expect, --fail-on, the marker of `-- CMD`) and its deadline (--timeout): a feature
configured by the TestingSpec that pyvmm.vmm.runner subscribes, whose verdict final_status weighs."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Callable

from pyvmm.errors import ExitStatus
from pyvmm.spec import TestingSpec
from pyvmm.outcome import ConsoleVerdict, VmOutcome

if TYPE_CHECKING:
    from pyvmm.vmm.vmm import Vmm

LINE_LIMIT = 4096  # longest console line kept for matching; longer lines are matched in pieces
# A match inside a line waits this long for the line's end (a prompt such as "login: " never gets one).
LINE_GRACE_S = 0.2


class ConsoleWatch:
    """Matches console lines against --expect / --fail-on on the vCPU thread that prints them, and stops the VM
    on a verdict.

    Lines are matched as they grow (a prompt has no newline yet), so each regex sees the current line only; the
    line is bounded so a guest printing without newlines costs nothing quadratic.
    """

    def __init__(self, expect: re.Pattern[str] | None, fail_on: re.Pattern[str] | None, marker: bool) -> None:
        self.expect = expect
        self.fail_on = fail_on
        self.marker = marker
        self.line = ""
        self.expect_matched = False
        self.stopped = False  # a verdict was reached: matching more lines is pointless
        self.marker_status: int | None = None
        self.failed: str | None = None  # why --fail-on matched (for final_status: the VM may have stopped first)
        self.vmm: "Vmm | None" = None
        self._pending: Callable[[str], VmOutcome] | None = None  # a verdict waiting for the end of its line
        self._grace: threading.Timer | None = None

    def __call__(self, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace").replace("\r", "")
        while text:
            head, newline, text = text.partition("\n")
            self.line += head
            if len(self.line) > LINE_LIMIT:
                self.line = self.line[-LINE_LIMIT // 2:]
            self._check(self.line, complete=bool(newline))
            if newline:
                self.line = ""

    def _check(self, line: str, complete: bool) -> None:
        if self.stopped:
            if complete and self._pending is not None:
                self._stop_pending(line)  # the matched line is whole: stop now
            return
        if self.fail_on is not None and self.fail_on.search(line):
            failed = self.failed = f"the console matched --fail-on {self.fail_on.pattern!r}"
            self._verdict(lambda whole: VmOutcome(ExitStatus.FAILED, f"{failed}: {whole.strip()[:200]}", error=True),
                          line, complete)
        elif self.expect is not None and not self.expect_matched and self.expect.search(line):
            self.expect_matched = True
            passed = f"the console matched --expect {self.expect.pattern!r}"
            self._verdict(lambda whole: VmOutcome(ExitStatus.OK, passed), line, complete)
        if complete and self.marker:
            from pyvmm.initramfs.command import EXIT_MARKER

            words = line.strip().split()
            if len(words) == 2 and words[0] == EXIT_MARKER and words[1].isdigit():
                self.marker_status = int(words[1]) & 0xFF

    def _verdict(self, outcome: Callable[[str], VmOutcome], line: str, complete: bool) -> None:
        """Stop at the end of the matched line: now if it is whole, else when it ends or after LINE_GRACE_S."""
        self.stopped = True
        self._pending = outcome
        if complete:
            self._stop_pending(line)
            return
        self._grace = threading.Timer(LINE_GRACE_S, lambda: self._stop_pending(self.line))
        self._grace.daemon = True
        self._grace.start()

    def _stop_pending(self, line: str) -> None:
        outcome, self._pending = self._pending, None
        if outcome is not None and self.vmm is not None:
            ended = outcome(line)
            if self.failed is not None:
                self.failed = ended.reason  # with the whole line, for a verdict reached after the VM stopped
            self.vmm.stop(ended)

    def end_line(self) -> None:
        """Once the VM has ended: a verdict that cut a line (a prompt) still leaves the console on a new line."""
        if self.stopped and self.line and self.vmm is not None:
            self.line = ""
            self.vmm.output(b"\n")

    def close(self) -> None:
        grace, self._grace = self._grace, None
        if grace is not None:
            grace.cancel()
        self.vmm = None


class ConsoleChecks:
    """--expect, --fail-on, --timeout and the command's status: what final_status needs to decide."""

    def __init__(self, spec: TestingSpec) -> None:
        self.spec = spec
        self.watch = ConsoleWatch(spec.expect, spec.fail_on, marker=bool(spec.command))
        self.timer: threading.Timer | None = None
        self.testdev_status: int | None = None

    def subscribe(self, vmm: "Vmm") -> None:
        self.watch.vmm = vmm
        if self.spec.expect or self.spec.fail_on or self.spec.command:
            vmm.output.listeners.append(self.watch)
        vmm.events.started.subscribe(self._started)
        vmm.events.finished.subscribe(self._finished)

    def _started(self, vmm: "Vmm") -> None:
        # Once per run, not per boot: with --on-reboot restart the deadline spans every reboot.
        if self.spec.timeout is None or self.timer is not None:
            return
        expect = self.spec.expect
        what = f"--expect {expect.pattern!r} not matched" if expect else "the VM was stopped"
        outcome = VmOutcome(ExitStatus.TIMEOUT, f"{what}: timed out after {self.spec.timeout:g} s (--timeout)",
                            error=True)
        self.timer = threading.Timer(self.spec.timeout, vmm.stop, args=(outcome,))
        self.timer.daemon = True
        self.timer.start()

    def _finished(self, outcome: VmOutcome) -> None:
        self.watch.end_line()
        vmm = self.watch.vmm
        if vmm is not None and vmm.machine is not None:
            self.testdev_status = vmm.machine.testdev.exit_status

    def verdict(self) -> ConsoleVerdict:
        command_status = self.testdev_status if self.testdev_status is not None else self.watch.marker_status
        return ConsoleVerdict(expect=self.spec.expect.pattern if self.spec.expect else None,
                              expect_matched=self.watch.expect_matched, command=bool(self.spec.command),
                              command_status=command_status, failed=self.watch.failed)

    def close(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        self.watch.close()
