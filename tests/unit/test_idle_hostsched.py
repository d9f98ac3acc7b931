"""Host scheduler, CPU and idle-state readers (pyvmm.idle.hostsched, hostcpus, cpuidle, hostcontext) against
fake /proc and /sys trees: what each kernel file says, and an explicit "not exposed" where a kernel says nothing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pyvmm.idle.cpuidle import residency, snapshot
from pyvmm.idle.hostcontext import read_host_context, unpinned_threshold_warning
from pyvmm.idle.hostcpus import HostCpuError, Midr, format_cpus, parse_cpu_ranges, read_host_cpus
from pyvmm.idle.hostsched import (Pelt, SchedSampler, parse_cpu_schedstat, parse_preempt_config,
                                  parse_preempt_debugfs, parse_sched_debug, parse_task_sched, parse_version_tokens,
                                  read_pelt, read_preemption, runqueue_depths)


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


# /proc/<pid>/task/<tid>/sched of Linux 6.12 (SCHED_DEBUG), abridged to the lines around the PELT block
TASK_SCHED = """\
pyvmm-vcpu0 (4242, #threads: 5)
-------------------------------------------------------------------
se.exec_start                                :       1635314.917640
se.sum_exec_runtime                          :             0.004715
nr_switches                                  :                    1
se.load.weight                               :              1048576
se.avg.load_sum                              :                47574
se.avg.load_avg                              :                 1024
se.avg.runnable_avg                          :                 1000
se.avg.util_avg                              :                 1019
se.avg.last_update_time                      :        1635314917376
se.avg.util_est                              :                    0
policy                                       :                    0
"""

# /proc/schedstat version 15 (cpu lines: yld 0 sched goidle ttwu ttwu_local running_ns waiting_ns slices)
SCHEDSTAT = """\
version 15
timestamp 4295178032
cpu0 0 0 3371 1060 0 0 {r0} {w0} 2108
domain0 00000003 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
cpu1 0 0 3371 1060 0 0 {r1} {w1} 2108
"""

SCHED_DEBUG = """\
Sched Debug Version: v0.11, 6.12.117-wfx #1
cpu#0
  .nr_running                    : 0
  .nr_switches                   : 5
cfs_rq[0]:/
  .nr_running                    : 7
cpu#1
  .nr_running                    : {n1}
"""


# --- PELT ------------------------------------------------------------------------------------------------------


def test_pelt_parsed_from_the_task_sched_file(tmp_path):
    assert parse_task_sched(TASK_SCHED) == Pelt(util_avg=1019, load_avg=1024, runnable_avg=1000)
    write(tmp_path, "proc/10/task/11/sched", TASK_SCHED)
    assert read_pelt(11, 10, tmp_path).util_avg == 1019


def test_pelt_not_exposed_is_none(tmp_path):
    assert read_pelt(11, 10, tmp_path) is None  # no SCHED_DEBUG: no sched file at all
    assert parse_task_sched("policy : 0\nprio : 120\n") is None  # !CONFIG_SMP: no se.avg lines


def test_pelt_without_runnable_avg_from_kernels_before_5_7():
    text = TASK_SCHED.replace("se.avg.runnable_avg                          :                 1000\n", "")
    assert parse_task_sched(text) == Pelt(1019, 1024, None)


# --- runqueue depth ----------------------------------------------------------------------------------------------


def test_cpu_schedstat_running_and_waiting_ns():
    stats = parse_cpu_schedstat(SCHEDSTAT.format(r0=1, w0=2, r1=30, w1=40))
    assert (stats[0].running_ns, stats[0].waiting_ns, stats[1].running_ns, stats[1].waiting_ns) == (1, 2, 30, 40)


def test_parse_sched_debug_takes_rq_nr_running():
    text = """cpu#0, 2000.000 MHz
  .nr_running                    : 2
  .nr_switches                   : 100
cfs_rq[0]:/
  .nr_running                    : 1
cpu#1, 2000.000 MHz
  .nr_running                    : 0
"""
    assert parse_sched_debug(text) == {0: 2, 1: 0}


def test_runqueue_depths_now_from_debugfs_or_proc_sched_debug(tmp_path):
    assert runqueue_depths([1], tmp_path)[0].source.startswith("unavailable: neither /sys/kernel/debug/sched/debug")
    write(tmp_path, "proc/sched_debug", SCHED_DEBUG.format(n1=4))  # kernels before 5.13
    write(tmp_path, "proc/schedstat", SCHEDSTAT.format(r0=0, w0=0, r1=5, w1=600))
    (one, five) = runqueue_depths([1, 5], tmp_path)
    assert (one.nr_running, one.source, one.run_delay_ns) == (4, "/proc/sched_debug", 600)
    assert five.nr_running is None and five.source == "cpu 5 not in /proc/sched_debug"


def test_runqueue_depths_of_this_host_say_where_or_why():
    for s in runqueue_depths(range(os.cpu_count())):
        assert s.source.startswith("/") if s.nr_running is not None else ("unavailable" in s.source
                                                                           or "not in" in s.source)


def test_sampler_reports_sampled_depth_time_mean_and_pelt(tmp_path):
    write(tmp_path, "proc/schedstat", SCHEDSTAT.format(r0=0, w0=0, r1=0, w1=0))
    write(tmp_path, "sys/kernel/debug/sched/debug", SCHED_DEBUG.format(n1=2))
    write(tmp_path, f"proc/{os.getpid()}/task/77/sched", TASK_SCHED)
    with SchedSampler([1], interval_s=0.01, root=tmp_path) as s:
        s.watch(77)
        time.sleep(0.05)
        write(tmp_path, "sys/kernel/debug/sched/debug", SCHED_DEBUG.format(n1=3))
        time.sleep(0.05)
        # 2 runnable tasks for the whole interval: 1 s running + 1 s waiting per elapsed second
        elapsed = 1.0
        write(tmp_path, "proc/schedstat", SCHEDSTAT.format(r0=0, w0=0, r1=int(1e9), w1=int(1e9)))
    obs = s.observation
    (rq,) = obs.runqueues
    assert rq.cpu == 1 and rq.sampled_max == 3 and 2 <= rq.sampled_mean <= 3 and rq.samples >= 3
    assert rq.time_mean == pytest.approx(2 * elapsed / obs.interval_s)
    assert "sched/debug" in rq.source and "schedstat" in rq.source
    (t,) = obs.threads
    assert t.tid == 77 and t.util_avg_mean == 1019 and t.load_avg_mean == 1024 and t.runnable_avg_mean == 1000


def test_sampler_says_what_is_not_exposed(tmp_path):
    with SchedSampler([0], interval_s=0.01, root=tmp_path) as s:
        s.watch(5)
    (rq,), (t,) = s.observation.runqueues, s.observation.threads
    assert rq.sampled_mean is None and rq.time_mean is None and rq.samples == 0
    assert "not readable" in rq.source and "CONFIG_SCHEDSTATS" in rq.source
    assert t.util_avg_mean is None and t.source.startswith("not exposed")


def test_sampler_thread_stays_off_the_measured_cpus(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two usable CPUs")
    seen = []

    class Probe(SchedSampler):
        def _sample(self):
            seen.append(os.sched_getaffinity(0))

    with Probe([cpus[0]], interval_s=0.01, root=tmp_path):
        time.sleep(0.03)
    assert seen and cpus[0] not in seen[0]
    assert cpus[0] in os.sched_getaffinity(0)  # the caller's thread is untouched
    assert not [t for t in threading.enumerate() if t.name == "pyvmm-sched-sampler"]


def test_sampler_on_this_host_does_not_fail():
    with SchedSampler([0], interval_s=0.01) as s:
        s.watch(threading.get_native_id())
    assert s.observation.runqueues[0].cpu == 0


# --- preemption model ---------------------------------------------------------------------------------------------


def test_preempt_parsers():
    assert parse_preempt_debugfs("none voluntary (full) lazy\n") == "full"
    assert parse_version_tokens("#1 SMP PREEMPT_DYNAMIC Debian") == "dynamic"
    assert parse_version_tokens("#1 SMP PREEMPT Tue") == "full"
    assert parse_version_tokens("#1 SMP PREEMPT_RT") == "rt"
    assert parse_version_tokens("#1 SMP") is None
    assert parse_preempt_config("CONFIG_PREEMPT_VOLUNTARY=y\n# CONFIG_PREEMPT is not set\n") == "voluntary"
    assert parse_preempt_config("CONFIG_PREEMPT=y\nCONFIG_PREEMPT_COUNT=y\n") == "full"


def test_preemption_from_proc_config_gz(tmp_path):
    import gzip

    write(tmp_path, "proc/sys/kernel/version", "#1 SMP Debian\n")
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(b"CONFIG_PREEMPT_VOLUNTARY=y\n"))
    p = read_preemption(tmp_path)
    assert (p.build, p.mode, p.source) == ("voluntary", "voluntary", "/proc/config.gz")


def test_preemption_of_this_host_says_where_it_came_from():
    assert read_preemption().source


def test_preemption_dynamic_mode_from_debugfs(tmp_path):
    write(tmp_path, "sys/kernel/debug/sched/preempt", "none (voluntary) full\n")
    p = read_preemption(tmp_path)
    assert (p.build, p.mode) == ("dynamic", "voluntary") and "current mode voluntary" in p.describe()


@pytest.mark.parametrize("version, config, cmdline, expect", [
    ("#1 SMP PREEMPT Tue", None, "", ("full", "full")),  # the lane's WFx kernel
    ("#1 SMP PREEMPT_RT", None, "", ("rt", "rt")),
    ("#1 SMP PREEMPT_DYNAMIC Debian", None, "preempt=full", ("dynamic", "full")),
    ("#1 SMP PREEMPT_DYNAMIC Debian", "CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n", "", ("dynamic", "voluntary")),
    ("#1 SMP PREEMPT_DYNAMIC Debian", None, "", ("dynamic", None)),
    ("#1 SMP", "CONFIG_PREEMPT_NONE=y\n", "", ("none", "none")),
    ("#1 SMP", None, "", ("none-or-voluntary", None)),
])
def test_preemption_without_debugfs(tmp_path, version, config, cmdline, expect):
    write(tmp_path, "proc/sys/kernel/version", version + "\n")
    write(tmp_path, "proc/sys/kernel/osrelease", "6.12.1\n")
    write(tmp_path, "proc/cmdline", cmdline + "\n")
    if config:
        write(tmp_path, "boot/config-6.12.1", config)
    p = read_preemption(tmp_path)
    assert (p.build, p.mode) == expect, p


# --- CPUs -----------------------------------------------------------------------------------------------------------

CPU = "sys/devices/system/cpu"


def big_little(root: Path, offline: str = "") -> None:
    write(root, f"{CPU}/present", "0-3\n")
    write(root, f"{CPU}/online", "0-3\n" if not offline else offline)
    for cpu, cap, midr in ((0, 446, "0x00000000412fd050"), (1, 446, "0x00000000412fd050"),
                           (2, 1024, "0x00000000414fd0b0"), (3, 1024, "0x00000000414fd0b1")):
        write(root, f"{CPU}/cpu{cpu}/cpu_capacity", f"{cap}\n")
        write(root, f"{CPU}/cpu{cpu}/regs/identification/midr_el1", midr + "\n")


def test_cpu_ranges_round_trip():
    assert parse_cpu_ranges("0-2,5\n") == {0, 1, 2, 5} and parse_cpu_ranges("\n") == frozenset()
    assert format_cpus({0, 1, 2, 5}) == "0-2,5" and format_cpus(set()) == "none"
    with pytest.raises(ValueError):
        parse_cpu_ranges("3-1")


def test_big_little_is_heterogeneous_by_capacity_and_midr_part(tmp_path):
    big_little(tmp_path)
    cpus = read_host_cpus(tmp_path)
    assert cpus.heterogeneous is True
    assert cpus.midr[2] == Midr(0x41, 0x4, 0xD0B) == cpus.midr[3]  # revision does not make a new core type
    assert cpus.describe() == ("heterogeneous: capacity 1024 on 2-3, capacity 446 on 0-1; "
                               "core 0x41:0xd05 on 0-1, core 0x41:0xd0b on 2-3")
    assert cpus.as_dict()["heterogeneous"] is True


def test_same_capacity_and_part_is_homogeneous(tmp_path):
    write(tmp_path, f"{CPU}/online", "0-1\n")
    for cpu in (0, 1):
        write(tmp_path, f"{CPU}/cpu{cpu}/regs/identification/midr_el1", "0x00000000000f0510\n")
    assert read_host_cpus(tmp_path).heterogeneous is False


def test_nothing_exposed_is_unknown_not_homogeneous(tmp_path):
    write(tmp_path, f"{CPU}/online", "0-1\n")
    cpus = read_host_cpus(tmp_path)
    assert cpus.heterogeneous is None and cpus.describe().startswith("unknown")


def test_cpus_that_do_not_exist_or_are_offline_are_one_line_errors(tmp_path):
    big_little(tmp_path, offline="0-1,3\n")
    cpus = read_host_cpus(tmp_path)
    cpus.check({0, 3}, "--cpu-affinity")
    with pytest.raises(HostCpuError, match=r"^--cpu-affinity: CPU 7 does not exist on this host \(CPUs 0-3\)$"):
        cpus.check({1, 7}, "--cpu-affinity")
    with pytest.raises(HostCpuError, match=r"^busy tasks: CPU 2 is offline \(online: 0-1,3\)$"):
        cpus.check({2}, "busy tasks")


# --- idle states ----------------------------------------------------------------------------------------------------


def idle_states(root: Path, cpu: int, times: tuple[int, int], usage: tuple[int, int]) -> None:
    for k, (name, t, u) in enumerate(zip(("WFI", "cpu-sleep"), times, usage)):
        d = f"{CPU}/cpu{cpu}/cpuidle/state{k}"
        write(root, f"{d}/name", name + "\n")
        write(root, f"{d}/time", f"{t}\n")
        write(root, f"{d}/usage", f"{u}\n")


def test_idle_residency_per_state(tmp_path):
    write(tmp_path, f"{CPU}/cpuidle/current_driver", "psci_idle\n")
    idle_states(tmp_path, 1, (1000, 5000), (1, 2))
    before = snapshot([1], tmp_path)
    idle_states(tmp_path, 1, (101000, 1505000), (11, 52))
    r = residency(before, snapshot([1], tmp_path), 2.0)
    assert r.exposed and r.reason == "cpuidle driver psci_idle"
    wfi, sleep = r.cpus[1]
    assert (wfi.name, wfi.seconds, wfi.entries, wfi.share) == ("WFI", 0.1, 10, 0.05)
    assert (sleep.name, sleep.seconds, sleep.entries, sleep.share) == ("cpu-sleep", 1.5, 50, 0.75)
    assert r.deepest_share() == 0.75 and r.idle_share() == pytest.approx(0.8)


def test_no_cpuidle_driver_is_not_exposed_not_zero(tmp_path):
    write(tmp_path, f"{CPU}/cpuidle/current_driver", "none\n")
    r = residency(snapshot([1], tmp_path), snapshot([1], tmp_path), 1.0)
    assert not r.exposed and r.cpus is None and r.deepest_share() is None
    assert r.reason.startswith("not exposed: no cpuidle driver bound") and r.as_dict()["exposed"] is False


def test_kernel_without_cpu_idle_is_not_exposed(tmp_path):
    assert "CONFIG_CPU_IDLE" in snapshot([0], tmp_path).reason


# --- host context and the unpinned-threshold warning -----------------------------------------------------------------


def test_host_context_lines_and_json(tmp_path):
    big_little(tmp_path)
    write(tmp_path, "sys/kernel/debug/sched/preempt", "none voluntary (full)\n")
    ctx = read_host_context(tmp_path)
    d = ctx.as_dict()
    assert d["preemption"]["mode"] == "full" and d["cpus"]["heterogeneous"] is True
    assert d["cpuidle"].startswith("not exposed")
    assert [line.split(":")[0] for line in ctx.render()] == ["preemption", "CPUs", "idle states"]


def test_warning_for_a_threshold_on_unpinned_vcpus():
    assert unpinned_threshold_warning(None, 2, {}) is None
    assert unpinned_threshold_warning(1, 2, {0: {1}, 1: {0}}) is None
    w = unpinned_threshold_warning(1, 2, {0: {1}, 1: {0, 1}})
    assert "vCPU 1 is not pinned" in w and "--cpu-affinity 1=CPU" in w
    assert "vCPU 0, 1 are not pinned" in unpinned_threshold_warning(2, 2, {})
    assert unpinned_threshold_warning(0, 2, {}) is None  # 0 always traps: the runqueue does not matter
