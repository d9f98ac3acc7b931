"""One test in its own `pyvmm run` process (isolation, a hard per-test timeout), and its verdict.

The verdict follows run_test_status (scripts/arch-run.bash): the first `EXIT: STATUS=n` line on the console decides
(1 PASS, 77 SKIP, anything else FAIL); no such line is a FAIL, and so is the timeout, even after an EXIT line (the
test ended but the VM did not stop: upstream reads the line only when the VMM exited by itself). One more SKIP, in
the spirit of run_tests.sh's "premature failure": pyvmm refused to start the VM because this host's KVM lacks what the
test asks for (exit status 69 before the guest printed anything, e.g. `--pmu` on a host without a PMU).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyvmm.errors import ExitStatus
from pyvmm.kvm_unit_tests.plan import PlannedTest

PASS, SKIP, FAIL = "PASS", "SKIP", "FAIL"
KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL, as `timeout -k 1s`
_EXIT_LINE = re.compile(r"^EXIT: .*?STATUS=(\d+)", re.MULTILINE)
_SUMMARY_LINE = re.compile(r"^SUMMARY: (.*?)\r?$")
EARLY_UART = 0x0900_0000


@dataclass
class TestResult:
    name: str
    verdict: str
    reason: str = ""  # why it was skipped or failed, when the test itself does not say
    summary: str = ""  # the test's own `SUMMARY:` line, e.g. "14 tests"
    status: int | None = None  # the EXIT: STATUS value
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    output: str = ""  # console and pyvmm's messages, for logs

    def line(self) -> str:
        """run_tests.sh's line: `PASS name (summary)`, or the reason in parentheses."""
        detail = self.reason or self.summary
        return f"{self.verdict} {self.name}" + (f" ({detail})" if detail else "")

    def as_json(self) -> dict:
        return {"name": self.name, "verdict": self.verdict, "reason": self.reason, "summary": self.summary,
                "status": self.status, "seconds": round(self.seconds, 3), "command": self.command}


def verdict(console: str, errors: str, returncode: int | None, timeout_text: str) -> tuple[str, str, int | None]:
    """(verdict, reason, status) from what one run printed; returncode None: it was stopped at its timeout."""
    match = _EXIT_LINE.search(console)
    status = int(match.group(1)) if match else None
    if returncode is None and status is not None:
        return (FAIL, f"timeout; duration={timeout_text}: the test ended (EXIT: STATUS={status}) but the VM did not "
                      f"stop", status)
    if status == 1:
        return PASS, "", status
    if status == 77:
        return SKIP, "", status
    if status is not None:
        return FAIL, "", status
    if returncode is None:
        if not console.strip():
            return FAIL, (f"timeout; duration={timeout_text}, and the test printed nothing: is it built for QEMU's "
                          f"virt map (early UART at {EARLY_UART:#x}, ./configure --target=qemu)?"), None
        return FAIL, f"timeout; duration={timeout_text}", None
    last_error = next((line for line in reversed(errors.splitlines()) if line.strip()), "")
    if returncode == ExitStatus.UNAVAILABLE and not console.strip() and last_error:
        return SKIP, last_error, None
    why = last_error or f"pyvmm exited with {returncode}"
    return FAIL, f"no EXIT: STATUS line; {why}", None


def summary(console: str) -> str:
    """The test's `SUMMARY:` line among its last five, as extract_summary (scripts/runtime.bash)."""
    for line in console.splitlines()[-5:]:
        match = _SUMMARY_LINE.match(line)
        if match:
            return match.group(1)
    return ""


PYVMM = [sys.executable, "-m", "pyvmm"]


def run(planned: PlannedTest, environ_file: Path, run_options: list[str], vmm: list[str] | None = None,
        ) -> TestResult:
    """Run one planned (not skipped) test to its verdict. `vmm`: the command before `run ...`, pyvmm by default;
    kvmtool's `lkvm` takes the same arguments (benchmarks/kvm_unit_tests.py compares the two)."""
    command = [*(vmm or PYVMM), *planned.command(environ_file, run_options)]
    start = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=planned.timeout)
        returncode: int | None = process.returncode
    except subprocess.TimeoutExpired:
        out, err = _stop(process)
        returncode = None
    seconds = time.monotonic() - start
    console, errors = out.decode(errors="replace"), err.decode(errors="replace")
    result_verdict, reason, status = verdict(console, errors, returncode, planned.timeout_text)
    return TestResult(planned.name, result_verdict, reason, summary(console), status, seconds, command,
                      console + errors)


def _stop(process: subprocess.Popen) -> tuple[bytes, bytes]:
    """SIGTERM, then SIGKILL after the grace period; the output so far is kept."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return process.communicate(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return b"", b""
