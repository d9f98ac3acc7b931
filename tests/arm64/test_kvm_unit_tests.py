"""kvm-unit-tests (arm64 build for QEMU's virt map) under `pyvmm kvm-unit-tests`, inside the lane.

Ship the folder: `tests/arm64/lane --timeout 1800 --ship /work/shared/kvm-unit-tests -- tests/arm64/test_kvm_unit_tests.py`
(PYVMM_KUT_DIR overrides where it is looked for). On the stock kernel every test kvmtool passes in this emulated host
must pass; on the custom WFx kernel (no PMU) the same tests under an idle policy must pass, the PMU ones skip.

Timeouts: unittests.cfg's are for hardware (10 s for `timer`, which a VMM's start-up alone nearly takes under TCG on
a busy machine), so every test gets TIMEOUT and micro-bench (about 60 s under kvmtool here, 2-5 min under pyvmm)
MICRO_BENCH_TIMEOUT, as kvm-unit-tests' own TIMEOUT variable allows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_pyvmm

KUT = Path(os.environ.get("PYVMM_KUT_DIR", "/lane/ship/kvm-unit-tests"))
# The 20 entries of unittests.cfg that kvmtool passes in this emulated host (/work/shared/kvm-unit-tests/README.md).
KVMTOOL_PASSES = ("selftest-setup selftest-vectors-kernel selftest-vectors-user selftest-smp pmu-cycle-counter "
                  "pmu-event-counter-config pmu-sw-incr pmu-chained-counters pmu-chained-sw-incr gicv3-ipi "
                  "gicv3-active its-introspection psci timer micro-bench cache debug-bp debug-wp debug-sstep "
                  "fpu-context").split()
PMU_TESTS = [name for name in KVMTOOL_PASSES if name.startswith("pmu-")]
# micro-bench takes about a minute under emulation and says nothing about an idle policy; the rest run per policy.
POLICY_TESTS = [name for name in KVMTOOL_PASSES if name != "micro-bench"]
TIMEOUT = "120"
MICRO_BENCH_TIMEOUT = "900"

pytestmark = pytest.mark.skipif(not (KUT / "unittests.cfg").is_file(),
                                reason=f"{KUT} is absent: ship it with tests/arm64/lane --ship "
                                       f"/work/shared/kvm-unit-tests")


def run_suite(tests: list[str], *options: str, timeout: str = TIMEOUT) -> dict[str, dict]:
    result = run_pyvmm("kvm-unit-tests", str(KUT), *tests, "--json", "--timeout", timeout, *options,
                       timeout=60 + float(timeout) * len(tests))
    stderr = result.stderr.decode(errors="replace")
    assert result.stdout, f"no JSON report (status {result.returncode}): {stderr[-2000:]}"
    entries = json.loads(result.stdout)["results"]
    for entry in entries:  # for the lane log: each verdict with its wall time
        print(f"{entry['verdict']} {entry['name']} ({entry['reason'] or entry['summary']}) {entry['seconds']:.1f} s")
    return {entry["name"]: entry for entry in entries}


def verdicts(results: dict[str, dict]) -> dict[str, str]:
    return {name: f"{entry['verdict']} {entry['reason'] or entry['summary']}" for name, entry in results.items()}


@pytest.mark.timeout(1500)
def test_every_test_kvmtool_passes_passes_on_the_stock_kernel(lane_host_kernel):
    if lane_host_kernel.kind != "stock":
        pytest.skip(f"Debian's stock kernel (with a PMU) is the reference; this lane runs {lane_host_kernel.kind}")
    results = run_suite(POLICY_TESTS)
    results.update(run_suite(["micro-bench"], timeout=MICRO_BENCH_TIMEOUT))
    assert sorted(results) == sorted(KVMTOOL_PASSES)
    failed = {name: line for name, line in verdicts(results).items() if not line.startswith("PASS")}
    assert not failed, failed


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("policy", [["--wfx-trap-threshold", "0"], ["--wfx-passthrough", "wfi"]],
                         ids=["trap-threshold-0", "passthrough-wfi"])
def test_an_idle_policy_breaks_no_test_on_the_wfx_kernel(lane_host_kernel, policy):
    if lane_host_kernel.kind != "custom":
        pytest.skip(f"the per-VM WFx capabilities are in the custom kernel; this lane runs {lane_host_kernel.kind}")
    results = run_suite(POLICY_TESTS, *policy)
    lines = verdicts(results)
    # That kernel has no PMU for guests: pyvmm refuses --pmu in one line, which the runner reports as a SKIP.
    for name in PMU_TESTS:
        assert lines[name].startswith("SKIP") and "PMU" in lines[name], lines[name]
    failed = {name: line for name, line in lines.items() if name not in PMU_TESTS and not line.startswith("PASS")}
    assert not failed, failed
    for name in ("psci", "timer", "gicv3-ipi", "selftest-smp"):
        assert lines[name].startswith("PASS")


def test_bad_input_gets_one_line(tmp_path):
    result = run_pyvmm("kvm-unit-tests", str(tmp_path), timeout=60)
    assert result.returncode == 66 and b"no unittests.cfg" in result.stderr
    result = run_pyvmm("kvm-unit-tests", str(KUT), "no-such-test", timeout=60)
    assert result.returncode == 64 and b"no test no-such-test" in result.stderr
    result = run_pyvmm("kvm-unit-tests", str(KUT), "-g", "no-such-group", timeout=60)
    assert result.returncode == 64 and b"no group no-such-group" in result.stderr


def test_probe_reports_the_its_and_the_pmu(lane_host_kernel):
    report = json.loads(run_pyvmm("probe", "--json", timeout=120).stdout)
    assert report["irqchips"]["gicv3-its"] is True
    # Debian's kernel gives guests a PMU; the custom WFx kernel is built without one.
    assert report["capabilities"]["KVM_CAP_ARM_PMU_V3"]["present"] is (lane_host_kernel.kind == "stock")
