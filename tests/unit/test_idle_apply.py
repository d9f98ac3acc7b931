"""pyvmm.idle.apply: decision order, refusals, fallbacks, one-way bits; real x86 /dev/kvm."""

from __future__ import annotations

import errno
import os
import platform

import pytest

from pyvmm.idle.apply import (
    SRC_DEFAULT, SRC_HOST_PARAM, SRC_MODULE_PARAM, SRC_VM_DISABLE_EXITS, SRC_VM_HALT_POLL,
    SRC_VM_THRESHOLD, SRC_VM_X86_DISABLE_EXITS, IdleChange, IdlePolicyError, apply_affinity,
    apply_before_vcpus, apply_live,
)
from pyvmm.idle.caps import cap_table
from pyvmm.idle.host import HostInfo
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm.idle.policy import IdlePolicy

CAPS = cap_table(environ={})


class FakeVM:
    """Records enable_cap calls; refuses caps not in `accepts` with EINVAL like KVM does."""

    def __init__(self, accepts=(), answers=None):
        self.accepts = set(accepts)
        self.answers = answers or {}
        self.calls: list[tuple[int, tuple[int, ...]]] = []

    def check_extension(self, cap: int) -> int:
        return self.answers.get(cap, 0)

    def enable_cap(self, cap: int, *args: int) -> None:
        self.calls.append((cap, args))
        if cap not in self.accepts:
            raise OSError(errno.EINVAL, "Invalid argument")


def arm_host(cmdline: str = "", release: str = "6.12.117-wfx") -> HostInfo:
    params = dict(w.partition("=")[::2] for w in cmdline.split())
    return HostInfo("arm64", release, params, {"halt_poll_ns": 200000}, 4)


WFX_VM = dict(accepts={236, 248, 182}, answers={236: 1, 248: 3, 182: 1})


def test_default_state_without_requests():
    a = apply_before_vcpus(FakeVM(), IdlePolicy(), "aarch64", host=arm_host(), caps=CAPS)
    assert a.exits["wfi"].source == SRC_DEFAULT and "trapped" in a.exits["wfi"].behaviour
    assert a.exits["wfe"].source == SRC_DEFAULT and "alone" in a.exits["wfe"].behaviour
    assert (a.halt_poll_ns, a.halt_poll_source) == (200000, SRC_MODULE_PARAM)


def test_threshold_applied_and_recorded():
    vm = FakeVM(**WFX_VM)
    a = apply_before_vcpus(vm, IdlePolicy(wfx_trap_threshold=2, halt_poll_ns=5000), "arm64",
                           host=arm_host(), caps=CAPS)
    assert vm.calls == [(236, (2,)), (182, (5000,))]
    assert a.wfx_trap_threshold == 2
    for insn in ("wfi", "wfe"):
        assert a.exits[insn].source == SRC_VM_THRESHOLD
        assert "<= 2 tasks" in a.exits[insn].behaviour
    assert (a.halt_poll_ns, a.halt_poll_source) == (5000, SRC_VM_HALT_POLL)
    assert any("pin vCPUs" in n for n in a.notes)


def test_threshold_zero_means_always_trapped():
    a = apply_before_vcpus(FakeVM(**WFX_VM), IdlePolicy(wfx_trap_threshold=0), "arm64",
                           host=arm_host(), caps=CAPS)
    assert a.exits["wfi"].behaviour.startswith("trapped")


def test_decision_order_passthrough_beats_host_param_beats_threshold():
    host = arm_host("kvm-arm.wfi_trap_policy=trap kvm-arm.wfe_trap_policy=notrap")
    vm = FakeVM(**WFX_VM)
    a = apply_before_vcpus(vm, IdlePolicy(wfx_trap_threshold=0, wfx_passthrough={"wfi"}), "arm64",
                           host=host, caps=CAPS)
    assert vm.calls == [(248, (1,)), (236, (0,))]  # one-way bits first
    assert a.exits["wfi"] .behaviour == "not trapped"
    assert a.exits["wfi"].source == SRC_VM_DISABLE_EXITS
    assert "overrides kvm-arm.wfi_trap_policy=trap" in a.exits["wfi"].detail
    assert a.exits["wfe"].source == SRC_HOST_PARAM and a.exits["wfe"].behaviour == "not trapped"
    assert "threshold 0 is set but shadowed" in a.exits["wfe"].detail


