"""`pyvmm bench idle` on this host's real /dev/kvm: table, CSV, plot and refusals."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

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


def hogs_left() -> list[int]:
    """Busy tasks of pyvmm.idle.contend still alive anywhere on this host (none may outlive their bench)."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"os.getppid() == parent" in (d / "cmdline").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def test_bench_idle_contention_sweep(tmp_path):
    """--contend: policies x levels, the scheduler's view per cell, host context; the busy tasks are gone after."""
    out_csv = tmp_path / "c.csv"
    r = run_pyvmm("bench", "idle", "--policy", "default", "--policy", "halt-poll=0", "--contend", "0,1", "--repeat", "2",
                  "--periods", "20", "--csv", str(out_csv), timeout=180)
    out = r.stdout.decode()
    print(out)
    assert r.returncode == 0, r.stderr.decode()
    assert out.splitlines()[0].split()[:3] == ["policy", "contention", "runs"]
    rows = list(csv.DictReader(out_csv.open()))
    assert [(row["policy"], row["contention"], row["runs"]) for row in rows] == [
        ("default", "0", "2"), ("default", "1", "2"), ("halt-poll=0", "0", "2"), ("halt-poll=0", "1", "2")]
    for row in rows:
        assert 0.9 <= float(row["halt/period"]) <= 1.2 and float(row["halt/period min"]) <= float(row["halt/period"])
        assert float(row["wake median us"]) <= float(row["wake p99 us"]) <= float(row["wake max us"])
    cpu = max(os.sched_getaffinity(0))
    assert f"pinning: vCPU 0={cpu} for every policy without pin=" in out
    assert "host preemption: " in out and "host CPUs: online" in out and "host idle states: " in out
    assert hogs_left() == []
    if importlib.util.find_spec("matplotlib"):  # the PNG drawn later, where matplotlib is, from the CSV alone
        png = tmp_path / "c.png"
        r = run_pyvmm("bench", "plot", str(out_csv), "-o", str(png), timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        assert png.read_bytes()[:4] == b"\x89PNG"
        (tmp_path / "bad.csv").write_text("policy,runs\nx,1\n")
        r = run_pyvmm("bench", "plot", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "bad.png"))
        assert r.returncode == 65 and b"not a `pyvmm bench idle --csv` file" in r.stderr


def test_bench_idle_json_has_host_context_and_cells():
    r = run_pyvmm("bench", "idle", "--policy", "default", "--contend", "1", "--repeat", "1", "--periods", "5", "--json",
                  timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    d = json.loads(r.stdout)
    assert set(d) == {"host", "pinning", "cells"} and d["host"]["preemption"]["source"]
    (cell,) = d["cells"]
    assert (cell["policy"], cell["contention"], cell["runs"]) == ("default", 1, 1)
    assert set(cell["metrics"]["halt_per_period"]) == {"mean", "min", "max", "stdev"}
    assert hogs_left() == []


@pytest.mark.parametrize("opts, words", [
    (("--contend", "-1"), "-1 is negative"),
    (("--contend", "0,9"), "over the limit of 8"),
    (("--contend", "1,1"), "given twice"),
    (("--contend", "1", "--cpu-affinity", "0=4096"), "CPU 4096 does not exist on this host"),
    (("--policy", "halt-poll=0,pin=4096"), "CPU 4096 does not exist on this host"),
])
def test_bench_idle_bad_contention_is_one_line_and_starts_nothing(opts, words):
    r = run_pyvmm("bench", "idle", "--repeat", "1", "--periods", "2", *opts, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 64 and err.count("\n") == 1 and words in err, err
    assert r.stdout == b"" and hogs_left() == []
