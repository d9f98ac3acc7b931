"""Bundled and hand-made x86_64 payloads on the real /dev/kvm: output, verdicts, the run loop, lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyvmm_guests

from pyvmm.spec import ConsoleSpec, VmSpec
from pyvmm.vmm.console import ConsoleOutput
from pyvmm.vmm.vcpu_thread import VcpuState
from pyvmm.vmm.vmm import Vmm
from tests.conftest import ROOT, run_pyvmm

GREETING = b"Hello from the pyvmm x86_64 guest\n"


def make_vmm(guest: str | Path, *args: int, cpus: int = 1, sink: list | None = None) -> Vmm:
    kernel = guest if isinstance(guest, Path) else pyvmm_guests.path("x86_64", guest)
    collected = sink if sink is not None else []
    output = ConsoleOutput(echo=False)
    output.listeners.append(collected.append)
    spec = VmSpec(kernel=kernel, cpus=cpus, memory=64 << 20, guest_args=list(args), console=ConsoleSpec(stdin=False))
    return Vmm(spec.validate(), output=output)


def payload(tmp_path: Path, code: bytes) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(code)
    return path


def test_default_run_boots_bundled_hello_and_exits_zero():
    result = run_pyvmm("run", "--no-stdin")
    assert result.returncode == 0, result.stderr
    assert result.stdout == GREETING
    assert result.stderr == b""


def test_cli_py_does_what_pyvmm_does():
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", "--no-stdin"], capture_output=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == GREETING


def test_guest_exit_status_becomes_pyvmm_status(tmp_path):
    # mov al, 7 ; mov dx, 0x500 ; out dx, al ; hlt
    path = payload(tmp_path, bytes.fromhex("b007ba0005eef4"))
    result = run_pyvmm("run", "--no-stdin", "-k", str(path))
    assert result.returncode == 7
    assert b"status 7" in result.stderr


class CountingDevice:
    """Stands in for a device on the bus and counts the accesses that reach it."""

    def __init__(self, device) -> None:
        self.device, self.name, self.reads, self.writes = device, device.name, 0, 0

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        return self.device.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes += 1
        self.device.write(offset, size, value)


def test_exits_guest_takes_exactly_its_exits_through_the_run_loop():
    vmm = make_vmm("exits", 5000)
    try:
        ports = vmm.build().devices.pio
        (testdev,) = [r for r in ports.ranges if r.device is vmm.machine.testdev]
        counting = CountingDevice(testdev.device)
        ports.unregister(testdev.device)
        ports.register(testdev.base, testdev.size, counting)
        outcome = vmm.run()
        assert outcome.status == 0 and not outcome.error
        # one ARG read, N SINK writes, one EXIT write: each exit reached the device once
        assert (counting.reads, counting.writes) == (1, 5000 + 1)
    finally:
        vmm.close()


def test_idle_guest_data_is_collected():
    collected: list[int] = []
    vmm = make_vmm("idle", 20, 1000)
    vmm.events.finished.subscribe(lambda outcome: collected.extend(vmm.machine.testdev.data))
    try:
        assert vmm.run().status == 0
    finally:
        vmm.close()
    assert collected[0] == 1193182  # the PIT's frequency
    assert len(collected) == 21
    assert all(0 <= ticks < 65536 for ticks in collected[1:])


def test_pause_resume_and_stop_a_running_vm():
    from pyvmm.outcome import VmOutcome

    vmm = make_vmm("idle", 100000, 1000, cpus=2)
    outcome_box: list = []
    runner = threading.Thread(target=lambda: outcome_box.append(vmm.run()))
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while not (vmm.threads and all(t.state == VcpuState.RUNNING for t in vmm.threads)):
            assert time.monotonic() < deadline, "vCPUs never started"
            time.sleep(0.01)
        assert vmm.pause()
        assert all(t.state == VcpuState.PAUSED for t in vmm.threads)
        vmm.resume()
        time.sleep(0.05)
        assert all(t.state == VcpuState.RUNNING for t in vmm.threads)
        vmm.stop(VmOutcome(0, "stopped by the test"))
        runner.join(10)
        assert not runner.is_alive()
        assert outcome_box[0].reason == "stopped by the test"
        assert all(not t.is_alive() for t in vmm.threads)
    finally:
        vmm.close()


def test_sigterm_stops_the_vm_cleanly():
    proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k",
                             str(pyvmm_guests.path("x86_64", "idle")), "--guest-arg", "1000000", "--guest-arg", "1000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    assert b"SIGTERM" in err
    assert b"Traceback" not in err


def test_two_vcpus_run(tmp_path):
    result = run_pyvmm("run", "--no-stdin", "--cpus", "2")
    assert result.returncode == 0
    assert result.stdout == GREETING


def test_unclaimed_ports_read_all_ones_and_do_not_stop_the_vm(tmp_path):
    # in al, 0x80 (nothing there) ; mov dx, 0x500 ; out dx, al  -> the guest exits with what it read
    path = payload(tmp_path, bytes.fromhex("e480ba0005eef4"))
    result = run_pyvmm("run", "--no-stdin", "-k", str(path))
    assert result.returncode == 0xFF


# Prints "B" on COM1, then triple-faults: lidtl of a zero-limit IDT outside RAM, then a divide error.
TRIPLE_FAULT = bytes.fromhex("baf803b042eefa662e0f011e150031c9f7f1f4ebfd000000f0ffff")


def test_a_reboot_ends_with_80_by_default(tmp_path):
    result = run_pyvmm("run", "--no-stdin", "-k", str(payload(tmp_path, TRIPLE_FAULT)))
    assert result.returncode == 80
    assert result.stdout == b"B"
    assert b"reboot" in result.stderr


def test_on_reboot_restart_boots_the_guest_again_until_stopped(tmp_path):
    result = run_pyvmm("run", "--no-stdin", "-k", str(payload(tmp_path, TRIPLE_FAULT)), "--on-reboot", "restart",
                       "--timeout", "2")
    assert result.returncode == 124
    assert result.stdout.count(b"B") >= 2, result.stdout
    assert b"timed out" in result.stderr


def test_ctrl_a_x_quits_and_the_terminal_is_restored():
    import pty
    import termios

    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "-k", str(pyvmm_guests.path("x86_64", "idle")),
                             "--guest-arg", "1000000", "--guest-arg", "1000"],
                            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while termios.tcgetattr(terminal) == before:  # pyvmm has put the terminal in raw mode
            assert time.monotonic() < deadline and proc.poll() is None, "the terminal never went raw"
            time.sleep(0.05)
        os.write(controller, b"\x01x")
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert termios.tcgetattr(terminal) == before
    os.close(controller)
    os.close(terminal)
