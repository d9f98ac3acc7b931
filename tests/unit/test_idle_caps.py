"""pyvmm.idle.caps: one table, overrides by environment and argument, collisions flagged."""

import pytest

from pyvmm.idle.caps import CapError, cap_table, parse_cap_override


def test_builtin_numbers():
    t = cap_table(environ={})
    assert t.number("KVM_CAP_HALT_POLL") == 182
    assert t.number("X86_DISABLE_EXITS") == 143
    assert t.number("ARM_WFX_TRAP_RUNQUEUE_DEPTH") == 236
    assert t.number("arm_disable_exits") == 248
    assert t["ARM_DISABLE_EXITS"].source == "built-in"


def test_236_collides_with_pre_fault_memory():
    t = cap_table(environ={})
    assert t["ARM_WFX_TRAP_RUNQUEUE_DEPTH"].collides_with == "KVM_CAP_PRE_FAULT_MEMORY"
    assert t["ARM_DISABLE_EXITS"].collides_with is None
    moved = cap_table({"ARM_WFX_TRAP_RUNQUEUE_DEPTH": 300}, environ={})
    assert moved["ARM_WFX_TRAP_RUNQUEUE_DEPTH"].collides_with is None


def test_environment_then_argument_precedence():
    env = {"PYVMM_CAP_ARM_DISABLE_EXITS": "0x100", "PYVMM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH": "240"}
    t = cap_table(environ=env)
    assert t.number("ARM_DISABLE_EXITS") == 256
    assert t["ARM_DISABLE_EXITS"].source == "environment PYVMM_CAP_ARM_DISABLE_EXITS"
    t = cap_table({"KVM_CAP_ARM_DISABLE_EXITS": 250}, environ=env)
    assert t.number("ARM_DISABLE_EXITS") == 250 and t["ARM_DISABLE_EXITS"].source == "argument"
    assert t.number("ARM_WFX_TRAP_RUNQUEUE_DEPTH") == 240


def test_bad_environment_value_names_variable():
    with pytest.raises(CapError, match="PYVMM_CAP_ARM_DISABLE_EXITS: 'abc'"):
        cap_table(environ={"PYVMM_CAP_ARM_DISABLE_EXITS": "abc"})


def test_upstream_caps_not_overridable():
    with pytest.raises(CapError, match="cannot be overridden"):
        cap_table({"HALT_POLL": 1}, environ={})


def test_parse_cap_override():
    assert parse_cap_override("ARM_DISABLE_EXITS=249") == ("KVM_CAP_ARM_DISABLE_EXITS", 249)
    assert parse_cap_override("kvm_cap_arm_wfx_trap_runqueue_depth=0xf0") == (
        "KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH", 240)
    with pytest.raises(CapError, match="expected NAME=NUMBER"):
        parse_cap_override("ARM_DISABLE_EXITS")
    with pytest.raises(CapError, match="'HALT_POLL' is not an out-of-tree"):
        parse_cap_override("HALT_POLL=3")
    with pytest.raises(CapError, match="'x' is not a capability number"):
        parse_cap_override("ARM_DISABLE_EXITS=x")
    with pytest.raises(CapError, match="out of range"):
        parse_cap_override("ARM_DISABLE_EXITS=-1")


def test_unknown_lookup():
    with pytest.raises(KeyError, match="unknown capability"):
        cap_table(environ={})["NOPE"]
