"""`pyvmm run --timeout / --expect / --fail-on` with the bundled x86_64 guests on this host's /dev/kvm."""

from __future__ import annotations

import time

import pyvmm_guests
import pytest

from tests.conftest import run_pyvmm

IDLE = str(pyvmm_guests.path("x86_64", "idle"))
LONG_IDLE = ("-k", IDLE, "--guest-arg", "100000", "--guest-arg", "2000")  # 200 s of timer wake-ups if left alone


def test_expect_succeeds_as_soon_as_the_console_matches(tmp_path):
    log = tmp_path / "console.log"
    result = run_pyvmm("run", "--no-stdin", "--expect", r"x86_64 guest", "--console-log", str(log))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"Hello from the pyvmm x86_64 guest")
    assert log.read_bytes().startswith(b"Hello from the pyvmm x86_64 guest")


@pytest.mark.parametrize("check", ["--expect", "--fail-on"])
def test_a_match_finishes_the_console_line_before_stopping(tmp_path, check):
    log = tmp_path / "console.log"
    result = run_pyvmm("run", "--no-stdin", check, "Hello", "--console-log", str(log))
    assert result.returncode == (0 if check == "--expect" else 1), result.stderr
    assert result.stdout == log.read_bytes() == b"Hello from the pyvmm x86_64 guest\n"
    if check == "--fail-on":
        assert result.stderr.decode().rstrip().endswith("Hello from the pyvmm x86_64 guest")


def test_expect_fails_when_the_guest_ends_first():
    result = run_pyvmm("run", "--no-stdin", "--expect", "never printed")
    assert result.returncode == 1
    assert b"the guest ended before the console matched --expect 'never printed'" in result.stderr


def test_fail_on_stops_the_vm_with_status_1():
    result = run_pyvmm("run", "--no-stdin", "--fail-on", "pyvmm (x86_64|arm64)")
    assert result.returncode == 1
    assert b"error: the console matched --fail-on" in result.stderr


def test_the_first_match_decides_between_expect_and_fail_on():
    result = run_pyvmm("run", "--no-stdin", "--expect", "guest", "--fail-on", "Hello")
    assert result.returncode == 1, result.stderr
    result = run_pyvmm("run", "--no-stdin", "--expect", "Hello", "--fail-on", "guest")
    assert result.returncode == 0, result.stderr


def test_timeout_stops_a_running_guest_with_124():
    started = time.monotonic()
    result = run_pyvmm("run", "--no-stdin", *LONG_IDLE, "--timeout", "1")
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - started < 30
    assert b"timed out after 1 s (--timeout)" in result.stderr


def test_expect_times_out_with_124():
    result = run_pyvmm("run", "--no-stdin", *LONG_IDLE, "--expect", "never", "--timeout", "0.5")
    assert result.returncode == 124
    assert b"--expect 'never' not matched: timed out after 0.5 s" in result.stderr


def test_timeout_does_not_change_a_guest_that_ends_in_time():
    result = run_pyvmm("run", "--no-stdin", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello from the pyvmm x86_64 guest\n"


def test_bad_values_are_usage_errors():
    for args, words in [(["--expect", "("], b"not a valid regular expression"), (["--timeout", "0"], b"--timeout"),
                        (["--add", "a:/b"], b"only apply to"), (["--busybox", "/bin/busybox"], b"only apply to"),
                        (["--", "true"], b"needs a Linux kernel"),
                        (["-k", IDLE, "--", "true"], b"pyvmm supports on arm64 only")]:
        result = run_pyvmm("run", "--no-stdin", *args)
        assert result.returncode == 64, (args, result.stderr)
        assert words in result.stderr, (args, result.stderr)
