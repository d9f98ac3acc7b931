"""`pyvmm ctl NAME|SOCKET ...`: talk to a running VM's control socket (docs/API.md), found by the VM's name
(`pyvmm run --name`, `pyvmm list`) or by its path (`pyvmm run --api-socket PATH`); `--all` for every named VM."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from pyvmm.cli.helpfmt import ReferenceGroup

ALL_COMMANDS = ("pause", "resume", "stop", "state")  # what --all applies to


def _client(path: Path):
    from pyvmm.api.client import Client

    return Client(str(path))


@dataclass(frozen=True)
class Targets:
    """The VMs a ctl command addresses, resolved when the command runs (so `ctl NAME CMD --help` needs no VM)."""

    target: str
    all_vms: bool

    def paths(self) -> list[Path]:
        from pyvmm.api import registry

        return registry.running() if self.all_vms else [registry.resolve(self.target)]

    def one(self) -> Path:
        if self.all_vms:
            from pyvmm.errors import UsageError

            raise UsageError(f"--all applies to {', '.join(ALL_COMMANDS)} only: name one VM for this command")
        return self.paths()[0]


def _print_policy(policy: dict, as_json: bool) -> None:
    from pyvmm.idle.control import render_policy

    click.echo(json.dumps(policy, indent=2) if as_json else "\n".join(render_policy(policy)))


class CtlGroup(ReferenceGroup):
    """`ctl --all COMMAND` takes no NAME: without this, click would read COMMAND as the NAME argument."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
        if "--all" in args[:first]:
            args = [*args[:first], "", *args[first:]]  # an empty NAME, ignored with --all
        return super().parse_args(ctx, args)


@click.group(cls=CtlGroup)
@click.option("--all", "all_vms", is_flag=True,
              help=f"Every running named VM (for {', '.join(ALL_COMMANDS)}; `pyvmm list` shows them).")
@click.argument("target", metavar="NAME|SOCKET")
@click.pass_context
def ctl(ctx: click.Context, all_vms: bool, target: str) -> None:
    """Control a running VM through its control socket (see docs/API.md): read and change its idle policy, pin its
    vCPUs, pause, resume or stop it, and watch its idle statistics.

    NAME is the VM's name (`pyvmm run --name`, `pyvmm list`); SOCKET a path to a control socket (`pyvmm run
    --api-socket PATH`; a path has a /). Examples: `pyvmm ctl guest-1234 state`, `pyvmm ctl --all stop`.
    """
    ctx.obj = Targets(target, all_vms)


@ctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def policy(targets: Targets, as_json: bool) -> int:
    """Show the idle policy in force and where each setting comes from."""
    with _client(targets.one()) as c:
        _print_policy(c.request("policy"), as_json)
    return 0


@ctl.command(name="set")
@click.option("--wfx-trap-threshold", type=click.IntRange(0, 2**64 - 1), help="arm64: new runqueue-depth threshold.")
@click.option("--halt-poll-ns", type=click.IntRange(0, 2**32 - 1), help="New per-VM halt-polling maximum (ns).")
@click.option("--wfx-passthrough", metavar="wfi,wfe",
              help="arm64: the full set of passed-through instructions (bits can only be added).")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting policy as JSON.")
@click.pass_obj
def set_(targets: Targets, wfx_trap_threshold, halt_poll_ns, wfx_passthrough, as_json: bool) -> int:
    """Change idle settings of the running VM. A refused change leaves the VM unchanged: status 64 for a value that
    cannot work, 69 when KVM or this architecture cannot apply it."""
    args: dict = {}
    if wfx_trap_threshold is not None:
        args["wfx_trap_threshold"] = wfx_trap_threshold
    if halt_poll_ns is not None:
        args["halt_poll_ns"] = halt_poll_ns
    if wfx_passthrough is not None:
        args["wfx_passthrough"] = [x.strip() for x in wfx_passthrough.split(",") if x.strip()]
    if not args:
        raise click.UsageError("give at least one of --wfx-trap-threshold, --halt-poll-ns, --wfx-passthrough")
    with _client(targets.one()) as c:
        _print_policy(c.request("set", **args), as_json)
    return 0


