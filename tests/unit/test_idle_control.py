"""pyvmm.idle.control and the control protocol (pyvmm.api) with fake VMs and a real Unix socket."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from types import SimpleNamespace

import pytest

from pyvmm.api.client import Client, RefusedError
from pyvmm.api.protocol import RequestError, dispatch, parse_change
from pyvmm.api.server import ControlServer
from pyvmm.errors import UsageError
from pyvmm.idle.apply import IdleChange
from pyvmm.idle.caps import cap_table
from pyvmm.idle.control import IdleController, IdleRefusedError, applied_to_dict, render_policy
from pyvmm.idle.host import HostInfo
from pyvmm.idle.policy import IdlePolicy, check_affinity
from pyvmm.spec import IdleSpec, VmSpec
from pyvmm.vmm.lifecycle import Lifecycle

CAPS = cap_table(environ={})
ARM = HostInfo("arm64", "6.12.117-wfx", {}, {"halt_poll_ns": 200000}, 4)
STOCK = HostInfo("arm64", "6.12.57+deb13-arm64", {}, {"halt_poll_ns": 200000}, 2)


class FakeVM:
    def __init__(self, accepts=()):
        self.accepts = set(accepts)
        self.calls = []

    def check_extension(self, cap):
        return 0

    def enable_cap(self, cap, *args):
        if cap not in self.accepts:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.calls.append((cap, args))


class FakeVmm:
    """What IdleController and dispatch use of pyvmm.vmm.vmm.Vmm."""

    def __init__(self, vm, cpus=1):
        self.spec = SimpleNamespace(arch="arm64", cpus=cpus)
        self.machine = SimpleNamespace(vm=vm, vcpus=[])
        self.events = Lifecycle()
        self.threads = []
        self.stopped = None
        self.paused = False

    def stop(self, outcome):
        self.stopped = outcome

    def pause(self):
        self.paused = True
        return True

    def resume(self):
        self.paused = False


def running_controller(policy=IdlePolicy(), accepts=(236, 248, 182), host=ARM):
    vm = FakeVM(accepts)
    vmm = FakeVmm(vm)
    c = IdleController(policy, caps=CAPS, host=host)
    c.subscribe(vmm)
    vmm.events.before_vcpus.emit(vm)
    return c, vmm, vm


def test_refused_per_vm_request_is_a_one_line_pyvmm_error_naming_the_alternative():
    with pytest.raises(IdleRefusedError) as info:
        running_controller(IdlePolicy(wfx_trap_threshold=0), accepts=(182,), host=STOCK)
    msg = str(info.value)
    assert "\n" not in msg and info.value.exit_status == 69
    assert "KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH" in msg and "kvm-arm.wfi_trap_policy=notrap" in msg


def test_fallback_runs_and_records_it():
    c, _, _ = running_controller(IdlePolicy(wfx_trap_threshold=0, allow_fallback=True), accepts=(182,), host=STOCK)
    d = c.policy_dict()
    assert d["wfx_trap_threshold"] is None and len(d["fallbacks"]) == 1


def test_hlt_passthrough_hides_pv_unhalt():
    assert VmSpec(idle=IdleSpec(policy=IdlePolicy(idle_exits={"hlt"}))).hide_pv_unhalt is True
    assert VmSpec(idle=IdleSpec(policy=IdlePolicy(idle_exits={"pause"}))).hide_pv_unhalt is False


def test_affinity_checked_before_the_vm_runs():
    with pytest.raises(UsageError, match="names vCPU 3, but the VM has 1"):
        VmSpec(idle=IdleSpec(policy=IdlePolicy(cpu_affinity={3: {0}}))).validate()
    with pytest.raises(UsageError, match="CPU 4096 does not exist on this host"):
        check_affinity({0: {4096}}, 1)


def test_affinity_to_offline_or_forbidden_cpus_refused(monkeypatch):
    from pyvmm.idle import hostcpus, policy

    monkeypatch.setattr(hostcpus, "read_host_cpus", lambda: hostcpus.HostCpus(frozenset({0, 1, 2}), frozenset({0, 1})))
    with pytest.raises(UsageError, match=r"^cpu affinity 0=2: CPU 2 is offline \(online: 0-1\)$"):
        check_affinity({0: {2}}, 1)
    monkeypatch.setattr(policy.os, "sched_getaffinity", lambda pid: {0})
    with pytest.raises(UsageError, match="not available to pyvmm"):
        check_affinity({0: {1}}, 1)


def test_policy_dict_is_json_and_renders():
    c, _, _ = running_controller(IdlePolicy(wfx_trap_threshold=2, wfx_passthrough={"wfe"}))
    d = json.loads(json.dumps(c.policy_dict()))
    assert d["wfx_trap_threshold"] == 2 and d["wfx_passthrough"] == ["wfe"]
    assert d["exits"]["wfe"]["source"].endswith("KVM_CAP_ARM_DISABLE_EXITS")
    text = "\n".join(render_policy(d))
    assert "wfi" in text and "halt polling 200000 ns" in text
    assert applied_to_dict(None) == {}


def test_dispatch_set_threshold_and_refusals_leave_policy_unchanged():
    c, vmm, vm = running_controller(IdlePolicy(wfx_passthrough={"wfi"}))
    r = dispatch({"cmd": "set", "wfx_trap_threshold": 0}, c, vmm)
    assert r["ok"] and r["result"]["wfx_trap_threshold"] == 0 and vm.calls[-1] == (236, (0,))
    before = c.policy_dict()
    r = dispatch({"cmd": "set", "wfx_passthrough": []}, c, vmm)
    assert not r["ok"] and "one-way" in r["error"]
    assert c.policy_dict() == before
    vm.accepts.discard(182)
    r = dispatch({"cmd": "set", "halt_poll_ns": 5}, c, vmm)
    assert not r["ok"] and "halt_poll_ns 5 refused" in r["error"] and c.policy_dict() == before


def test_dispatch_lifecycle_and_bad_requests():
    c, vmm, _ = running_controller()
    assert dispatch({"cmd": "pause"}, c, vmm) == {"ok": True, "result": {"state": "paused"}} and vmm.paused
    assert dispatch({"cmd": "resume"}, c, vmm)["ok"] and not vmm.paused
    assert dispatch({"cmd": "stop", "status": 7}, c, vmm)["ok"] and vmm.stopped.status == 7
    for bad, why in (([], "JSON object"), ({"cmd": "fly"}, "unknown command"),
                     ({"cmd": "set"}, "at least one"), ({"cmd": "set", "halt_poll_ns": -1}, "0..4294967295"),
                     ({"cmd": "set", "bogus": 1}, "unknown field"), ({"cmd": "pin", "affinity": {"x": [1]}}, "not a number"),
                     ({"cmd": "stop", "status": 300}, "0..255")):
        r = dispatch(bad, c, vmm)
        assert not r["ok"] and why in r["error"], (bad, r)


def test_parse_change():
    assert parse_change({"cmd": "set", "wfx_passthrough": ["WFI"]}) == IdleChange(wfx_passthrough=frozenset({"wfi"}))
    with pytest.raises(RequestError, match="unknown wfx"):
        parse_change({"cmd": "set", "wfx_passthrough": ["wfx"]})
    with pytest.raises(RequestError):
        parse_change({"cmd": "set", "wfx_trap_threshold": True})


def test_server_socket_is_0600_and_answers_json_lines(tmp_path):
    c, vmm, _ = running_controller()
    path = str(tmp_path / "vm.sock")
    server = ControlServer(path, c, vmm)
    server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with Client(path) as client:
            assert client.request("policy")["exits"]["wfi"]
            assert client.request("set", wfx_trap_threshold=100)["wfx_trap_threshold"] == 100
            with pytest.raises(RefusedError, match="unknown command"):
                client.request("nonsense")
            client.file.write(b"{not json\n")
            client.file.flush()
            assert "not a JSON line" in json.loads(client.file.readline())["error"]
        with pytest.raises(UsageError, match="another VM is listening"):
            ControlServer(path, c, vmm)
    finally:
        server.close()
    assert not os.path.exists(path)


def test_server_replaces_stale_socket_and_refuses_other_files(tmp_path):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # bound, never listening: a leftover of a crashed pyvmm
    c, vmm, _ = running_controller()
    ControlServer(str(stale), c, vmm).close()
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(UsageError, match="not a socket"):
        ControlServer(str(plain), c, vmm)


def test_threshold_on_unpinned_vcpus_warns_once(monkeypatch):
    """Objection (e): the warning names --cpu-affinity, is told once, and goes into the policy report."""
    import threading
    from types import SimpleNamespace

    from pyvmm.idle import control

    told: list[str] = []
    c = IdleController(IdlePolicy(), host=ARM, warn=told.append)
    vcpu = SimpleNamespace(index=0, thread_id=threading.get_native_id())
    c.applied = SimpleNamespace(wfx_trap_threshold=1)
    monkeypatch.setattr(control.os, "sched_getaffinity", lambda tid: {0, 1})
    c._check_pinning([vcpu])
    c._check_pinning([vcpu])  # a second boot (--on-reboot restart): not told again
    assert len(told) == 1 and "vCPU 0 is not pinned" in told[0] and "--cpu-affinity 0=CPU" in told[0]
    assert c.warnings == told
    monkeypatch.setattr(control.os, "sched_getaffinity", lambda tid: {1})
    pinned = IdleController(IdlePolicy(), host=ARM, warn=told.append)
    pinned.applied = SimpleNamespace(wfx_trap_threshold=1)
    pinned._check_pinning([vcpu])
    assert len(told) == 1
