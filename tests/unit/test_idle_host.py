"""pyvmm.idle.host: parsers, host probe and mechanism probing (real /dev/kvm on x86_64)."""

from __future__ import annotations

import errno
import os
import platform

import pytest

from pyvmm.idle.caps import cap_table
from pyvmm.idle.host import (
    ABSENT, AMBIGUOUS, AVAILABLE, HostInfo, normalize_arch, parse_cmdline, parse_kernel_version, probe_host,
    probe_mechanisms,
)

CAPS = cap_table(environ={})


def test_parse_cmdline_stops_at_double_dash():
    p = parse_cmdline('console=ttyAMA0 quiet kvm-arm.wfi_trap_policy=notrap x="a b" -- init=arg\n')
    assert p == {"console": "ttyAMA0", "quiet": "", "kvm-arm.wfi_trap_policy": "notrap", "x": "a b"}


def test_versions_and_arch():
    assert parse_kernel_version("6.12.117-wfx") == (6, 12)
    assert parse_kernel_version("garbage") == (0, 0)
    assert normalize_arch("aarch64") == "arm64" and normalize_arch("x86_64") == "x86_64"


def test_wfx_policy_honoured_only_from_6_11():
    new = HostInfo("arm64", "6.12.1", {"kvm-arm.wfi_trap_policy": "notrap"}, {}, 1)
    old = HostInfo("arm64", "6.1.0", {"kvm-arm.wfi_trap_policy": "notrap"}, {}, 1)
    assert new.effective_wfx_trap_policy("wfi") == "notrap"
    assert new.effective_wfx_trap_policy("wfe") is None
    assert old.effective_wfx_trap_policy("wfi") is None and old.wfx_trap_policy("wfi") == "notrap"
    assert new.kvm_arm_params == {"kvm-arm.wfi_trap_policy": "notrap"}


def test_probe_this_host():
    h = probe_host()
    assert h.arch == normalize_arch(platform.machine())
    assert h.kernel_release == platform.release()
    assert h.cpu_count == os.cpu_count()
    if os.path.exists("/sys/module/kvm/parameters/halt_poll_ns"):
        with open("/sys/module/kvm/parameters/halt_poll_ns") as f:
            assert h.kvm_module_params["halt_poll_ns"] == int(f.read())


needs_x86_kvm = pytest.mark.skipif(
    platform.machine() != "x86_64" or not os.access("/dev/kvm", os.R_OK | os.W_OK),
    reason="needs x86_64 /dev/kvm")


@needs_x86_kvm
def test_probe_mechanisms_real_x86():
    m = {x.name: x for x in probe_mechanisms(caps=CAPS)}
    assert m["x86_disable_exits"].status == AVAILABLE and m["x86_disable_exits"].check_extension == 14
    assert m["halt_poll"].status == AVAILABLE and m["halt_poll"].check_extension == 1
    assert m["arm_wfx_trap_runqueue_depth"].status == ABSENT
    assert "EINVAL" in m["arm_wfx_trap_runqueue_depth"].reason
    assert m["arm_disable_exits"].status == ABSENT


@needs_x86_kvm
def test_probe_mechanisms_with_system_fd_and_no_trial():
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        m = {x.name: x for x in probe_mechanisms(kvm, caps=CAPS, trial=False)}
        assert m["x86_disable_exits"].check_extension == 14
        assert "not verified" in m["halt_poll"].reason
        os.fstat(kvm)  # the caller's fd is left open
    finally:
        os.close(kvm)


class FakeVM:
    def __init__(self, answers, accepts):
        self.answers, self.accepts, self.calls = answers, accepts, []

    def check_extension(self, cap):
        return self.answers.get(cap, 0)

    def enable_cap(self, cap, *args):
        self.calls.append((cap, args))
        if cap not in self.accepts:
            raise OSError(errno.EINVAL, "Invalid argument")


ARM = HostInfo("arm64", "6.12.117-wfx", {}, {"halt_poll_ns": 500}, 2)


def test_ambiguous_without_trial():
    stock = FakeVM({236: 1, 248: 0, 182: 1}, set())
    m = {x.name: x for x in probe_mechanisms(stock, caps=CAPS, host=ARM, trial=False)}
    assert m["arm_wfx_trap_runqueue_depth"].status == AMBIGUOUS
    assert "KVM_CAP_PRE_FAULT_MEMORY" in m["arm_wfx_trap_runqueue_depth"].reason
    assert m["arm_disable_exits"].status == ABSENT
    assert stock.calls == []


def test_trial_resolves_ambiguity_on_throwaway_vm_only():
    target = FakeVM({236: 1, 248: 3, 182: 1}, set())
    patched = FakeVM({}, {236, 248, 182})
    m = {x.name: x for x in probe_mechanisms(target, caps=CAPS, host=ARM, trial_vm=patched)}
    assert m["arm_wfx_trap_runqueue_depth"].status == AVAILABLE
    assert m["arm_disable_exits"].status == AVAILABLE and m["arm_disable_exits"].check_extension == 3
    assert target.calls == []  # the user's VM is never modified
    assert (236, (1,)) in patched.calls and (248, (0,)) in patched.calls and (182, (500,)) in patched.calls
    assert m["kvm-arm.wfi_trap_policy"].status == AVAILABLE
    stock = FakeVM({}, {182})
    m = {x.name: x for x in probe_mechanisms(target, caps=CAPS, host=ARM, trial_vm=stock)}
    assert m["arm_wfx_trap_runqueue_depth"].status == ABSENT


def test_old_arm_kernel_has_no_trap_policy_param():
    old = HostInfo("arm64", "6.1.0", {}, {}, 1)
    m = {x.name: x for x in probe_mechanisms(FakeVM({}, set()), caps=CAPS, host=old, trial=False)}
    assert m["kvm-arm.wfe_trap_policy"].status == ABSENT and "< 6.11" in m["kvm-arm.wfe_trap_policy"].reason


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_probe_mechanisms_real_any_arch():
    """On any host: halt polling exists; status always agrees with the KVM_ENABLE_CAP trial."""
    host = probe_host()
    for m in probe_mechanisms(caps=CAPS, host=host):
        if m.cap is None:
            continue
        accepted = "accepted" in m.reason
        wrong_arch = m.arch is not None and m.arch != host.arch
        assert m.status == (AVAILABLE if accepted and not wrong_arch else ABSENT), m
        if m.name == "halt_poll":
            assert m.status == AVAILABLE
