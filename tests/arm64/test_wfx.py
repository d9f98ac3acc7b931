"""Per-VM WFx trapping on real arm64 KVM inside the lane. Run once on the custom host kernel (both per-VM WFx
capabilities, /work/shared/arm64-host) and once on Debian's stock 6.12 (neither); PYVMM_LANE_HOST_KERNEL says
which, and each test skips on the other kind. Under emulation WFE never traps and a WFI traps only when it
would wait, so only WFI counts are asserted, as >= 95% of N ("trapped") or <= 5% ("not trapped").
Times measured here are pass/fail evidence only, never performance figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pyvmm_guests

from pyvmm.api.client import Client, RefusedError
from tests.conftest import run_pyvmm

IDLE = str(pyvmm_guests.path("arm64", "idle"))
N = 100
# Timer period in microseconds. Measured in this lane: at 2 ms the emulated L2 often reaches its WFI after the
# deadline (the WFI then completes without waiting, so it cannot trap: only 12-23 of 50 trapped, whatever the
# policy); from 10 ms on, 48-50 of 50 WFIs block. 20 ms keeps every WFI a blocking one.
PERIOD_US = 20000
APPEND = os.environ.get("PYVMM_LANE_APPEND", "")
NOTRAP = "kvm-arm.wfi_trap_policy=notrap" in APPEND


@pytest.fixture
def custom(lane_host_kernel):
    if lane_host_kernel.kind != "custom":
        pytest.skip(f"needs the custom host kernel with the per-VM WFx caps; this lane runs {lane_host_kernel.kind} "
                    f"{lane_host_kernel.release}")
    if NOTRAP:
        pytest.skip("the host's kvm-arm.wfi_trap_policy=notrap overrides per-VM thresholds")


@pytest.fixture
def stock(lane_host_kernel):
    if lane_host_kernel.kind != "stock":
        pytest.skip(f"stock-kernel behaviour; this lane runs the {lane_host_kernel.kind} kernel "
                    f"{lane_host_kernel.release}")


def run_idle(tmp_path, *opts, n=N, expect=0):
    out = tmp_path / f"s{len(list(tmp_path.iterdir()))}.json"
    r = run_pyvmm("run", "--no-stdin", "-k", IDLE, "--guest-arg", str(n), "--guest-arg", str(PERIOD_US),
                  "--stats-json", str(out), *opts, timeout=240)
    assert r.returncode == expect, r.stderr.decode()
    return json.loads(out.read_text()) if expect == 0 else r


def wfi(d) -> int:
    return d["vcpus"][0]["stats"]["wfi_exit_stat"]


def test_threshold_0_traps_every_blocking_wfi(custom, tmp_path):
    d = run_idle(tmp_path, "--wfx-trap-threshold", "0")
    assert d["policy"]["wfx_trap_threshold"] == 0
    assert d["policy"]["exits"]["wfi"]["source"] == "per-VM cap KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH"
    assert len(d["testdev_data"]) == N + 1 and d["testdev_data"][0] > 0  # CNTFRQ, then one latency per period
    assert wfi(d) >= 0.95 * N, d["vcpus"]


@pytest.mark.parametrize("opts", [("--wfx-trap-threshold", "100"), ("--wfx-passthrough", "wfi"),
                                  ("--wfx-passthrough", "wfi", "--wfx-trap-threshold", "0")])
def test_high_threshold_or_wfi_passthrough_stop_the_traps(custom, tmp_path, opts):
    d = run_idle(tmp_path, *opts)
    assert wfi(d) <= 0.05 * N, d["vcpus"]
    if "--wfx-passthrough" in opts:
        assert d["policy"]["exits"]["wfi"]["source"] == "per-VM cap KVM_CAP_ARM_DISABLE_EXITS"
        assert d["observed"] == []


@pytest.fixture
def live_vm(tmp_path):
    def start(*opts):
        sock = tmp_path / "vm.sock"
        proc = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", IDLE,
                                 "--guest-arg", "1000000", "--guest-arg", str(PERIOD_US), "--api-socket", str(sock),
                                 *opts],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 120
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "control socket never appeared"
            time.sleep(0.1)
        time.sleep(1)
        return sock, proc

    procs: list = []
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(30)


def window(c, seconds=3.0):
    """(timer periods, trapped WFIs) over a window; each period ends with one DATA write = one user MMIO exit."""
    a = c.request("stats")["vcpus"][0]["stats"]
    time.sleep(seconds)
    b = c.request("stats")["vcpus"][0]["stats"]
    return b["mmio_exit_user"] - a["mmio_exit_user"], b["wfi_exit_stat"] - a["wfi_exit_stat"]


def test_threshold_changed_through_the_socket_takes_effect(custom, live_vm):
    sock, proc = live_vm("--wfx-trap-threshold", "100")
    with Client(str(sock), timeout=60) as c:
        seen = []
        for threshold in (100, 0, 100):
            assert c.request("set", wfx_trap_threshold=threshold)["wfx_trap_threshold"] == threshold
            time.sleep(0.2)  # takes effect at each vCPU's next load
            periods, traps = window(c)
            seen.append((threshold, periods, traps))
            assert periods >= 10, seen
        print(f"threshold, periods, trapped WFIs per window: {seen}")
        (_, p1, t1), (_, p2, t2), (_, p3, t3) = seen
        assert t1 <= 0.05 * p1 and t2 >= 0.95 * p2 and t3 <= 0.05 * p3, seen
        c.request("stop")
    assert proc.wait(60) == 0


def test_wfi_passthrough_cannot_be_cleared(custom, live_vm):
    sock, proc = live_vm("--wfx-passthrough", "wfi")
    with Client(str(sock), timeout=60) as c:
        before = c.request("policy")
        with pytest.raises(RefusedError, match="one-way"):
            c.request("set", wfx_passthrough=[])
        assert c.request("policy") == before
        periods, traps = window(c)
        assert periods > 0 and traps <= 0.05 * periods and proc.poll() is None
        # Adding WFE to WFI is allowed (bits can only be added).
        assert c.request("set", wfx_passthrough=["wfi", "wfe"])["wfx_passthrough"] == ["wfe", "wfi"]
        c.request("stop")
    assert proc.wait(60) == 0


def test_bench_idle_table(custom, tmp_path):
    import importlib.util

    # matplotlib is in the [bench] extra, which the lane does not install: plot only where it exists.
    plot = ("--plot", str(tmp_path / "b.png")) if importlib.util.find_spec("matplotlib") else ()
    r = run_pyvmm("bench", "idle", "--repeat", "2", "--periods", "50", "--period-us", str(PERIOD_US),
                  "--csv", str(tmp_path / "b.csv"), *plot, timeout=900)
    out = r.stdout.decode()
    print("\npyvmm bench idle (emulated arm64 host: pass/fail evidence, not performance figures)\n" + out)
    assert r.returncode == 0, r.stderr.decode()
    import csv

    rows = {row["policy"]: row for row in csv.DictReader((tmp_path / "b.csv").open())}
    assert list(rows) == ["default", "threshold=0", "threshold=100", "passthrough=wfi"]
    wfi_per_period = {k: float(v["wfi/period"]) for k, v in rows.items()}
    # Trapping policies trap about one WFI per period, not always exactly: a WFI that finds its interrupt already
    # pending completes without trapping (HCR_EL2.TWI traps only a WFI that would wait), which happens when a busy
    # host delays the emulated vCPU past the timer's deadline.
    assert wfi_per_period["threshold=0"] >= 0.8 and wfi_per_period["default"] >= 0.8, wfi_per_period
    assert wfi_per_period["threshold=100"] <= 0.05 and wfi_per_period["passthrough=wfi"] <= 0.05, wfi_per_period
    assert all(float(v["wake median us"]) > 0 for v in rows.values())


def test_per_vm_request_refused_on_stock_kernel(stock, tmp_path):
    for opts, cap in ((("--wfx-trap-threshold", "0"), "KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH"),
                      (("--wfx-passthrough", "wfi"), "KVM_CAP_ARM_DISABLE_EXITS")):
        r = run_idle(tmp_path, *opts, expect=69)
        err = r.stderr.decode()
        print(err)
        assert err.count("\n") == 1 and err.startswith("pyvmm: error: "), err
        assert f"lacks {cap}" in err and "kvm-arm.wfi_trap_policy=notrap (now:" in err and "--cap-number" in err
        assert r.stdout == b""


def test_allow_fallback_runs_on_stock_kernel(stock, tmp_path):
    d = run_idle(tmp_path, "--wfx-trap-threshold", "0", "--allow-fallback")
    assert d["policy"]["wfx_trap_threshold"] is None and "lacks" in d["policy"]["fallbacks"][0]
    assert len(d["testdev_data"]) == N + 1


def test_host_trap_policy_shows_in_probe_and_counts(stock, tmp_path):
    r = run_pyvmm("probe", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    host = json.loads(r.stdout)["idle"]["host"]
    d = run_idle(tmp_path)
    if NOTRAP:
        assert host["wfi_trap_policy"] == "notrap" and host["trap_policy_honoured"]
        assert d["policy"]["exits"]["wfi"]["source"] == "host boot parameter"
        assert wfi(d) <= 0.05 * N, d["vcpus"]
        text = run_pyvmm("probe", timeout=120).stdout.decode()
        assert "kvm-arm.wfi_trap_policy=notrap" in text
    else:
        assert host["wfi_trap_policy"] is None
        assert wfi(d) >= 0.95 * N, d["vcpus"]  # stock default: WFI trapped (no GICv4 direct injection)


# --- the threshold under real contention (issue 14): the case KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH exists for -------
# vCPU 0 is pinned to host CPU 1 and a busy task is pinned beside it (or on the other CPU). The runqueue depth the
# vCPU sees at each load is then 2 (itself + the hog) or 1: threshold 1 must trap, threshold 2 must not.
VCPU_CPU = 1
HOG_SECONDS = 240  # a hog ends by itself even if its reaper never runs


@pytest.fixture
def hog():
    """Start a busy task pinned to a host CPU; every one is killed and reaped at the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(cpu: int) -> subprocess.Popen:
        code = (f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nend = time.monotonic() + {HOG_SECONDS}\n"
                "while time.monotonic() < end:\n    pass\n")
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
        procs.append(proc)
        time.sleep(0.5)  # pinned and spinning before anything is measured
        assert proc.poll() is None, "the hog did not start"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(30)