def test_host_param_ignored_before_6_11():
    host = arm_host("kvm-arm.wfi_trap_policy=notrap", release="6.1.0-27-arm64")
    a = apply_before_vcpus(FakeVM(), IdlePolicy(), "arm64", host=host, caps=CAPS)
    assert a.exits["wfi"].source == SRC_DEFAULT
    assert "ignored by 6.1.0-27-arm64" in a.exits["wfi"].detail


def test_refused_threshold_error_names_lack_and_alternative():
    host = arm_host("kvm-arm.wfe_trap_policy=notrap", release="6.1.0-27-arm64")
    vm = FakeVM(answers={236: 1})  # CHECK_EXTENSION says yes (pre-fault collision), ENABLE refuses
    with pytest.raises(IdlePolicyError) as ei:
        apply_before_vcpus(vm, IdlePolicy(wfx_trap_threshold=4), "arm64", host=host, caps=CAPS)
    msg = str(ei.value)
    assert "lacks KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH" in msg
    assert "CHECK_EXTENSION(236)=1" in msg and "EINVAL" in msg
    assert "also upstream KVM_CAP_PRE_FAULT_MEMORY" in msg
    assert "kvm-arm.wfi_trap_policy=notrap (now: unset)" in msg
    assert "kvm-arm.wfe_trap_policy=notrap (now: notrap)" in msg
    assert "Linux >= 6.11" in msg and "NOT honoured by this 6.1.0-27-arm64" in msg
    assert "\n" not in msg


def test_refused_passthrough_with_fallback_is_recorded():
    host = arm_host("kvm-arm.wfi_trap_policy=notrap")
    a = apply_before_vcpus(FakeVM(), IdlePolicy(wfx_passthrough={"wfi"}, allow_fallback=True),
                           "arm64", host=host, caps=CAPS)
    assert a.wfx_passthrough == frozenset()
    assert len(a.fallbacks) == 1 and "lacks KVM_CAP_ARM_DISABLE_EXITS" in a.fallbacks[0]
    assert a.exits["wfi"].source == SRC_HOST_PARAM  # what is really in force now


def test_overridden_number_is_used_and_named():
    caps = cap_table({"ARM_DISABLE_EXITS": 251}, environ={})
    vm = FakeVM(accepts={251})
    a = apply_before_vcpus(vm, IdlePolicy(wfx_passthrough={"wfe", "wfi"}), "arm64",
                           host=arm_host(), caps=caps)
    assert vm.calls == [(251, (3,))] and a.wfx_passthrough == {"wfi", "wfe"}
    with pytest.raises(IdlePolicyError, match="cap 251 from argument"):
        apply_before_vcpus(FakeVM(), IdlePolicy(wfx_passthrough={"wfe"}), "arm64",
                           host=arm_host(), caps=caps)


def test_live_one_way_refused_before_touching_kernel():
    vm = FakeVM(**WFX_VM)
    a = apply_before_vcpus(vm, IdlePolicy(wfx_passthrough={"wfi"}), "arm64", host=arm_host(), caps=CAPS)
    vm.calls.clear()
    with pytest.raises(IdlePolicyError, match="cannot turn WFI trapping back on: .*one-way"):
        apply_live(vm, IdleChange(wfx_passthrough=frozenset({"wfe"}), wfx_trap_threshold=3), a,
                   host=arm_host(), caps=CAPS)
    assert vm.calls == []
    b = apply_live(vm, IdleChange(wfx_passthrough=frozenset({"wfi", "wfe"})), a,
                   host=arm_host(), caps=CAPS)
    assert vm.calls == [(248, (2,))]  # only the new bit
    assert b.exits["wfe"].source == SRC_VM_DISABLE_EXITS


def test_live_threshold_changes_and_keeps_halt_poll():
    vm = FakeVM(**WFX_VM)
    a = apply_before_vcpus(vm, IdlePolicy(wfx_trap_threshold=100, halt_poll_ns=0), "arm64",
                           host=arm_host(), caps=CAPS)
    b = apply_live(vm, IdleChange(wfx_trap_threshold=0), a, host=arm_host(), caps=CAPS)
    assert b.wfx_trap_threshold == 0 and b.exits["wfi"].behaviour.startswith("trapped")
    assert (b.halt_poll_ns, b.halt_poll_source) == (0, SRC_VM_HALT_POLL)


def test_arch_mismatch_errors():
    x86 = HostInfo("x86_64", "6.18", {}, {"halt_poll_ns": 1}, 2)
    with pytest.raises(IdlePolicyError, match="arm64-only; this host is x86_64"):
        apply_before_vcpus(FakeVM(), IdlePolicy(wfx_trap_threshold=1), "x86_64", host=x86, caps=CAPS)
    with pytest.raises(IdlePolicyError, match="x86 exits; on arm64 use wfx_passthrough"):
        apply_before_vcpus(FakeVM(), IdlePolicy(idle_exits={"hlt"}), "arm64", host=arm_host(), caps=CAPS)


