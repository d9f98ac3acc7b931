"""pyvmm.idle.measure (rates, totals, cross-checks) and pyvmm.idle.bench (policy specs; results: test_idle_sweep)."""

from __future__ import annotations

import os

import pytest

from pyvmm.idle.bench import parse_policy_spec, with_default_pin
from pyvmm.idle.sweep import percentile
from pyvmm.idle.measure import VcpuStatsSampler, interval, observed_effects, render_interval, totals
from pyvmm.idle.policy import PolicyParseError


def sample(t_s, **vcpu):
    v = {"index": 0, "tid": 1, "stats": None, "cpu_s": None, "wait_s": None, "last_cpu": None, "state": "S"}
    v.update(vcpu)
    return {"monotonic_ns": int(t_s * 1e9), "vcpus": [v], "runqueue": {"1": {"nr_running": 2, "source": "t"}}}


def test_interval_rates_per_second_and_percentages():
    a = sample(10, stats={"exits": 100, "wfi_exit_stat": 50, "halt_wait_ns": 500_000_000, "blocking": False},
               cpu_s=1.0, wait_s=0.0, last_cpu=1)
    b = sample(12, stats={"exits": 1100, "wfi_exit_stat": 1050, "halt_wait_ns": 2_100_000_000, "blocking": True},
               cpu_s=1.5, wait_s=0.02, last_cpu=1)
    iv = interval(a, b)
    row = iv["vcpus"][0]
    assert iv["interval_s"] == 2
    assert row["rates"]["exits"] == 500 and row["rates"]["wfi_exit_stat"] == 500
    assert row["rates"]["halt_wait_ns"] == pytest.approx(0.8e9)  # ns waited per second, as the name says
    assert row["cpu_percent"] == pytest.approx(25) and row["wait_percent"] == pytest.approx(1)
    assert row["runqueue"] == 2
    table = "\n".join(render_interval(iv))
    assert "500" in table and "80.0" in table and "25.0" in table
    with pytest.raises(ValueError):
        interval(b, a)


def test_the_table_shows_only_the_stats_this_host_has():
    x86 = interval(sample(0, stats={"exits": 0, "halt_exits": 0}), sample(1, stats={"exits": 10, "halt_exits": 9}))
    header = render_interval(x86)[0].split()
    assert "halt/s" in header and "wfi/s" not in header and "wfe/s" not in header and "poll%" not in header
    assert {"wfi/s", "wfe/s", "poll%"} <= set(render_interval(x86, all_columns=True)[0].split())


def test_interval_tolerates_missing_stats_and_exited_threads():
    iv = interval(sample(0), sample(1))
    row = iv["vcpus"][0]
    assert row["rates"] == {} and row["cpu_percent"] is None and row["runqueue"] is None
    assert "-" in render_interval(iv, all_columns=True)[1]


def test_totals_keep_counts_exact():
    first = sample(0, stats={"exits": 5, "halt_exits": 2}, cpu_s=0.5)
    last = sample(1, stats={"exits": 25, "halt_exits": 12, "blocking": False}, cpu_s=0.75)
    t = totals(first, last)["vcpus"][0]
    assert t["stats"] == {"exits": 20, "halt_exits": 10, "blocking": False} and isinstance(t["stats"]["exits"], int)
    assert t["cpu_s"] == pytest.approx(0.25)
    assert totals(None, last)["vcpus"][0]["stats"]["exits"] == 25


def test_observed_effects_flags_passthrough_that_still_traps():
    vc = [{"index": 0, "stats": {"halt_exits": 7, "wfi_exit_stat": 0}}]
    assert "halt_exits counted 7" in observed_effects({"idle_exits": ["hlt"]}, vc)[0]
    assert observed_effects({"idle_exits": []}, vc) == []
    assert observed_effects({"wfx_passthrough": ["wfi"]}, vc) == []


def test_sampler_without_stats_fd_or_thread():
    class NoStats:
        index, thread_id = 0, None

        def stats_fd(self):
            raise OSError(25, "Inappropriate ioctl")

    s = VcpuStatsSampler([NoStats()])
    out = s.sample()
    assert out["vcpus"][0]["stats"] is None and out["vcpus"][0]["cpu_s"] is None
    s.close()


def test_sampler_reads_own_thread_times():
    import threading

    class Me:
        index, thread_id = 0, threading.get_native_id()

        def stats_fd(self):
            raise OSError(25, "no")

    v = VcpuStatsSampler([Me()]).sample()["vcpus"][0]
    assert v["cpu_s"] is not None and v["cpu_s"] >= 0 and v["last_cpu"] in os.sched_getaffinity(0) | {v["last_cpu"]}


def test_policy_specs():
    assert parse_policy_spec("default").policy.wfx_trap_threshold is None
    s = parse_policy_spec("threshold=0,halt-poll=0")
    assert s.policy.wfx_trap_threshold == 0 and s.policy.halt_poll_ns == 0 and s.label == "threshold=0,halt-poll=0"
    assert parse_policy_spec("passthrough=wfi+wfe").policy.wfx_passthrough == {"wfi", "wfe"}
    assert parse_policy_spec("idle-exits=hlt+pause").policy.idle_exits == {"hlt", "pause"}
    assert parse_policy_spec("pin=1").policy.cpu_affinity == {0: {1}}
    assert parse_policy_spec("threshold=1", allow_fallback=True).policy.allow_fallback
    for bad in ("thresh=1", "threshold", "threshold=-1", "threshold=1,threshold=2", "passthrough=hlt"):
        with pytest.raises(PolicyParseError):
            parse_policy_spec(bad)


def test_percentile():
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(101)), 99) == 99
    assert percentile([1, 2], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_default_pin_only_where_the_policy_has_none():
    pinned, free = parse_policy_spec("threshold=1,pin=0"), parse_policy_spec("threshold=1")
    assert with_default_pin(pinned, {0: {1}}).policy.cpu_affinity == {0: {0}}
    got = with_default_pin(free, {0: {1}})
    assert got.policy.cpu_affinity == {0: {1}} and got.label == "threshold=1" and free.policy.cpu_affinity == {}
