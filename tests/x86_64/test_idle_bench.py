"""`pyvmm bench idle` on this host's real /dev/kvm: table, CSV, plot and refusals."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import run_pyvmm


def test_bench_idle_table_csv_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out_csv, out_png = tmp_path / "idle.csv", tmp_path / "idle.png"
    r = run_pyvmm("bench", "idle", "--policy", "default", "--policy", "halt-poll=0", "--policy", "idle-exits=hlt",
                  "--repeat", "2", "--periods", "40", "--csv", str(out_csv), "--plot", str(out_png), timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    print(r.stdout.decode())
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["policy", "runs", "exits/s"] and "wake median us" in lines[0]
    assert [ln.split()[0] for ln in lines[1:4]] == ["default", "halt-poll=0", "idle-exits=hlt"]
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["runs"] for r in rows] == ["2", "2", "2"]
    default = rows[0]
    assert 0.9 <= float(default["halt/period"]) <= 1.2  # one HLT exit per timer period
    assert float(default["exits/s"]) > 100 and float(default["host CPU ms"]) > 0
    assert 0 < float(default["wake median us"]) <= float(default["wake p99 us"])
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_bench_idle_reports_refused_policies_and_bad_specs():
    r = run_pyvmm("bench", "idle", "--policy", "threshold=0", "--repeat", "1", "--periods", "5", timeout=60)
    assert r.returncode == 1
    assert b"threshold=0: run 1 refused or failed: WFI/WFE settings" in r.stdout
    r = run_pyvmm("bench", "idle", "--policy", "sleep=1")
    assert r.returncode == 64 and r.stderr.decode().count("\n") == 1 and b"KEY=VALUE" in r.stderr