def pin_other_threads(c, pid: int, cpus: set[int]) -> None:
    """Move every thread of the pyvmm process except its vCPU threads (control socket, console) to `cpus`, as an
    administrator keeps housekeeping off a vCPU's CPU (`taskset -p` per thread)."""
    vcpu_tids = {v["tid"] for v in c.request("stats")["vcpus"]}
    for task in Path(f"/proc/{pid}/task").iterdir():
        if int(task.name) not in vcpu_tids:
            os.sched_setaffinity(int(task.name), cpus)


def trapped_share(c, min_periods=100, max_seconds=30.0):
    """(timer periods, trapped WFIs) over a window that covers at least `min_periods` idle periods."""
    a = c.request("stats")["vcpus"][0]["stats"]
    deadline = time.monotonic() + max_seconds
    while True:
        time.sleep(1.0)
        b = c.request("stats")["vcpus"][0]["stats"]
        periods = b["mmio_exit_user"] - a["mmio_exit_user"]
        if periods >= min_periods or time.monotonic() > deadline:
            return periods, b["wfi_exit_stat"] - a["wfi_exit_stat"]


def test_threshold_follows_a_hog_on_the_vcpus_cpu(custom, live_vm, hog):
    sock, proc = live_vm("--cpu-affinity", f"0={VCPU_CPU}", "--wfx-trap-threshold", "1")
    hog(VCPU_CPU)
    with Client(str(sock), timeout=60) as c:
        seen = []
        for threshold in (1, 2, 1):  # changed on the running VM
            assert c.request("set", wfx_trap_threshold=threshold)["wfx_trap_threshold"] == threshold
            time.sleep(0.2)  # takes effect at each vCPU's next load
            periods, traps = trapped_share(c)
            seen.append((threshold, periods, traps))
            assert periods >= 50, seen
        print(f"hog on the vCPU's CPU {VCPU_CPU}: threshold, periods, trapped WFIs: {seen}")
        (_, p1, t1), (_, p2, t2), (_, p3, t3) = seen
        # With the hog sharing its CPU the vCPU thread waits to run for part of every period, and a WFI that then
        # finds the timer already pending completes without trapping (HCR_EL2.TWI traps only a WFI that would wait):
        # on a busy host "trapped" is well above half the periods, "not trapped" stays near zero.
        assert t1 >= 0.5 * p1 and t2 <= 0.05 * p2 and t3 >= 0.5 * p3, seen
        c.request("stop")
    assert proc.wait(60) == 0


