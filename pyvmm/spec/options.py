"""Build a VmSpec from `pyvmm run` option values: strings as the CLI gives them, or Python values from
`pyvmm.testing.Machine`. One function per part, each returning a validated part; every error is a one-line
UsageError naming the option.

The names of the feature options (`RunOptions`) are the CLI's parameter names, which Machine(options=...) uses too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pyvmm.errors import UsageError
from pyvmm.spec.core import (
    MAX_TIMEOUT, VIRTIO_CONSOLE_PARAMS, ConsoleSpec, IdleSpec, TestingSpec, VmSpec, parse_size,
)

if TYPE_CHECKING:
    from pyvmm.devices.virtio import config as vc

PathLike = str | os.PathLike[str]


@dataclass
class RunOptions:
    """Every `pyvmm run` option beyond the core ones, by CLI parameter name, with its default."""

    # idle
    wfx_trap_threshold: str | int | None = None
    wfx_passthrough: str = ""
    halt_poll_ns: str | int | None = None
    idle_exits: str = ""
    cpu_affinity: str = ""
    allow_fallback: bool = False
    cap_numbers: Iterable[str] = ()
    api_socket: PathLike | None = None
    stats_json: PathLike | None = None
    # devices
    disks: Iterable[str] = ()
    nets: Iterable[str] = ()
    console_kind: str = "serial"
    no_coalesced_console: bool = False
    rng: bool = False
    vsock: str | None = None
    # testing
    test_timeout: str | float | None = None
    test_expect: str | re.Pattern[str] | None = None
    test_fail_on: str | re.Pattern[str] | None = None
    test_adds: Iterable[str] = ()
    test_busybox: PathLike | None = None
    test_command: Iterable[str] = ()


    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RunOptions":
        """From a mapping such as Machine(options=...); an unknown name is a UsageError listing the known ones."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise UsageError(f"unknown pyvmm run option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


def regex(value: str | re.Pattern[str] | None, option: str) -> re.Pattern[str] | None:
    if value is None or isinstance(value, re.Pattern):
        return value
    try:
        return re.compile(value)
    except re.error as err:
        raise UsageError(f"{option} {value!r}: not a valid regular expression: {err}") from None


def seconds(value: str | float | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{option} {value!r}: not a number of seconds") from None
    if not 0 < number <= MAX_TIMEOUT:
        raise UsageError(f"{option} {value!r}: must be more than 0 seconds and at most {MAX_TIMEOUT:g}")
    return number


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def idle_spec(options: RunOptions) -> IdleSpec:
    from pyvmm.idle.policy import IdlePolicy, PolicyParseError

    try:
        policy = IdlePolicy.from_strings(
            wfx_trap_threshold=_optional_str(options.wfx_trap_threshold),
            wfx_passthrough=options.wfx_passthrough or "", halt_poll_ns=_optional_str(options.halt_poll_ns),
            idle_exits=options.idle_exits or "", allow_fallback=bool(options.allow_fallback),
            cpu_affinity=options.cpu_affinity or "")
    except PolicyParseError as err:
        raise UsageError(str(err)) from None
    cap_numbers: dict[str, int] = {}
    if options.cap_numbers or any(name.startswith("PYVMM_CAP_") for name in os.environ):
        from pyvmm.idle.caps import CapError, cap_table, parse_cap_override

        try:
            cap_numbers = dict(parse_cap_override(text) for text in options.cap_numbers)
            cap_table(cap_numbers)  # the environment's PYVMM_CAP_* too: refuse a bad one before anything runs
        except CapError as err:
            raise UsageError(str(err)) from None
    return IdleSpec(policy=policy, cap_numbers=cap_numbers, api_socket=_path(options.api_socket),
                    stats_json=_path(options.stats_json))


def device_specs(options: RunOptions) -> list["vc.DeviceConfig"]:
    if options.console_kind not in ("serial", "virtio"):
        raise UsageError(f"--console must be serial or virtio (got {options.console_kind!r})")
    if not (options.disks or options.nets or options.vsock or options.rng or options.console_kind == "virtio"):
        return []  # the parsers' module is not imported for a VM without virtio devices
    from pyvmm.devices.virtio import config as vc

    devices: list[vc.DeviceConfig] = [vc.parse_disk(text) for text in options.disks or ()]
    devices += [vc.parse_net(text) for text in options.nets or ()]
    if options.vsock:
        devices.append(vc.parse_vsock(options.vsock))
    if options.rng:
        devices.append(vc.RngConfig())
    if options.console_kind == "virtio":
        devices.append(vc.ConsoleDeviceConfig())
    return devices


def testing_spec(options: RunOptions) -> TestingSpec:
    return TestingSpec(
        timeout=seconds(options.test_timeout, "--timeout"), expect=regex(options.test_expect, "--expect"),
        fail_on=regex(options.test_fail_on, "--fail-on"), command=list(options.test_command or ()),
        adds=list(options.test_adds or ()), busybox=_path(options.test_busybox))


def network_mode(value: str | None) -> None:
    """kvmtool's `--network mode=none` (no network device, which is pyvmm's default); any other kvmtool network is
    refused with the pyvmm spelling to use instead."""
    if value is None or value.replace(" ", "") in ("mode=none", "none"):
        return
    raise UsageError(f"--network {value}: pyvmm accepts kvmtool's --network mode=none only; for a network device "
                     f"use --net tap=NAME[,mac=...]")


def build_spec(*, name: str = "", kernel: PathLike | None = None, initrd: PathLike | None = None, cmdline: str = "",
               memory: int | str = "256M", cpus: int = 1, guest_args: Iterable[int] = (), irqchip: str = "auto",
               on_reboot: str = "exit", dump_dtb: PathLike | None = None, console_log: PathLike | None = None,
               stdin: bool = True, echo: bool = True, debug: bool = False, pmu: bool = False,
               nodefaults: bool = False, options: RunOptions | None = None) -> VmSpec:
    """The one way a front end makes a VmSpec from option values. Each part is checked as it is parsed; the whole
    spec is validated once, by the runner."""
    options = options or RunOptions()
    devices = device_specs(options)
    if options.console_kind == "virtio" and "console=" not in cmdline and not nodefaults:
        cmdline = f"{cmdline} {VIRTIO_CONSOLE_PARAMS}".strip()
    return VmSpec(
        name=name, kernel=_path(kernel), initrd=_path(initrd), cmdline=cmdline,
        memory=memory if isinstance(memory, int) else parse_size(memory), cpus=int(cpus),
        guest_args=[int(a) for a in guest_args], irqchip=irqchip, pmu=pmu, nodefaults=nodefaults,
        on_reboot=on_reboot, dtb_dump=_path(dump_dtb),
        debug=debug, devices=devices,
        console=ConsoleSpec(stdin=stdin, echo=echo, log_path=_path(console_log),
                            coalesce=not options.no_coalesced_console),
        idle=idle_spec(options), testing=testing_spec(options),
    )
