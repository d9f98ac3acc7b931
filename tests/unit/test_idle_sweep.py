"""`pyvmm bench idle` results (pyvmm.idle.sweep): per-run metrics, cells with their spread over repeats, the table,
CSV (and back), JSON and the plot, from synthetic runs."""

from __future__ import annotations

import pytest

from pyvmm.idle.cpuidle import IdleResidency, StateResidency
from pyvmm.idle.hostsched import PeltObservation, RunqueueObservation
from pyvmm.idle.sweep import METRICS, RunMeasure, aggregate, read_csv, render_table, to_json, write_csv, write_plot

NOT_EXPOSED = IdleResidency(None, "not exposed: no cpuidle driver bound (current_driver: none)")


def run(policy="threshold=1", level=1, wfi=50, util=1000.0, rq=2.0, lat=(100.0, 200.0, 300.0), cpu_s=0.5,
        idle=NOT_EXPOSED):
    stats = {"exits": 400, "wfi_exit_stat": wfi, "wfe_exit_stat": 0, "halt_wait_ns": 1_000_000_000}
    return RunMeasure(policy, level, 2.0, 50, stats, dict(stats), cpu_s, list(lat),
                      [RunqueueObservation(1, rq, 3, 40, rq + 0.1, "nr_running sampled from /sys/kernel/debug/sched/debug")],
                      [PeltObservation(11, 40, util, 1024, util, util, "sampled from /proc/1/task/11/sched")], idle)


def test_metrics_of_one_run():
    r = run()
    got = {m.key: m.get(r) for m in METRICS}
    assert got["wfi_per_period"] == 1.0 and got["wfe_per_period"] == 0.0 and got["exits_per_s"] == 200
    assert got["halt_wait_percent"] == 50.0 and got["host_cpu_percent"] == 25.0 and got["host_cpu_ms"] == 500
    assert (got["wake_p50_us"], got["wake_max_us"]) == (200.0, 300.0) and got["wake_p99_us"] == pytest.approx(298)
    assert (got["rq_sampled"], got["rq_max"], got["rq_time_mean"]) == (2.0, 3, pytest.approx(2.1))
    assert got["util_avg"] == 1000 and got["load_avg"] == 1000
    assert got["idle_percent"] is None and got["halt_per_period"] is None  # not exposed / not this arch


def test_rates_and_shares_over_the_measured_interval_counts_over_the_whole_run():
    r = run(wfi=50)
    r.interval_stats = {"exits": 100, "wfi_exit_stat": 40, "halt_wait_ns": 500_000_000}  # the first periods came earlier
    got = {m.key: m.get(r) for m in METRICS}
    assert got["exits_per_s"] == 50 and got["halt_wait_percent"] == 25 and got["wfi_per_period"] == 1.0


def test_spread_over_repeats_and_table():
    cells = [aggregate("threshold=1", 0, [run(level=0, wfi=0, rq=1.0), run(level=0, wfi=2, rq=1.0)]),
             aggregate("threshold=1", 1, [run(wfi=50), run(wfi=49)]),
             aggregate("threshold=2", 1, [], error="run 1 refused or failed: lacks the cap")]
    s = cells[1].values["wfi_per_period"]
    assert (s.low, s.high, s.mean) == (0.98, 1.0, 0.99) and s.stdev == pytest.approx(0.01414, abs=1e-4)
    text = render_table(cells)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["policy", "contention", "runs"] and "rq depth" in lines[0]
    assert "idle %" not in lines[0]  # not exposed: no column of zeros
    assert "0.99 [0.98-1.00]" in lines[2] and "0.02 [0.00-0.04]" in lines[1]
    assert "threshold=2 @1: run 1 refused or failed: lacks the cap" in text
    assert "source: not exposed: no cpuidle driver bound (current_driver: none)" in text


def test_idle_residency_shows_where_exposed():
    idle = IdleResidency({1: [StateResidency("WFI", 0.2, 10, 0.1), StateResidency("cpu-sleep", 1.0, 5, 0.5)]},
                         "cpuidle driver psci_idle")
    cell = aggregate("default", 0, [run(idle=idle)])
    assert cell.values["idle_percent"].mean == pytest.approx(60) and cell.values["deepest_idle_percent"].mean == 50


def test_csv_round_trip_and_json(tmp_path):
    cells = [aggregate("default", 0, [run(level=0), run(level=0, wfi=40)]), aggregate("default", 2, [run(level=2)])]
    write_csv(cells, tmp_path / "b.csv")
    back = read_csv(tmp_path / "b.csv")
    assert [(c.policy, c.contention, c.runs) for c in back] == [("default", 0, 2), ("default", 2, 1)]
    assert back[0].values["wfi_per_period"] == cells[0].values["wfi_per_period"]
    assert back[1].values["util_avg"].stdev is None
    j = to_json(cells)
    assert j[0]["metrics"]["wfi_per_period"] == {"mean": 0.9, "min": 0.8, "max": 1.0,
                                                 "stdev": pytest.approx(0.1414, abs=1e-4)}


@pytest.mark.parametrize("levels", [(0, 1, 2), (None,)])
def test_plot_one_panel_per_metric(tmp_path, levels):
    pytest.importorskip("matplotlib")
    cells = [aggregate(p, lv, [run(p, lv, wfi=50 if p == "threshold=1" else 0)])
             for p in ("threshold=1", "threshold=100") for lv in levels]
    write_plot(cells, tmp_path / "b.png", "test")
    data = (tmp_path / "b.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
