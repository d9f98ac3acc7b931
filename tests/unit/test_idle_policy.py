"""pyvmm.idle.policy: the policy model and its CLI string parsers."""

import pytest

from pyvmm.idle.policy import (
    IdlePolicy, PolicyParseError, parse_affinity, parse_cpu_list, parse_name_set, WFX_NAMES,
)


def test_name_sets():
    assert parse_name_set("wfi,wfe", WFX_NAMES, "x") == {"wfi", "wfe"}
    assert parse_name_set(" WFI ", WFX_NAMES, "x") == {"wfi"}
    assert parse_name_set("none", WFX_NAMES, "x") == frozenset()
    with pytest.raises(PolicyParseError, match="--wfx-passthrough: unknown 'hlt' in 'wfi,hlt'"):
        parse_name_set("wfi,hlt", WFX_NAMES, "--wfx-passthrough")


def test_cpu_lists():
    assert parse_cpu_list("2") == {2}
    assert parse_cpu_list("0,2-4") == {0, 2, 3, 4}
    with pytest.raises(PolicyParseError, match="'a' is not a CPU"):
        parse_cpu_list("1,a")
    with pytest.raises(PolicyParseError, match="bad CPU range '3-1'"):
        parse_cpu_list("3-1")


def test_affinity():
    assert parse_affinity("0=2,1=3") == {0: {2}, 1: {3}}
    assert parse_affinity("0=2-3") == {0: {2, 3}}
    assert parse_affinity("0=2,4,1=3") == {0: {2, 4}, 1: {3}}


@pytest.mark.parametrize("text,msg", [
    ("x=1", "vCPU 'x' is not a number"),
    ("0=1,0=2", "vCPU 0 given twice"),
    ("2", "'2' before any VCPU=CPUS"),
    ("0=1,,1=2", "empty item"),
    ("0=z", "vCPU 0: 'z' is not a CPU"),
    ("-1=2", "is negative"),
])
def test_affinity_errors_name_the_bad_part(text, msg):
    with pytest.raises(PolicyParseError, match=msg):
        parse_affinity(text)


def test_from_strings():
    p = IdlePolicy.from_strings(wfx_trap_threshold="2", wfx_passthrough="wfe", halt_poll_ns="0x100",
                                idle_exits="hlt,pause", cpu_affinity="0=1", allow_fallback=True)
    assert p == IdlePolicy(2, frozenset({"wfe"}), 256, frozenset({"hlt", "pause"}), True, {0: {1}})
    assert p.wants_arm and p.wants_x86
    assert not IdlePolicy().wants_arm and IdlePolicy().cpu_affinity == {}


@pytest.mark.parametrize("kw,msg", [
    (dict(wfx_trap_threshold="-1"), "--wfx-trap-threshold: -1 is out of range"),
    (dict(wfx_trap_threshold="many"), "--wfx-trap-threshold: 'many' is not an integer"),
    (dict(halt_poll_ns=str(2**32)), "--halt-poll-ns: 4294967296 is out of range"),
    (dict(idle_exits="hlt,wfi"), "--idle-exits: unknown 'wfi'"),
])
def test_from_strings_errors(kw, msg):
    with pytest.raises(PolicyParseError, match=msg):
        IdlePolicy.from_strings(**kw)


def test_direct_validation():
    with pytest.raises(PolicyParseError, match="wfx_passthrough: unknown hlt"):
        IdlePolicy(wfx_passthrough={"hlt"})
    with pytest.raises(PolicyParseError, match="vCPU 0 has an empty CPU set"):
        IdlePolicy(cpu_affinity={0: set()})
    assert IdlePolicy(wfx_passthrough=["wfi"]).wfx_passthrough == frozenset({"wfi"})
