"""Running the bundled `hostile` guest (a malicious virtio-blk driver, docs/MACHINES.md) on a scratch disk, and
what pyvmm must hold against it: bounded RSS and wall time, the image untouched outside the guest's legitimate
write, no traceback, rate-limited device warnings, and for each phase the spec's answer (the request's status or
DEVICE_NEEDS_RESET) with the device working again after a reset.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyvmm_guests

# Phases and report fields: guest-kernels/hostile.inc.
NO_FEATURES_OK, WRITE, WZ_RAM, DISCARD_RAM, WZ_INDIRECT, LOOP, ZERO_STATUS, QUEUE_SHRINK, FLOOD, BREAK_LOOP = \
    range(1, 11)
ALL_PHASES = tuple(range(1, 11))
DONE, NEEDS_RESET, NO_ANSWER = 0, 1, 2
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
CANARY = 0xA5
BREAK_CYCLES = 64
SECTOR = 512
PATTERN = struct.pack("<128I", *((0x54534F48 + i) & 0xFFFF_FFFF for i in range(128)))
DISK_BYTES = 1 << 20
# Warnings a guest may cause in one run, whatever it does: device failures are logged rate-limited.
MAX_STDERR_LINES = 20


@dataclass(frozen=True)
class Report:
    result: int
    extra: int
    status: int


@dataclass(frozen=True)
class HostileRun:
    exit_status: int
    reports: dict[int, Report]
    stderr: str
    max_rss_mib: float
    seconds: float
    disk_before: bytes
    disk_after: bytes


def run_hostile(arch: str, tmp_path: Path, *, memory_mib: int, phases: tuple[int, ...] = ALL_PHASES,
                rounds: int = 1, timeout: float = 600, extra_args: tuple[str, ...] = ()) -> HostileRun:
    """One `pyvmm run` of the hostile guest with a 1 MiB disk of random bytes (and `extra_args`); RSS from wait4 of
    that process."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(DISK_BYTES))
    before = disk.read_bytes()
    stats = tmp_path / "stats.json"
    mask = sum(1 << p for p in phases)
    command = [sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", str(pyvmm_guests.path(arch, "hostile")),
               "-m", f"{memory_mib}M", "--disk", str(disk), "--stats-json", str(stats),
               "--guest-arg", str(mask), "--guest-arg", str(memory_mib), "--guest-arg", str(rounds), *extra_args]
    with open(tmp_path / "stderr", "w+b") as err:
        start = time.monotonic()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _, wait_status, usage = _wait4(proc, timeout)
        finally:
            if proc.returncode is None and proc.poll() is None:
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    data = json.loads(stats.read_text())["testdev_data"] if stats.exists() else []
    reports = {value >> 24: Report(value >> 16 & 0xFF, value >> 8 & 0xFF, value & 0xFF) for value in data}
    return HostileRun(os.waitstatus_to_exitcode(wait_status), reports, stderr, usage.ru_maxrss / 1024, seconds,
                      before, disk.read_bytes())


def _wait4(proc: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return pid, status, usage
        if time.monotonic() > deadline:
            raise AssertionError(f"the hostile guest's VM ran longer than {timeout} s")
        time.sleep(0.05)


def check_survived(run: HostileRun, phases: tuple[int, ...] = ALL_PHASES) -> None:
    """Every phase reported, the device worked after each, nothing crashed, the disk holds only the legitimate
    write, and each phase got the answer the spec allows."""
    assert "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.splitlines()) <= MAX_STDERR_LINES, f"warnings are not rate-limited:\n{run.stderr}"
    assert run.exit_status == 0, f"status {run.exit_status} (0x40 + phase: the device did not recover):\n" \
                                 f"{run.reports}\n{run.stderr}"
    assert sorted(run.reports) == sorted(phases), run.reports
    expected = bytearray(run.disk_before)
    if WRITE in phases:
        expected[SECTOR : 2 * SECTOR] = PATTERN
    assert run.disk_after == bytes(expected), "the image changed outside the guest's legitimate write"
    r = run.reports
    refused = {(NEEDS_RESET, S_IOERR), (NEEDS_RESET, S_UNSUPP), (DONE, S_IOERR), (DONE, S_UNSUPP)}
    for phase, report in r.items():
        if phase == NO_FEATURES_OK:  # the device never started: the request is ignored or the device parks
            assert report.result in (NEEDS_RESET, NO_ANSWER), report
        elif phase == WRITE:
            assert (report.result, report.status) == (DONE, S_OK), report
        elif phase in (WZ_RAM, DISCARD_RAM, WZ_INDIRECT):  # 16 bytes per segment: all of RAM is not a payload
            assert report.result == NEEDS_RESET or (report.result, report.status) in refused, report
        elif phase == LOOP:
            assert report.result == NEEDS_RESET, report
        elif phase == ZERO_STATUS:  # never the byte before a zero-length buffer
            assert report.extra == CANARY, report
            assert report.result in (DONE, NEEDS_RESET), report
        elif phase == QUEUE_SHRINK:  # whatever was in flight, the device answers or parks (no crash: above)
            assert report.result in (DONE, NEEDS_RESET, NO_ANSWER), report
        elif phase == FLOOD:
            assert report.result in (DONE, NEEDS_RESET), report
        elif phase == BREAK_LOOP:
            assert report.extra == BREAK_CYCLES, report


def check_bounded(run: HostileRun, *, memory_mib: int, seconds: float) -> None:
    """What the guest cost pyvmm: the interpreter, guest RAM as far as it is touched and small per-request
    buffers, never a payload the guest sized (before the bounds, 8 descriptors covering RAM made pyvmm allocate
    8 x RAM); and a bounded time however long the chains."""
    assert run.max_rss_mib < memory_mib + 128, run.max_rss_mib
    assert run.seconds < seconds, run.seconds
