"""`pyvmm probe` on this host's real /dev/kvm."""

from __future__ import annotations

import json

from tests.conftest import run_pyvmm


def test_probe_json_reports_the_host():
    result = run_pyvmm("probe", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["architecture"] == "x86_64"
    assert report["api_version"] == 12
    assert report["max_vcpus"] >= 1
    caps = report["capabilities"]
    assert caps["KVM_CAP_USER_MEMORY"]["present"]
    assert caps["KVM_CAP_X86_DISABLE_EXITS"]["number"] == 143
    mechanisms = {m["name"]: m for m in report["idle"]["mechanisms"]}
    # The WFx capabilities are arm64-only: on x86_64 they must never be reported as available.
    assert mechanisms["arm_wfx_trap_runqueue_depth"]["status"] != "available"
    assert mechanisms["halt_poll"]["status"] in ("available", "absent")
    assert "halt_poll_ns" in report["idle"]["host"]["kvm module parameters"]
    ctx = report["host_context"]  # what a WFx threshold's figures depend on (issue 14)
    assert ctx["preemption"]["build"] in ("none", "voluntary", "full", "lazy", "rt", "dynamic", "none-or-voluntary")
    assert ctx["preemption"]["source"] and ctx["cpus"]["online"] and ctx["cpus"]["heterogeneous"] in (True, False, None)
    assert ctx["cpuidle"].startswith(("cpuidle driver", "not exposed"))


def test_probe_table_is_readable():
    result = run_pyvmm("probe")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "API version 12" in text
    assert "idle / exit controls" in text
    assert "KVM_CAP_X86_DISABLE_EXITS" in text
    assert "  preemption  " in text and "  idle states  " in text
    assert "x86_disable_exits" in text and "arm_disable_exits" not in text  # arm64's rows only with --all


def test_probe_all_lists_the_other_architectures_controls():
    text = run_pyvmm("probe", "--all").stdout.decode()
    assert "arm_disable_exits" in text and "arm_wfx_trap_runqueue_depth" in text


def test_probe_without_kvm_is_one_line(tmp_path):
    result = run_pyvmm("probe", env={"PYVMM_KVM_DEVICE": str(tmp_path / "none")})
    assert result.returncode == 69
    assert result.stderr.decode().count("\n") == 1