@ctl.command()
@click.argument("affinity", metavar="VCPU=CPUS,...")
@click.option("--json", "as_json", is_flag=True, help="Print the resulting policy as JSON.")
@click.pass_obj
def pin(targets: Targets, affinity: str, as_json: bool) -> int:
    """Pin vCPU threads to host CPUs: 0=1 puts vCPU 0 on CPU 1, 0=0-1,1=1 lets vCPU 0 use CPUs 0 and 1."""
    from pyvmm.errors import UsageError
    from pyvmm.idle.policy import PolicyParseError, parse_affinity

    try:
        parsed = parse_affinity(affinity)
    except PolicyParseError as err:
        raise UsageError(str(err)) from None
    with _client(targets.one()) as c:
        _print_policy(c.request("pin", affinity={str(k): sorted(v) for k, v in parsed.items()}), as_json)
    return 0


def _each(targets: Targets, cmd: str, **args) -> list[tuple[Path, dict]]:
    results = []
    for path in targets.paths():
        with _client(path) as c:
            results.append((path, c.request(cmd, **args)))
    return results


def _simple(name: str, help_text: str):
    @click.pass_obj
    def command(targets: Targets, **kw) -> int:
        from pyvmm.api.registry import name_of

        for path, result in _each(targets, name, **kw):
            prefix = f"{name_of(path)}: " if targets.all_vms else ""
            click.echo(f"{prefix}{result.get('state', 'ok')}")
        return 0

    command.__doc__ = help_text
    return command


ctl.command(name="pause")(_simple("pause", "Take every vCPU out of the guest until `resume`."))
ctl.command(name="resume")(_simple("resume", "Let paused vCPUs run again."))
ctl.command(name="stop")(click.option("--status", type=click.IntRange(0, 255), default=0, show_default=True,
                                      help="Exit status for `pyvmm run`.")(
    _simple("stop", "End the VM; `pyvmm run` exits with --status.")))


@ctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def state(targets: Targets, as_json: bool) -> int:
    """Show the VM's state (running, paused, created, stopped) and each vCPU's."""
    from pyvmm.api.registry import name_of

    for path, result in _each(targets, "state"):
        if as_json:
            click.echo(json.dumps({"name": name_of(path), **result}))
            continue
        vcpus = ", ".join(f"vCPU {v['index']} {v['state']}" for v in result["vcpus"])
        prefix = f"{name_of(path)}: " if targets.all_vms else ""
        click.echo(f"{prefix}{result['state']} ({vcpus})")
    return 0


@ctl.command()
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=1.0, show_default=True,
              help="Seconds between the two samples a rate is computed from.")
@click.option("--watch", type=click.FloatRange(0.05, 3600), metavar="SECONDS",
              help="Repeat every SECONDS (rates over that interval) until the VM ends or Ctrl-C.")
@click.option("--count", type=click.IntRange(1), help="With --watch: stop after this many intervals.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per interval (rates + raw totals).")
@click.option("--all", "all_columns", is_flag=True,
              help="Also the columns of stats this host's KVM does not have (wfi/s and wfe/s on x86_64, halt/s on "
                   "arm64), as -.")
@click.pass_obj
def stats(targets: Targets, interval: float, watch: float | None, count: int | None, as_json: bool,
          all_columns: bool) -> int:
    """Per-second rates per vCPU: exits, WFI/WFE exits (arm64), HLT exits (x86), halt wait and poll time (% of
    the interval), host CPU% of the vCPU thread, the CPU it last ran on and that CPU's runqueue depth."""
    from pyvmm.api.client import ApiError
    from pyvmm.idle.measure import interval as rates_between, render_interval

    step = watch or interval
    n = 0
    with _client(targets.one()) as c:
        before = c.request("stats")
        while True:
            time.sleep(step)
            try:
                after = c.request("stats")
            except ApiError:
                if watch and n:
                    return 0  # the VM ended while watching
                raise
            iv = rates_between(before, after)
            if as_json:
                click.echo(json.dumps({"interval": iv, "totals": after}))
            else:
                if n:
                    click.echo("")
                click.echo(f"over {iv['interval_s']:.2f} s:")
                click.echo("\n".join(render_interval(iv, all_columns)))
            n += 1
            before = after
            if not watch or (count is not None and n >= count):
                return 0