def test_a_hog_on_the_other_cpu_does_not_make_threshold_1_trap(custom, live_vm, hog):
    sock, proc = live_vm("--cpu-affinity", f"0={VCPU_CPU}", "--wfx-trap-threshold", "1")
    hog(1 - VCPU_CPU)
    with Client(str(sock), timeout=60) as c:
        # Measured here with pyvmm's other threads left free: each `stats` request woke one of them beside the
        # vCPU and 12 of 142 WFIs trapped. That is the reviewers' point (b) in miniature: any task sharing the CPU
        # changes the outcome, so keep the VMM's own threads off the vCPU's CPU too.
        pin_other_threads(c, proc.pid, {1 - VCPU_CPU})
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {1 - VCPU_CPU})  # this test's own polling too
        try:
            periods, traps = trapped_share(c)
        finally:
            os.sched_setaffinity(0, mine)
        print(f"hog on CPU {1 - VCPU_CPU}, vCPU on {VCPU_CPU}, threshold 1: {traps} of {periods} WFIs trapped")
        assert periods >= 50 and traps <= 0.05 * periods, (periods, traps)
        c.request("stop")
    assert proc.wait(60) == 0


def test_wfi_passthrough_ignores_contention(custom, live_vm, hog):
    sock, proc = live_vm("--cpu-affinity", f"0={VCPU_CPU}", "--wfx-passthrough", "wfi", "--wfx-trap-threshold", "0")
    hog(VCPU_CPU)
    with Client(str(sock), timeout=60) as c:
        periods, traps = trapped_share(c)
        print(f"hog on the vCPU's CPU, WFI passthrough: {traps} of {periods} WFIs trapped")
        assert periods >= 50 and traps <= 0.05 * periods, (periods, traps)
        c.request("stop")
    assert proc.wait(60) == 0


def test_bench_idle_contention_sweep_shows_the_threshold_at_work(custom, tmp_path):
    """`bench idle --contend 0,1`: the threshold's case measured by the bench itself. vCPU 0 is pinned to the last
    CPU (the bench's default with --contend) and the bench keeps its own threads off it: threshold 1 traps only with
    a busy task beside the vCPU, threshold 2 not even then; the scheduler's view comes with each cell."""
    import csv

    r = run_pyvmm("bench", "idle", "--policy", "threshold=1", "--policy", "threshold=2", "--contend", "0,1",
                  "--repeat", "1", "--periods", "50", "--period-us", str(PERIOD_US), "--csv", str(tmp_path / "c.csv"),
                  timeout=900)
    out = r.stdout.decode()
    print("\npyvmm bench idle --contend (emulated arm64 host: trap counts and scheduler signals meaningful; times "
          "and CPU% rough)\n" + out)
    assert r.returncode == 0, r.stderr.decode()
    assert out.splitlines()[0].split()[:3] == ["policy", "contention", "runs"]
    assert "host preemption: full (uname -v)" in out and "pinning: vCPU 0=1 for every policy without pin=" in out
    rows = {(row["policy"], int(row["contention"])): row for row in csv.DictReader((tmp_path / "c.csv").open())}
    assert list(rows) == [("threshold=1", 0), ("threshold=1", 1), ("threshold=2", 0), ("threshold=2", 1)]
    # Per idle period, not per blocking WFI: under contention the vCPU often reaches its WFI after its timer fired
    # (a WFI with an interrupt pending completes without trapping), so even "always trap" (threshold 0) counted only
    # 0.43-0.53 per period beside busy tasks on a loaded x86 host; threshold 1 there: 0.64-0.74, alone 0.02.
    wfi = {k: float(v["wfi/period"]) for k, v in rows.items()}
    assert wfi[("threshold=1", 0)] <= 0.1 and wfi[("threshold=1", 1)] >= 0.3, wfi
    assert wfi[("threshold=2", 0)] <= 0.1 and wfi[("threshold=2", 1)] <= 0.1, wfi
    # the scheduler's view (SCHED_DEBUG and SCHEDSTATS on this kernel): a busy task beside the vCPU deepens its
    # runqueue; an untrapped idle vCPU looks fully busy to PELT (objection (a)), a trapped one does not
    depth = {k: float(v["rq depth"]) for k, v in rows.items()}
    assert depth[("threshold=2", 1)] > depth[("threshold=2", 0)] + 0.5, depth
    util = {k: float(v["util_avg"]) for k, v in rows.items()}
    assert util[("threshold=1", 0)] > 2 * util[("threshold=1", 1)], util
    assert all(v["idle %"] == "" for v in rows.values())  # no cpuidle driver under QEMU: not exposed, not zero
    assert "not exposed: no cpuidle driver bound" in out
