"""`pyvmm run` options of the idle area (see pyvmm/cli/areas.py): the per-VM idle policy (WFx trapping, x86 exit
passthrough, halt polling, vCPU pinning), the control socket and the stats report.

Module-level imports stay light (click only): the policy machinery is imported when an option asks for it.
"""

from __future__ import annotations

import json
from typing import Any

import click

from pyvmm.cli.areas import NoHooks
from pyvmm.config import VmConfig

OPTIONS: list = [
    click.option("--wfx-trap-threshold", metavar="N",
                 help="arm64: trap WFI/WFE only when more than N tasks run on the vCPU's host CPU (0 = always trap, "
                      "a large N = practically never). Needs KVM_CAP_ARM_WFX_TRAP_RUNQUEUE_DEPTH."),
    click.option("--wfx-passthrough", metavar="wfi,wfe", default="",
                 help="arm64: never trap these instructions for this VM (one-way; KVM_CAP_ARM_DISABLE_EXITS). "
                      "An idle vCPU then looks 100% busy to the host: pin vCPUs and do not over-commit."),
    click.option("--halt-poll-ns", metavar="N",
                 help="Per-VM maximum halt-polling time in ns (KVM_CAP_HALT_POLL); default: the host's "
                      "kvm.halt_poll_ns, which `pyvmm probe` shows."),
    click.option("--idle-exits", metavar="hlt,pause,mwait,cstate", default="",
                 help="x86_64: let the guest execute these itself instead of exiting (KVM_CAP_X86_DISABLE_EXITS)."),
    click.option("--cpu-affinity", metavar="VCPU=CPUS,...", default="",
                 help="Pin vCPU threads to host CPUs, e.g. 0=2,1=3 or 0=2-3 (the runqueue depth a WFx threshold "
                      "compares against depends on it)."),
    click.option("--allow-fallback", is_flag=True,
                 help="When the kernel refuses a per-VM idle setting, run anyway with the kernel's behaviour "
                      "(recorded in the policy report) instead of refusing to start."),
    click.option("--cap-number", "cap_numbers", metavar="NAME=N", multiple=True,
                 help="Capability number of an out-of-tree cap on this kernel, e.g. ARM_DISABLE_EXITS=250 "
                      "(repeatable; also PYVMM_CAP_<NAME>=N)."),
    click.option("--api-socket", metavar="PATH",
                 help="Serve the control socket (JSON lines, docs/API.md) here while the VM runs; see `pyvmm ctl`."),
    click.option("--stats-json", metavar="FILE",
                 help="At exit, write the vCPU statistics totals, host CPU time per vCPU, the idle policy in force "
                      "and the guest's test-device DATA values to FILE as JSON."),
]

_POLICY_KEYS = ("wfx_trap_threshold", "wfx_passthrough", "halt_poll_ns", "idle_exits", "cpu_affinity",
                "allow_fallback", "cap_numbers")


def setup(config: VmConfig, values: dict[str, Any]) -> Any:
    # Strings such as "0" are truthy, so an explicit threshold/halt-poll of 0 counts as asked for.
    if not any(values.get(k) for k in _POLICY_KEYS + ("api_socket", "stats_json")):
        return NoHooks()
    return IdleArea(config, values)


def build_controller(values: dict[str, Any]) -> Any:
    """An IdleController from option strings; bad input is a UsageError naming the option."""
    from pyvmm.errors import UsageError
    from pyvmm.idle.caps import CapError, cap_table, parse_cap_override
    from pyvmm.idle.control import IdleController
    from pyvmm.idle.policy import IdlePolicy, PolicyParseError

    try:
        policy = IdlePolicy.from_strings(
            wfx_trap_threshold=values.get("wfx_trap_threshold"), wfx_passthrough=values.get("wfx_passthrough") or "",
            halt_poll_ns=values.get("halt_poll_ns"), idle_exits=values.get("idle_exits") or "",
            allow_fallback=bool(values.get("allow_fallback")), cpu_affinity=values.get("cpu_affinity") or "")
        overrides = dict(parse_cap_override(t) for t in values.get("cap_numbers") or ())
        caps = cap_table(overrides)
    except (PolicyParseError, CapError) as err:
        raise UsageError(str(err)) from None
    return IdleController(policy, caps=caps)


class IdleArea:
    def __init__(self, config: VmConfig, values: dict[str, Any]) -> None:
        self.controller = build_controller(values)
        self.api_path: str | None = values.get("api_socket")
        self.stats_path: str | None = values.get("stats_json")
        self.server: Any = None
        self.data: list[int] = []
        if self.stats_path:
            # Fail before the guest runs, not after: the report would otherwise be lost at exit.
            try:
                open(self.stats_path, "a").close()
            except OSError as err:
                from pyvmm.errors import MissingFileError

                raise MissingFileError(f"--stats-json {self.stats_path}: {err.strerror}") from None

    def attach(self, vmm: Any) -> None:
        self.controller.attach(vmm)
        if self.api_path:
            vmm.before_vcpus.append(self._listen)  # after the policy hook: a refused policy leaves no socket
        vmm.on_started.append(self._started)
        vmm.on_finished.append(self._finished)

    def _listen(self, vm: Any) -> None:
        import atexit

        from pyvmm.api.server import ControlServer

        self.server = ControlServer(self.api_path, self.controller, self.controller.vmm)
        atexit.register(self._close_server)  # the socket file must not outlive pyvmm even on an early failure

    def _started(self, vmm: Any) -> None:
        if self.server is not None:
            self.server.start()

    def _finished(self, vmm: Any, outcome: Any) -> None:
        # Stop serving before the machine is torn down, so no request can reach a closed VM.
        self._close_server()
        if vmm.machine is not None:
            self.data = list(vmm.machine.testdev.data)

    def _close_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def report(self, outcome: Any) -> dict:
        from pyvmm.idle.measure import observed_effects, totals

        c = self.controller
        last = c.last_sample
        duration = None
        if c.first_sample and last:
            duration = (last["monotonic_ns"] - c.first_sample["monotonic_ns"]) / 1e9
        policy = c.policy_dict()
        vcpus = totals(None, last)["vcpus"] if last else []
        return {
            "outcome": None if outcome is None else {"status": outcome.status, "reason": outcome.reason},
            "duration_s": duration,
            "policy": policy,
            "vcpus": vcpus,
            "observed": observed_effects(policy, vcpus),
            "testdev_data": self.data,
        }

    def finish(self, vmm: Any, outcome: Any, status: int) -> int:
        self._close_server()
        if self.stats_path:
            with open(self.stats_path, "w") as f:
                json.dump(self.report(outcome), f, indent=2, default=str)
                f.write("\n")
        return status
