"""The pytest plugin (pyvmm.testing.plugin), run by an inner pytest on generated test files with bundled guests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib

from tests.conftest import ROOT

PASSING = """
import pytest
import pyvmm_guests

def test_hello(pyvmm_machine):
    pyvmm_machine.console.expect(r"Hello from the pyvmm x86_64 guest")
    assert pyvmm_machine.wait(30).status == 0

@pytest.mark.pyvmm(kernel=str(pyvmm_guests.path("x86_64", "idle")), guest_args=[100000, 2000], cpus=2)
def test_marker_configures_the_machine(pyvmm_machine):
    assert pyvmm_machine.running
    assert len(pyvmm_machine.stats()["vcpus"]) == 2

@pytest.mark.pyvmm(kernel=str(pyvmm_guests.path("x86_64", "idle")), guest_args=[100000, 2000],
                   options={"test_timeout": 0.2})
def test_run_options_from_the_marker(pyvmm_machine):
    assert pyvmm_machine.wait(30).status == 124

@pytest.mark.pyvmm(kernel="exits", guest_args=[3])
def test_a_bundled_guest_by_name(pyvmm_machine):
    pyvmm_machine.console.expect(r"exits: 3")
    assert pyvmm_machine.wait(30).status == 0

def test_log_is_per_test(pyvmm_machine, tmp_path):
    pyvmm_machine.wait(30)
    assert pyvmm_machine.spec.console.log_path.parent == tmp_path
"""

FAILING = """
def test_deliberate_failure(pyvmm_machine):
    pyvmm_machine.console.expect("Hello")
    assert pyvmm_machine.wait(30).status == 3, "the guest should have failed"
"""


def inner_pytest(tmp_path, source: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "pyvmm.testing.plugin", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), "-q", str(tmp_path / "test_inner.py"), *args],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)


def test_a_passing_file(tmp_path):
    result = inner_pytest(tmp_path, PASSING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_a_failing_test_shows_the_console_in_its_report(tmp_path):
    result = inner_pytest(tmp_path, FAILING)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the guest should have failed" in result.stdout
    section = result.stdout.split("pyvmm console (call)", 1)
    assert len(section) == 2, result.stdout
    assert "Hello from the pyvmm x86_64 guest" in section[1]


def test_command_line_options_configure_the_fixture(tmp_path):
    source = """
    def test_cpus(pyvmm_machine):
        assert pyvmm_machine.spec.cpus == 3 and str(pyvmm_machine.spec.kernel).endswith("idle.bin")
        assert pyvmm_machine.spec.testing.timeout == 45.5
        assert pyvmm_machine.wait(60).status == 0
    """
    import pyvmm_guests

    result = inner_pytest(tmp_path, source, "--pyvmm-kernel", str(pyvmm_guests.path("x86_64", "idle")),
                          "--pyvmm-cpus", "3", "--pyvmm-option", "test_timeout=45.5")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"pyvmm": "pyvmm.testing.plugin"}


PARALLEL = """
import pytest

@pytest.mark.parametrize("n", range(6))
def test_parallel(pyvmm_machine, n, tmp_path):
    pyvmm_machine.console.expect("Hello")
    assert pyvmm_machine.wait(30).status == 0
    log = pyvmm_machine.spec.console.log_path
    assert log.parent == tmp_path and log.read_bytes() == b"Hello from the pyvmm x86_64 guest\\n"
"""


def test_parallel_runs_under_xdist_keep_their_consoles_apart(tmp_path):
    import pytest

    pytest.importorskip("xdist")
    result = inner_pytest(tmp_path, PARALLEL, "-p", "xdist", "-n", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout
