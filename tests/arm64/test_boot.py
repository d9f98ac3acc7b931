"""arm64 guests under pyvmm on real arm64 KVM (inside the emulated host): bare-metal payloads and Debian's Linux."""

from __future__ import annotations

import base64
import os
import re
import selectors
import subprocess
import sys
import time

import pyvmm_guests

from tests.conftest import run_pyvmm

LINUX_TIMEOUT = 420  # an L2 Linux boot under TCG-emulated EL2 takes 10-60 s; generous, pass/fail only


def b64(command: str) -> str:
    return base64.b64encode(command.encode()).decode()


def boot_linux(l2_kernel, l2_initrd, *args: str, cmdline: str = "", timeout: float = LINUX_TIMEOUT):
    return run_pyvmm("run", "--no-stdin", "-k", str(l2_kernel), "-i", str(l2_initrd), "-m", "512M",
                     "-p", f"quiet panic=-1 {cmdline}".strip(), *args, timeout=timeout)


def test_bundled_hello_prints_and_exits_zero():
    result = run_pyvmm("run", "--no-stdin", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello from the pyvmm arm64 guest\n"


def test_exits_guest_makes_its_mmio_exits():
    result = run_pyvmm("run", "--no-stdin", "-k", str(pyvmm_guests.path("arm64", "exits")), "--guest-arg", "200",
                       timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"exits: 200\n"


def test_dump_dtb_writes_a_device_tree(tmp_path):
    out = tmp_path / "machine.dtb"
    result = run_pyvmm("run", "--no-stdin", "--cpus", "2", "--dump-dtb", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    blob = out.read_bytes()
    assert blob[:4] == b"\xd0\x0d\xfe\xed"
    assert b"arm,gic-v3" in blob and b"ns16550a" in blob and b"cpu@1" in blob


def test_linux_boots_to_userspace_with_two_cpus_and_powers_off(l2_kernel, l2_initrd):
    started = time.monotonic()
    result = boot_linux(l2_kernel, l2_initrd, "--cpus", "2",
                        cmdline=f"pyvmm.cmd={b64('echo online=$(cat /sys/devices/system/cpu/online)')}")
    elapsed = time.monotonic() - started
    out = result.stdout.decode(errors="replace")
    print(f"L2 Linux boot + command + poweroff under pyvmm: {elapsed:.1f} s (emulated: not a performance figure)")
    assert "PYVMM-L2-USERSPACE-OK" in out, out[-3000:]
    assert "online=0-1" in out, out[-3000:]
    assert "PYVMM-L2-CMD-EXIT 0" in out
    assert result.returncode == 0, result.stderr.decode()


def test_guest_kernel_panic_ends_nonzero(l2_kernel, l2_initrd):
    # No init to run: the kernel panics, and panic=-1 turns that into an immediate reboot request.
    result = boot_linux(l2_kernel, l2_initrd, cmdline="rdinit=/no/such/init init=/no/such/init")
    out = result.stdout.decode(errors="replace")
    assert "Kernel panic" in out, out[-3000:]
    assert result.returncode == 80, result.stderr.decode()
    assert b"reboot" in result.stderr


def test_console_input_reaches_the_guest(l2_kernel, l2_initrd):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyvmm", "run", "-k", str(l2_kernel), "-i", str(l2_initrd), "-m", "512M",
         "-p", "quiet panic=-1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + LINUX_TIMEOUT
    sent = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for _ in selector.select(timeout=1):
                chunk = os.read(proc.stdout.fileno(), 65536)
                seen += chunk
            if not sent and b"PYVMM-L2-USERSPACE-OK" in seen:
                time.sleep(2)  # let the shell open the console before typing
                proc.stdin.write(b"echo typed-$((6*7)); poweroff -f\n")
                proc.stdin.flush()
                sent = True
            if re.search(rb"typed-42", seen):
                break
        assert sent, seen[-3000:].decode(errors="replace")
        assert b"typed-42" in seen, seen[-3000:].decode(errors="replace")
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
