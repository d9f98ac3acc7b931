"""The idle feature of a run: the per-VM idle policy (IdleController), the control socket and the statistics
report, configured by an IdleSpec. pyvmm.vmm.runner subscribes it and closes it when the VM ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyvmm.idle.control import IdleController, warn_on_stderr
from pyvmm.spec import IdleSpec
from pyvmm.outcome import VmOutcome

if TYPE_CHECKING:
    from pyvmm.api.server import ControlServer
    from pyvmm.idle.caps import CapTable
    from pyvmm.kvm.vm import Vm
    from pyvmm.vmm.vmm import Vmm


def _caps(overrides: "dict[str, int]") -> "CapTable | None":
    """The capability table with the user's --cap overrides; None (the controller's default, built when first
    needed) without any."""
    if not overrides:
        return None
    from pyvmm.idle.caps import cap_table

    return cap_table(overrides)


class IdleFeature:
    def __init__(self, spec: IdleSpec) -> None:
        self.spec = spec
        self.reports = spec.measure or spec.stats_json is not None  # else the run only has a control socket
        # A measuring caller (bench) reports warnings with its results instead of on stderr at every run.
        self.controller = IdleController(spec.policy, caps=_caps(spec.cap_numbers),
                                         warn=(lambda message: None) if spec.measure else warn_on_stderr,
                                         record=self.reports)
        self.server: "ControlServer | None" = None
        self.data: list[int] = []

    def subscribe(self, vmm: "Vmm") -> None:
        self.controller.subscribe(vmm)
        if self.spec.api_socket is not None:
            # After the policy's handler: a refused policy leaves no socket behind.
            vmm.events.before_vcpus.subscribe(lambda vm: self._listen(vmm, vm))
            vmm.events.started.subscribe(self._serve)
        vmm.events.finished.subscribe(lambda outcome: self._finished(vmm))

    def _listen(self, vmm: "Vmm", vm: "Vm") -> None:
        from pyvmm.api.server import ControlServer

        self._close_server()  # the previous boot's, after a reboot with --on-reboot restart
        self.server = ControlServer(str(self.spec.api_socket), self.controller, vmm)

    def _serve(self, vmm: "Vmm") -> None:
        if self.server is not None:
            self.server.start()

    def _finished(self, vmm: "Vmm") -> None:
        # Stop serving before the machine is torn down, so no request can reach a closed VM.
        self._close_server()
        if vmm.machine is not None:
            self.data = list(vmm.machine.testdev.data)

    def _close_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()

    def report(self, outcome: VmOutcome | None) -> dict:
        """What --stats-json writes: totals per vCPU, the policy in force, what it visibly did, the DATA values."""
        from pyvmm.idle.measure import observed_effects, totals

        c = self.controller
        first, last = c.first_sample, c.last_sample
        duration = (last["monotonic_ns"] - first["monotonic_ns"]) / 1e9 if first and last else None
        policy = c.policy_dict()
        vcpus = totals(None, last)["vcpus"] if last else []
        report = {
            "outcome": None if outcome is None else {"status": outcome.status, "reason": outcome.reason},
            "duration_s": duration,
            "policy": policy,
            "vcpus": vcpus,
            "observed": observed_effects(policy, vcpus),
            "testdev_data": self.data,
        }
        if self.spec.measure and first and last:
            # "vcpus" counts from the vCPUs' start, before the first sample; a share of time (host CPU %) needs
            # the figures of exactly the interval duration_s covers. Under emulation the gap is a third of a run.
            report["interval_vcpus"] = totals(first, last)["vcpus"]
        return report

    def write_report(self, outcome: VmOutcome) -> dict:
        report = self.report(outcome)
        if self.spec.stats_json is not None:
            import json

            with open(self.spec.stats_json, "w") as f:
                json.dump(report, f, indent=2, default=str)
                f.write("\n")
        return report

    def close(self) -> None:
        self._close_server()
        self.controller.close()
