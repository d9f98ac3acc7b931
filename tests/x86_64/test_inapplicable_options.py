"""Options that would do nothing on x86_64: --dump-dtb is refused in one line, the same through the CLI and the
Machine API; a command line is ignored with one warning, as kvmtool does; what does work there (virtio-mmio devices
a payload can drive) is accepted."""

from __future__ import annotations

import pytest

from pyvmm.errors import UsageError
from pyvmm.testing import Machine
from tests.conftest import run_pyvmm
from tests.x86_64.test_errors import assert_one_line_error


def test_dump_dtb_is_refused_in_one_line(tmp_path):
    result = run_pyvmm("run", "--no-stdin", "--dump-dtb", "machine.dtb", cwd=tmp_path)
    assert_one_line_error(result, 64, "--dump-dtb: an x86_64 machine has no device tree")
    assert not (tmp_path / "machine.dtb").exists()


@pytest.mark.parametrize("args", [["-p", "quiet"], ["--append", "quiet"],
                                  ["--cmdline", "quiet", "--console", "virtio"]])
def test_a_command_line_is_ignored_with_one_warning_as_kvmtool_does(args):
    # kvmtool ignores -p for a flat binary: kvm-unit-tests' lkvm command line must keep working
    result = run_pyvmm("run", "--no-stdin", *args)
    assert result.returncode == 0 and result.stdout == b"Hello from the pyvmm x86_64 guest\n"
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyvmm: warning: -p/--append is ignored: an x86_64 guest"), lines


@pytest.mark.parametrize("args", [["--rng"], ["--console", "virtio"]])
def test_virtio_devices_exist_on_x86_64_and_are_accepted(args):
    result = run_pyvmm("run", "--no-stdin", *args)
    assert result.returncode == 0 and result.stdout == b"Hello from the pyvmm x86_64 guest\n", result.stderr
    assert result.stderr == b""


def test_the_machine_api_uses_the_same_checks(capfd):
    with pytest.raises(UsageError, match="^--dump-dtb"):
        Machine(kernel="hello", dump_dtb="x.dtb").start()
    with Machine(kernel="hello", cmdline="quiet") as vm:
        assert vm.wait(30).status == 0
    assert "pyvmm: warning: -p/--append is ignored" in capfd.readouterr().err
