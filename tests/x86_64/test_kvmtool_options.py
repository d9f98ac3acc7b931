"""kvmtool's spelling of `lkvm run` options as aliases of pyvmm's (issue 10), so that a kvmtool user's command line
and kvm-unit-tests' kvmtool runner work: what each means, and a kvm-unit-tests-style command on the real /dev/kvm."""

from __future__ import annotations

import pytest
import pyvmm_guests

from pyvmm.errors import UsageError
from pyvmm.spec.options import RunOptions, build_spec, network_mode
from tests.conftest import run_pyvmm

GREETING = b"Hello from the pyvmm x86_64 guest\n"


def test_kvm_unit_tests_kvmtool_command_line_runs():
    # arm/run's lkvm command (scripts/vmm.bash's KVMTOOL_DEFAULT_OPTS included), with the hello guest.
    result = run_pyvmm("run", "--kernel", str(pyvmm_guests.path("x86_64", "hello")), "--cpus", "1",
                       "--params", "smp", "--nodefaults", "--network", "mode=none", "--loglevel=warning", "--mem",
                       "64", "--no-stdin")
    assert result.returncode == 0, result.stderr.decode()
    assert GREETING in result.stdout


def test_other_network_modes_point_at_net():
    result = run_pyvmm("run", "--no-stdin", "--network", "mode=tap,tapif=tap0")
    assert result.returncode == 64
    assert result.stderr.decode().strip() == ("pyvmm: error: --network mode=tap,tapif=tap0: pyvmm accepts kvmtool's "
                                              "--network mode=none only; for a network device use --net "
                                              "tap=NAME[,mac=...]")


@pytest.mark.parametrize("value", [None, "mode=none", "none"])
def test_network_none_is_no_device(value):
    network_mode(value)  # nothing to configure: pyvmm has no network device unless --net asks for one


def test_nodefaults_keeps_the_command_line_as_given():
    assert build_spec(cmdline="ipi", nodefaults=True).nodefaults
    # --console virtio adds its console to the command line, except with --nodefaults.
    assert build_spec(cmdline="ipi", options=RunOptions(console_kind="virtio")).cmdline == "ipi console=hvc0 earlycon"
    assert build_spec(cmdline="ipi", nodefaults=True, options=RunOptions(console_kind="virtio")).cmdline == "ipi"
    with pytest.raises(UsageError):
        network_mode("mode=user")


def test_every_kvmtool_spelling_is_in_run_help():
    text = run_pyvmm("run", "--help").stdout.decode()
    for spelling in ("-k, --kernel", "-i, --initrd", "-p, --cmdline, --params", "-c, --cpus", "-m, --memory, --mem",
                     "--irqchip", "--nodefaults", "--network mode=none", "--loglevel", "-d, --disk", "--console"):
        assert spelling in text, spelling
