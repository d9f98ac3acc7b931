"""VmSpec validation (one-line UsageErrors naming the option), building a spec from option values (the CLI's strings
and Machine's Python values give the same spec), and the one decision of the exit status (final_status)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyvmm.devices.virtio.config import ConsoleDeviceConfig, DiskConfig, RngConfig
from pyvmm.errors import ExitStatus, UsageError
from pyvmm.idle.policy import IdlePolicy
from pyvmm.spec import IdleSpec, VmSpec, parse_size
from pyvmm.spec import core as spec_core
from pyvmm.spec.options import RunOptions, build_spec
from pyvmm.outcome import ConsoleVerdict, FinalStatus, VmOutcome, final_status


def checks(**kwargs: object) -> spec_core.TestingSpec:
    return spec_core.TestingSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec, message", [
    (VmSpec(cpus=0), r"--cpus must be at least 1 \(got 0\)"),
    (VmSpec(cpus=100000), "at most 512"),
    (VmSpec(memory=1 << 20), "--memory 1M is too small: at least 16M"),
    (VmSpec(memory=1 << 60), "more than this host has"),
    (VmSpec(on_reboot="halt"), "--on-reboot must be exit or restart"),
    (VmSpec(irqchip="gicv4"), "--irqchip must be auto, gicv3, gicv3-its or gicv2"),
    (VmSpec(pmu=True, arch="x86_64"), "--pmu is for arm64 guests"),
    (VmSpec(irqchip="gicv3-its", arch="x86_64"), "--irqchip gicv3-its is for arm64 guests"),
    (VmSpec(guest_args=[1 << 32]), "does not fit in 32 bits"),
    (VmSpec(devices=[DiskConfig(Path("a.img"), cache="none")]), "cache=none is not one of"),
    (VmSpec(idle=IdleSpec(policy=IdlePolicy(cpu_affinity={2: {0}}))), "names vCPU 2, but the VM has 1"),
    (VmSpec(testing=checks(timeout=0.0)), "--timeout must be more than 0"),
    (VmSpec(testing=checks(adds=["a:/a"])), "--add and --busybox only apply"),
    (VmSpec(testing=checks(command=["true"])), "-- CMD needs a Linux kernel"),
    (VmSpec(kernel=Path("Image"), initrd=Path("i"), testing=checks(command=["true"])), "--initrd cannot be combined"),
    (VmSpec(kernel=Path("Image"), arch="x86_64", testing=checks(command=["true"])), "arm64 only"),
])
def test_validation_errors_are_one_line_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message) as info:
        spec.validate()
    assert "\n" not in str(info.value)


def test_a_valid_spec_gets_the_host_architecture():
    spec = VmSpec().validate()
    assert spec.arch in ("x86_64", "arm64")


def test_cli_strings_and_python_values_build_the_same_spec():
    strings = build_spec(memory="512M", cpus=2, options=RunOptions(
        halt_poll_ns="0", idle_exits="hlt", test_timeout="1.5", test_expect="login:", disks=("a.img,ro",), rng=True,
        console_kind="virtio"))
    values = build_spec(memory=512 << 20, cpus=2, options=RunOptions.from_mapping({
        "halt_poll_ns": 0, "idle_exits": "hlt", "test_timeout": 1.5, "test_expect": re.compile("login:"),
        "disks": ["a.img,ro"], "rng": True, "console_kind": "virtio"}))
    assert strings == values
    assert strings.memory == parse_size("512M") and strings.idle.policy.halt_poll_ns == 0
    assert strings.hide_pv_unhalt and strings.idle.active and strings.testing.active
    assert strings.devices == [DiskConfig(Path("a.img"), read_only=True), RngConfig(), ConsoleDeviceConfig()]
    assert strings.cmdline == "console=hvc0 earlycon"  # --console virtio moves the console unless -p names one


def test_defaults_ask_for_no_feature():
    spec = build_spec()
    assert not spec.idle.active and not spec.testing.active and not spec.hide_pv_unhalt and spec.devices == []


@pytest.mark.parametrize("options, message", [
    ({"no_such_option": 1}, r"unknown pyvmm run option\(s\) \['no_such_option'\]"),
    ({"test_expect": "("}, "--expect '\\(': not a valid regular expression"),
    ({"test_timeout": "soon"}, "--timeout 'soon': not a number of seconds"),
    ({"test_timeout": -1}, "must be more than 0 seconds"),
    ({"halt_poll_ns": "lots"}, "--halt-poll-ns"),
    ({"cap_numbers": ["NOPE=3"]}, "--cap-number 'NOPE=3'"),
    ({"console_kind": "tty"}, "--console must be serial or virtio"),
    ({"disks": [",ro"]}, "give the image path first"),
])
def test_bad_option_values_name_the_option(options, message):
    with pytest.raises(UsageError, match=message):
        build_spec(options=RunOptions.from_mapping(options))


POWER_OFF = VmOutcome(ExitStatus.OK, "the guest powered off")
GUEST_3 = VmOutcome(3, "the guest exited with status 3")
TIMEOUT = VmOutcome(ExitStatus.TIMEOUT, "timed out", error=True)
REBOOT = VmOutcome(ExitStatus.REBOOT, "the guest asked for a reboot", reboot=True)
SIGTERM = VmOutcome(ExitStatus.SIGTERM, "stopped by SIGTERM")
FAIL_ON = VmOutcome(ExitStatus.FAILED, "the console matched --fail-on 'BUG'", error=True)
VM_ERROR = VmOutcome(ExitStatus.SOFTWARE, "KVM internal error", error=True)
EXPECT = ConsoleVerdict(expect="login:")
EXPECT_MET = ConsoleVerdict(expect="login:", expect_matched=True)
COMMAND = ConsoleVerdict(command=True)
COMMAND_5 = ConsoleVerdict(command=True, command_status=5)
FAILED_LATE = ConsoleVerdict(failed="the console matched --fail-on 'panic'")


@pytest.mark.parametrize("outcome, verdict, status", [
    (POWER_OFF, None, ExitStatus.OK),
    (GUEST_3, None, 3),  # a guest's own verdict passes through
    (TIMEOUT, None, ExitStatus.TIMEOUT),
    (REBOOT, None, ExitStatus.REBOOT),
    (SIGTERM, None, ExitStatus.SIGTERM),
    (VM_ERROR, None, ExitStatus.SOFTWARE),
    (FAIL_ON, ConsoleVerdict(), ExitStatus.FAILED),
    (POWER_OFF, EXPECT, ExitStatus.FAILED),  # the guest ended before --expect matched
    (POWER_OFF, EXPECT_MET, ExitStatus.OK),
    (GUEST_3, EXPECT, 3),  # a failing guest keeps its own status
    (TIMEOUT, EXPECT, ExitStatus.TIMEOUT),  # --timeout wins over everything
    (TIMEOUT, COMMAND_5, ExitStatus.TIMEOUT),
    (POWER_OFF, COMMAND_5, 5),  # -- CMD: the command's status
    (GUEST_3, COMMAND_5, 5),
    (POWER_OFF, COMMAND, ExitStatus.SOFTWARE),  # ... and none reported is an error
    (SIGTERM, COMMAND, ExitStatus.SIGTERM),  # stopped from outside: keep what says so
    (REBOOT, COMMAND_5, ExitStatus.REBOOT),  # a panic (panic=-1) is a reboot
    (VM_ERROR, COMMAND_5, ExitStatus.SOFTWARE),
    (FAIL_ON, COMMAND_5, ExitStatus.FAILED),
    (POWER_OFF, FAILED_LATE, ExitStatus.FAILED),  # --fail-on matched a line drained after the power-off
    (GUEST_3, FAILED_LATE, 3),
    (TIMEOUT, FAILED_LATE, ExitStatus.TIMEOUT),
    (POWER_OFF, ConsoleVerdict(expect="x", expect_matched=True, command=True, command_status=5), ExitStatus.OK),
])
def test_final_status(outcome, verdict, status):
    assert final_status(outcome, verdict).status == status


def test_final_status_explains_what_it_changed():
    assert final_status(POWER_OFF, None) == FinalStatus(ExitStatus.OK)
    failed = final_status(POWER_OFF, EXPECT)
    assert not failed.error and "before the console matched --expect 'login:'" in (failed.note or "")
    missing = final_status(POWER_OFF, COMMAND)
    assert missing.error and "without reporting the command's exit status" in (missing.note or "")


def test_exit_status_values_are_the_documented_ones():
    assert {s.name: int(s) for s in ExitStatus} == {
        "OK": 0, "FAILED": 1, "USAGE": 64, "DATA_ERR": 65, "NO_INPUT": 66, "UNAVAILABLE": 69, "SOFTWARE": 70,
        "OS_ERR": 71, "NO_PERM": 77, "REBOOT": 80, "TIMEOUT": 124, "SIGINT": 130, "SIGTERM": 143}
