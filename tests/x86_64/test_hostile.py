"""The bundled hostile guest (a malicious virtio-blk driver) against pyvmm on /dev/kvm: the device answers each
attack as the spec says and works again after a reset; pyvmm stays up, small and quick (tests/hostile_guest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyvmm_guests

from tests.hostile_guest import FLOOD, check_bounded, check_survived, run_hostile


def test_a_hostile_guest_cannot_take_pyvmm_down(tmp_path):
    run = run_hostile("x86_64", tmp_path, memory_mib=64, timeout=120)
    check_survived(run)
    check_bounded(run, memory_mib=64, seconds=30)


def test_sigterm_and_timeout_win_over_a_device_flood(tmp_path):
    """The guest keeps its disk busy with the longest legal chains for ever: stop still wins at once."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    flood = [sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", str(pyvmm_guests.path("x86_64", "hostile")),
             "-m", "64M", "--disk", str(disk), "--guest-arg", str(1 << FLOOD), "--guest-arg", "64",
             "--guest-arg", str(0xFFFF_FFFF)]
    proc = subprocess.Popen(flood, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(2)
    assert proc.poll() is None, proc.stderr.read()
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and time.monotonic() - sent < 5, err
    assert b"Traceback" not in err and len(err.splitlines()) <= 2, err
    timed = subprocess.run([*flood, "--timeout", "1"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert timed.returncode == 124 and b"Traceback" not in timed.stderr, timed.stderr
    assert os.path.getsize(disk) == 1 << 20
