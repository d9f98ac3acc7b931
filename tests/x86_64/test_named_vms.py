"""Named VMs on the real /dev/kvm: `pyvmm run --name`, a control socket per VM in the runtime directory, `pyvmm list`,
`pyvmm ctl NAME ...`, `ctl state` and `ctl --all`, with two live VMs (the bundled idle guest with a large count)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import run_pyvmm

LONG = ["-k", "idle", "--guest-arg", "100000000"]


def start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "--no-stdin", *LONG, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def wait_for(path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # the server thread starts right after the vCPUs


@pytest.fixture
def runtime(tmp_path):
    directory = tmp_path / "run"
    return directory, dict(os.environ, PYVMM_RUNTIME_DIR=str(directory))


@pytest.fixture
def two_vms(runtime):
    directory, env = runtime
    named = start(env, "--name", "alpha")
    unnamed = start(env, "-c", "2", "-m", "64M")
    wait_for(directory / "alpha.sock", named)
    wait_for(directory / f"guest-{unnamed.pid}.sock", unnamed)
    yield directory, env, named, unnamed
    for proc in (named, unnamed):
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def pyvmm(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_pyvmm(*args, env=env)


def test_list_ctl_and_all_with_two_live_vms(two_vms):
    directory, env, named, unnamed = two_vms
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / "alpha.sock").st_mode) == 0o600

    rows = json.loads(pyvmm(env, "list", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"alpha", f"guest-{unnamed.pid}"}
    assert by_name["alpha"]["pid"] == named.pid and by_name["alpha"]["vcpus"] == 1
    assert by_name[f"guest-{unnamed.pid}"]["vcpus"] == 2 and by_name[f"guest-{unnamed.pid}"]["memory_bytes"] == 64 << 20
    assert all(r["state"] == "running" and r["kernel"].endswith("idle.bin") and r["uptime_s"] >= 0 for r in rows)

    table = pyvmm(env, "list").stdout.decode().splitlines()
    assert table[0].split() == ["NAME", "PID", "STATE", "VCPUS", "MEMORY", "UPTIME", "KERNEL"]
    assert table[1].split()[:5] == ["alpha", str(named.pid), "running", "1", "256M"]
    assert table[2].split()[:5] == [f"guest-{unnamed.pid}", str(unnamed.pid), "running", "2", "64M"]

    assert pyvmm(env, "ctl", "alpha", "state").stdout == b"running (vCPU 0 running)\n"
    assert b"halt_poll" in pyvmm(env, "ctl", "alpha", "policy", "--json").stdout
    # A plain run opens its statistics only when first asked for them: they must be there all the same.
    stats = json.loads(pyvmm(env, "ctl", "alpha", "stats", "--interval", "0.1", "--json").stdout)
    assert stats["totals"]["vcpus"][0]["stats"]["exits"] > 0
    socket_path = str(directory / "alpha.sock")
    assert pyvmm(env, "ctl", socket_path, "state").returncode == 0  # a path works as before

    assert pyvmm(env, "ctl", "--all", "pause").stdout.decode().splitlines() == [
        "alpha: paused", f"guest-{unnamed.pid}: paused"]
    assert {r["state"] for r in json.loads(pyvmm(env, "list", "--json").stdout)} == {"paused"}
    assert pyvmm(env, "ctl", "--all", "resume").returncode == 0
    refused = pyvmm(env, "ctl", "--all", "policy")
    assert refused.returncode == 64 and b"--all applies to pause, resume, stop, state only" in refused.stderr

    taken = start(env, "--name", "alpha")
    assert taken.wait(20) == 64 and b"a VM of that name is running" in taken.stderr.read()
    assert named.poll() is None and (directory / "alpha.sock").exists()

    assert pyvmm(env, "ctl", "--all", "stop", "--status", "3").returncode == 0
    assert named.wait(20) == 3 and unnamed.wait(20) == 3
    assert list(directory.iterdir()) == []
    assert json.loads(pyvmm(env, "list", "--json").stdout) == []


def test_a_stale_socket_is_cleaned_and_its_name_reusable(runtime):
    directory, env = runtime
    proc = start(env, "--name", "victim")
    wait_for(directory / "victim.sock", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert (directory / "victim.sock").exists()  # nobody removed it: the VM was killed
    assert json.loads(pyvmm(env, "list", "--json").stdout) == []
    assert not (directory / "victim.sock").exists()
    again = run_pyvmm("run", "--no-stdin", "--name", "victim", "-k", "exits", "--guest-arg", "3", env=env)
    assert again.returncode == 0 and again.stdout == b"exits: 3\n"


def test_an_unknown_name_and_a_bad_name(runtime):
    _, env = runtime
    missing = pyvmm(env, "ctl", "nosuch", "state")
    assert missing.returncode == 66 and b"no VM named 'nosuch' is running" in missing.stderr
    bad = pyvmm(env, "run", "--no-stdin", "--name", "../x")
    assert bad.returncode == 64 and bad.stderr.decode().startswith("pyvmm: error: --name '../x'")


def test_debug_prints_the_generated_name(runtime):
    directory, env = runtime
    result = pyvmm(env, "run", "--no-stdin", "--debug")
    assert result.returncode == 0
    assert "pyvmm: VM guest-" in result.stderr.decode() and str(directory) in result.stderr.decode()


def test_a_terminal_is_told_how_to_quit(runtime):
    import pty

    _, env = runtime
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--name", "tty"], stdin=terminal,
                                capture_output=True, env=env, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines() == ["pyvmm: Ctrl-a x quits (tty in `pyvmm list`)"]
    quiet = run_pyvmm("run", env=env)  # stdin not a terminal: nothing to say
    assert quiet.returncode == 0 and quiet.stderr == b""
