"""The testing features of a run: console checks (--expect, --fail-on), a deadline (--timeout), and `-- CMD`
(an initramfs built around a command, whose exit status becomes the run's; the exit channel is described in
pyvmm/initramfs/command.py and the README). Configured by a TestingSpec; pyvmm.vmm.runner subscribes them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pyvmm.errors import ExitStatus
from pyvmm.spec import TestingSpec, VmSpec
from pyvmm.vmm.outcome import ConsoleVerdict, VmOutcome

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm
    from pyvmm.vmm.vmm import Vmm

LINE_LIMIT = 4096  # longest console line kept for matching; longer lines are matched in pieces


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
        self.vmm: "Vmm | None" = None

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
            return
        if self.fail_on is not None and self.fail_on.search(line):
            self.stopped = True
            self._stop(VmOutcome(ExitStatus.FAILED, f"the console matched --fail-on {self.fail_on.pattern!r}: "
                                                    f"{line.strip()[:200]}", error=True))
        elif self.expect is not None and not self.expect_matched and self.expect.search(line):
            self.expect_matched = self.stopped = True
            self._stop(VmOutcome(ExitStatus.OK, f"the console matched --expect {self.expect.pattern!r}"))
        if complete and self.marker:
            from pyvmm.initramfs.command import EXIT_MARKER

            words = line.strip().split()
            if len(words) == 2 and words[0] == EXIT_MARKER and words[1].isdigit():
                self.marker_status = int(words[1]) & 0xFF

    def _stop(self, outcome: VmOutcome) -> None:
        if self.vmm is not None:
            self.vmm.stop(outcome)


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
        vmm = self.watch.vmm
        if vmm is not None and vmm.machine is not None:
            self.testdev_status = vmm.machine.testdev.exit_status

    def verdict(self) -> ConsoleVerdict:
        command_status = self.testdev_status if self.testdev_status is not None else self.watch.marker_status
        return ConsoleVerdict(expect=self.spec.expect.pattern if self.spec.expect else None,
                              expect_matched=self.watch.expect_matched, command=bool(self.spec.command),
                              command_status=command_status)

    def close(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
            timer.join()
        self.watch.vmm = None


class CommandInitramfs:
    """`-- CMD`: writes the initramfs to a temporary file the machine boots, removed as soon as it has been read."""

    def __init__(self, spec: VmSpec) -> None:
        from pyvmm.initramfs import command as cmd

        testing = spec.testing
        request = cmd.CommandSpec(command=list(testing.command), busybox=testing.busybox or cmd.find_busybox(spec.arch),
                                  adds=[cmd.parse_add(a) for a in testing.adds], exit_mmio=cmd.exit_mmio_for(spec.arch))
        data = cmd.build(request, spec.arch).to_gzip(level=1)  # speed over size: it is read once from the page cache
        fd, name = tempfile.mkstemp(prefix="pyvmm-initramfs-", suffix=".cpio.gz")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        self.path: Path | None = Path(name)

    def boot_spec(self, spec: VmSpec) -> VmSpec:
        """The spec the machine is built from: this initramfs, and a command line made for running one command."""
        words = spec.cmdline.split()
        if not any(w.startswith("panic=") for w in words):
            words.append("panic=-1")  # a panic ends the VM (status 80) instead of hanging it
        if not any(w in ("quiet", "debug") or w.startswith("loglevel=") for w in words):
            words.append("quiet")  # the command's output, not the boot log, is what the user asked for
        return dataclasses.replace(spec, initrd=self.path, cmdline=" ".join(words))

    def subscribe(self, vmm: "Vmm") -> None:
        # The machine has read the initramfs by the time vCPUs are created: remove the temporary file early.
        vmm.events.before_vcpus.subscribe(self._remove)

    def _remove(self, vm: "Vm | None" = None) -> None:
        path, self.path = self.path, None
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._remove()