def test_x86_mask_refusal_before_enable_cap():
    x86 = HostInfo("x86_64", "6.18", {}, {"halt_poll_ns": 1}, 2)
    vm = FakeVM(accepts={143}, answers={143: 14})
    with pytest.raises(IdlePolicyError, match=r"mwait not allowed .* mask is 0xe \(cstate, hlt, pause\)"):
        apply_before_vcpus(vm, IdlePolicy(idle_exits={"mwait", "hlt"}), "x86_64", host=x86, caps=CAPS)
    assert vm.calls == []
    a = apply_before_vcpus(vm, IdlePolicy(idle_exits={"mwait", "hlt"}, allow_fallback=True),
                           "x86_64", host=x86, caps=CAPS)
    assert vm.calls == [(143, (2,))] and a.idle_exits == {"hlt"} and a.fallbacks
    with pytest.raises(IdlePolicyError, match="only be set before vCPUs"):
        apply_live(vm, IdleChange(idle_exits=frozenset({"hlt", "pause"})), a, host=x86, caps=CAPS)


# --- real /dev/kvm on this x86_64 machine -----------------------------------------------------

needs_x86_kvm = pytest.mark.skipif(
    platform.machine() != "x86_64" or not os.access("/dev/kvm", os.R_OK | os.W_OK),
    reason="needs x86_64 /dev/kvm")


@pytest.fixture
def raw_vm():
    kvm = Kvm.open()
    vm = Vm(kvm)
    yield kvm, vm
    vm.close()
    kvm.close()


@needs_x86_kvm
def test_real_x86_disable_exits_and_halt_poll(raw_vm):
    _, vm = raw_vm
    a = apply_before_vcpus(vm, IdlePolicy(idle_exits={"hlt", "pause"}, halt_poll_ns=1000), "x86_64",
                           caps=CAPS)
    assert a.exits["hlt"].source == SRC_VM_X86_DISABLE_EXITS
    assert a.exits["mwait"].source == SRC_DEFAULT
    assert (a.halt_poll_ns, a.halt_poll_source) == (1000, SRC_VM_HALT_POLL)
    assert any("PV_UNHALT" in n for n in a.notes)
    b = apply_live(vm, IdleChange(halt_poll_ns=0), a, caps=CAPS)
    assert b.halt_poll_ns == 0


@needs_x86_kvm
def test_real_x86_mwait_refused_by_mask(raw_vm):
    _, vm = raw_vm
    assert vm.check_extension(143) == 14
    with pytest.raises(IdlePolicyError, match="mwait not allowed"):
        apply_before_vcpus(vm, IdlePolicy(idle_exits={"mwait"}), "x86_64", caps=CAPS)


@needs_x86_kvm
def test_real_x86_disable_exits_after_vcpu_refused(raw_vm):
    _, vm = raw_vm
    vcpu = Vcpu(vm, 0)
    try:
        with pytest.raises(IdlePolicyError, match="must come before any vCPU"):
            apply_before_vcpus(vm, IdlePolicy(idle_exits={"hlt"}), "x86_64", caps=CAPS)
    finally:
        vcpu.close()


class _Vcpu:
    def __init__(self, index, tid):
        self.index, self.thread_id = index, tid


def test_apply_affinity_on_a_real_thread():
    import threading
    ev, tid = threading.Event(), []
    t = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), ev.wait(5)))
    t.start()
    while not tid:
        pass
    try:
        cpu = min(os.sched_getaffinity(0))
        got = apply_affinity([_Vcpu(0, tid[0])], IdlePolicy(cpu_affinity={0: {cpu}}))
        assert got == {0: {cpu}} and os.sched_getaffinity(tid[0]) == {cpu}
        with pytest.raises(IdlePolicyError, match="vCPU 1: the VM has vCPUs \\[0\\]"):
            apply_affinity([_Vcpu(0, tid[0])], IdlePolicy(cpu_affinity={1: {cpu}}))
        with pytest.raises(IdlePolicyError, match="not running yet"):
            apply_affinity([_Vcpu(0, None)], IdlePolicy(cpu_affinity={0: {cpu}}))
        with pytest.raises(IdlePolicyError, match="CPUs \\[4096\\] not in"):
            apply_affinity([_Vcpu(0, tid[0])], IdlePolicy(cpu_affinity={0: {4096}}))
    finally:
        ev.set()
        t.join()
