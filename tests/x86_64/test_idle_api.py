"""The control socket and `pyvmm ctl` against a live VM on this host's real /dev/kvm."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import pyvmm_guests

from pyvmm.api.client import Client, RefusedError
from tests.conftest import run_pyvmm

IDLE = str(pyvmm_guests.path("x86_64", "idle"))


@pytest.fixture
def live_vm(tmp_path):
    """A long-running idle guest (100000 periods of 2 ms) with a control socket; yields (socket, process, stats)."""
    sock, stats = tmp_path / "vm.sock", tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", IDLE, "--guest-arg", "100000",
                             "--api-socket", str(sock), "--stats-json", str(stats)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "control socket never appeared"
        time.sleep(0.05)
    time.sleep(0.2)  # the server thread starts right after the vCPUs
    yield sock, proc, stats
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def exits(client) -> int:
    return client.request("stats")["vcpus"][0]["stats"]["exits"]


def test_policy_set_pause_resume_stop(live_vm):
    sock, proc, stats = live_vm
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    with Client(str(sock)) as c:
        p = c.request("policy")
        assert p["arch"] == "x86_64" and p["halt_poll_source"] == "kvm module parameter"
        p = c.request("set", halt_poll_ns=1234)
        assert p["halt_poll_ns"] == 1234 and p["halt_poll_source"] == "per-VM cap KVM_CAP_HALT_POLL"
        assert c.request("policy")["halt_poll_ns"] == 1234
        assert c.request("pause") == {"state": "paused"}
        assert {v["state"] for v in c.request("state")["vcpus"]} == {"paused"}
        a = exits(c)
        time.sleep(0.3)
        assert exits(c) == a, "a paused vCPU made exits"
        c.request("resume")
        time.sleep(0.3)
        assert exits(c) > a + 20, "the resumed VM is not running"
        assert c.request("stop", status=5) == {"state": "stopping"}
    assert proc.wait(20) == 5
    assert not sock.exists()
    d = json.loads(stats.read_text())
    assert d["policy"]["halt_poll_ns"] == 1234 and d["outcome"]["reason"] == "stopped through the control socket"
    assert len(d["testdev_data"]) > 10


def test_refused_change_leaves_the_vm_running_unchanged(live_vm):
    sock, proc, _ = live_vm
    with Client(str(sock)) as c:
        before = c.request("policy")
        with pytest.raises(RefusedError, match="arm64-only"):
            c.request("set", wfx_trap_threshold=0)
        with pytest.raises(RefusedError, match="arm64-only"):
            c.request("set", wfx_passthrough=["wfi"])
        assert c.request("policy") == before
        a = exits(c)
        time.sleep(0.3)
        assert exits(c) > a and proc.poll() is None
        with pytest.raises(RefusedError, match="the VM has 1 vCPU"):
            c.request("pin", affinity={"4": [0]})
        cpu = max(os.sched_getaffinity(0))
        assert c.request("pin", affinity={"0": [cpu]})["cpu_affinity"] == {"0": [cpu]}
        c.request("stop")
    assert proc.wait(20) == 0


def test_ctl_cli(live_vm):
    sock, proc, _ = live_vm
    r = run_pyvmm("ctl", str(sock), "policy")
    assert r.returncode == 0 and b"hlt    trapped  [kernel default]" in r.stdout, r.stderr
    r = run_pyvmm("ctl", str(sock), "set", "--halt-poll-ns", "0", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["halt_poll_ns"] == 0
    r = run_pyvmm("ctl", str(sock), "set", "--wfx-trap-threshold", "1")
    assert r.returncode == 69 and r.stderr.decode().count("\n") == 1 and b"arm64-only" in r.stderr
    r = run_pyvmm("ctl", str(sock), "stats", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[1].split()[:2] == ["vCPU", "exits/s"] and lines[2].split()[0] == "0"
    assert "halt/s" in lines[1] and "wfi/s" not in lines[1]  # arm64's columns only with --all
    r = run_pyvmm("ctl", str(sock), "stats", "--interval", "0.2", "--all")
    assert "wfi/s" in r.stdout.decode().splitlines()[1]
    assert int(lines[2].split()[1]) > 100  # ~1000 exits/s: PIT programming + HLT per 2 ms period
    r = run_pyvmm("ctl", str(sock), "stats", "--watch", "0.3", "--count", "2", "--json")
    rows = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(rows) == 2 and rows[0]["interval"]["vcpus"][0]["rates"]["halt_exits"] > 50
    assert rows[0]["interval"]["vcpus"][0]["cpu_percent"] is not None
    assert run_pyvmm("ctl", str(sock), "pause").stdout == b"paused\n"
    assert run_pyvmm("ctl", str(sock), "resume").stdout == b"running\n"
    assert run_pyvmm("ctl", str(sock), "stop", "--status", "9").returncode == 0
    assert proc.wait(20) == 9
    r = run_pyvmm("ctl", str(sock), "policy")
    assert r.returncode == 69 and b"cannot connect to the control socket" in r.stderr
