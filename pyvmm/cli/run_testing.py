"""`pyvmm run` options of the testing area (see pyvmm/cli/areas.py): --timeout, --expect, --fail-on, and the
trailing `-- CMD ARGS...` form that boots a Linux kernel with an initramfs built on the fly and exits with the
command's status (the exit channel is described in pyvmm/initramfs/command.py and the README).

Module-level imports stay light: `pyvmm run` imports every area before the guest starts.
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from pathlib import Path
from typing import Any

import click

from pyvmm.cli.areas import NoHooks
from pyvmm.config import VmConfig
from pyvmm.errors import EXIT_TIMEOUT, UsageError

EXIT_FAIL_ON = 1  # --fail-on matched, or the guest ended before --expect matched
EXIT_NO_STATUS = 70  # -- CMD: the guest ended without reporting the command's status (EX_SOFTWARE)
LINE_LIMIT = 4096  # longest console line kept for matching; longer lines are matched in pieces


def _regex(ctx: click.Context, param: click.Parameter, value: str | None) -> re.Pattern | None:
    if value is None:
        return None
    try:
        return re.compile(value)
    except re.error as err:
        raise click.BadParameter(f"not a valid regular expression: {err}") from None


OPTIONS: list = [
    click.option("--timeout", "test_timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                 help="Stop the VM after SECONDS and exit with 124 (as timeout(1)). With --expect: the time the "
                      "console has to match."),
    click.option("--expect", "test_expect", callback=_regex, metavar="REGEX",
                 help="Stop the VM and exit 0 as soon as a console line matches REGEX (Python syntax). Fails (1) if "
                      "the guest ends first, 124 on --timeout."),
    click.option("--fail-on", "test_fail_on", callback=_regex, metavar="REGEX",
                 help="Stop the VM and exit 1 as soon as a console line matches REGEX (e.g. 'Kernel panic|BUG:')."),
    click.option("--add", "test_adds", multiple=True, metavar="HOST:GUEST",
                 help="With -- CMD: copy a host file or directory into the generated initramfs (repeatable)."),
    click.option("--busybox", "test_busybox", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
                 help="With -- CMD: the static busybox for the guest (default: the host's, when it is a static "
                      "binary of the guest's architecture, e.g. busybox-static on an arm64 host)."),
    click.argument("test_command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD ARGS...]"),
]


class ConsoleWatch:
    """Matches console lines against --expect / --fail-on on the vCPU thread that prints them.

    Lines are matched as they grow (a prompt has no newline yet), so each regex sees the current line only; the
    line is bounded so a guest printing without newlines costs nothing quadratic.
    """

    def __init__(self, expect: re.Pattern | None, fail_on: re.Pattern | None, marker: bool) -> None:
        self.expect = expect
        self.fail_on = fail_on
        self.marker = marker
        self.line = ""
        self.expect_matched = False
        self.stopped = False  # a verdict was reached: matching more lines is pointless
        self.marker_status: int | None = None
        self.vmm: Any = None

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
        from pyvmm.vmm.outcome import VmOutcome

        if self.stopped:
            return
        if self.fail_on is not None and self.fail_on.search(line):
            self.stopped = True
            self.vmm.stop(VmOutcome(EXIT_FAIL_ON, f"the console matched --fail-on {self.fail_on.pattern!r}: "
                                                  f"{line.strip()[:200]}", error=True))
        elif self.expect is not None and not self.expect_matched and self.expect.search(line):
            self.expect_matched = self.stopped = True
            self.vmm.stop(VmOutcome(0, f"the console matched --expect {self.expect.pattern!r}"))
        if complete and self.marker:
            from pyvmm.initramfs.command import EXIT_MARKER

            words = line.strip().split()
            if len(words) == 2 and words[0] == EXIT_MARKER and words[1].isdigit():
                self.marker_status = int(words[1]) & 0xFF


class TestingArea:
    def __init__(self, timeout: float | None, expect: re.Pattern | None, fail_on: re.Pattern | None,
                 command_mode: bool) -> None:
        self.timeout = timeout
        self.expect = expect
        self.command_mode = command_mode
        self.watch = ConsoleWatch(expect, fail_on, marker=command_mode)
        self.timer: threading.Timer | None = None
        self.testdev_status: int | None = None
        self.initrd_path: Path | None = None

    def attach(self, vmm: Any) -> None:
        self.watch.vmm = vmm
        if self.watch.expect or self.watch.fail_on or self.command_mode:
            vmm.output.listeners.append(self.watch)
        if self.initrd_path is not None:
            # The machine has read the initramfs by the time vCPUs are created: remove the temporary file early.
            vmm.before_vcpus.append(lambda vm: self._remove_initrd())
        vmm.on_started.append(self._started)
        vmm.on_finished.append(self._finished)

    def _started(self, vmm: Any) -> None:
        # Once per `pyvmm run`, not per boot: with --on-reboot restart the deadline spans every reboot.
        if self.timeout is None or self.timer is not None:
            return
        from pyvmm.vmm.outcome import VmOutcome

        what = f"--expect {self.expect.pattern!r} not matched" if self.expect else "the VM was stopped"
        outcome = VmOutcome(EXIT_TIMEOUT, f"{what}: timed out after {self.timeout:g} s (--timeout)", error=True)
        self.timer = threading.Timer(self.timeout, vmm.stop, args=(outcome,))
        self.timer.daemon = True
        self.timer.start()

    def _finished(self, vmm: Any, outcome: Any) -> None:
        if vmm.machine is not None:
            self.testdev_status = vmm.machine.testdev.exit_status

    def _remove_initrd(self) -> None:
        if self.initrd_path is not None:
            try:
                self.initrd_path.unlink()
            except FileNotFoundError:
                pass

    def finish(self, vmm: Any, outcome: Any, status: int) -> int:
        if self.timer is not None:
            self.timer.cancel()
        self._remove_initrd()
        if status == EXIT_TIMEOUT and outcome.error:
            return status
        if self.expect is not None and not self.watch.expect_matched and status == 0:
            click.echo(f"pyvmm: the guest ended before the console matched --expect {self.expect.pattern!r} "
                       f"({outcome.reason})", err=True)
            return EXIT_FAIL_ON
        if self.command_mode and not self.watch.expect_matched and not outcome.error and not outcome.reboot:
            if self.testdev_status is not None:
                return self.testdev_status
            if self.watch.marker_status is not None:
                return self.watch.marker_status
            if status != 0:
                return status  # stopped from outside (SIGINT 130, SIGTERM 143): keep what says so
            click.echo(f"pyvmm: error: the guest ended without reporting the command's exit status "
                       f"({outcome.reason})", err=True)
            return EXIT_NO_STATUS
        return status


def _command_initrd(config: VmConfig, command: list[str], adds: tuple[str, ...], busybox: Path | None) -> Path:
    import tempfile

    from pyvmm.arch import host_arch
    from pyvmm.initramfs import command as cmd

    if config.kernel is None:
        raise UsageError("-- CMD needs a Linux kernel: give --kernel Image")
    if config.initrd is not None:
        raise UsageError("--initrd cannot be combined with -- CMD: pyvmm builds the initramfs (use --add for files)")
    arch = config.arch or host_arch()
    if arch != "arm64":
        raise UsageError(f"-- CMD boots Linux, which pyvmm supports on arm64 only (this is {arch})")
    spec = cmd.CommandSpec(command=list(command), busybox=busybox or cmd.find_busybox(arch),
                           adds=[cmd.parse_add(a) for a in adds], exit_mmio=cmd.exit_mmio_for(arch))
    data = cmd.build(spec, arch).to_gzip(level=1)  # speed over size: it is read once from the page cache
    fd, name = tempfile.mkstemp(prefix="pyvmm-initramfs-", suffix=".cpio.gz")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path = Path(name)
    atexit.register(lambda: path.unlink(missing_ok=True))  # if the VM never got as far as reading it
    words = config.cmdline.split()
    if not any(w.startswith("panic=") for w in words):
        words.append("panic=-1")  # a panic ends the VM (status 80) instead of hanging it
    if not any(w in ("quiet", "debug") or w.startswith("loglevel=") for w in words):
        words.append("quiet")  # the command's output, not the boot log, is what the user asked for
    config.cmdline = " ".join(words)
    config.initrd = path
    return path


def setup(config: VmConfig, values: dict[str, Any]) -> TestingArea | NoHooks:
    timeout = values.get("test_timeout")
    expect = values.get("test_expect")
    fail_on = values.get("test_fail_on")
    command = tuple(values.get("test_command") or ())
    adds = tuple(values.get("test_adds") or ())
    busybox = values.get("test_busybox")
    if (adds or busybox) and not command:
        raise UsageError("--add and --busybox only apply to `pyvmm run --kernel Image -- CMD ARGS...`")
    if timeout is None and expect is None and fail_on is None and not command:
        return NoHooks()
    area = TestingArea(timeout, expect, fail_on, command_mode=bool(command))
    if command:
        area.initrd_path = _command_initrd(config, list(command), adds, busybox)
    return area
