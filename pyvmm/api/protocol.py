"""The control protocol (docs/API.md): one JSON object per line each way.

Request:  {"cmd": NAME, ...arguments}
Response: {"ok": true, "result": ...}  or  {"ok": false, "error": "one line"}

`dispatch` is independent of sockets so it can be tested with fake controllers.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Iterable

from pyvmm.errors import ExitStatus, PyvmmError
from pyvmm.idle.policy import WFX_NAMES, IdleChange, IdlePolicyError, PolicyParseError

if TYPE_CHECKING:
    from pyvmm.idle.control import IdleController
    from pyvmm.vmm.vmm import Vmm

COMMANDS = ("policy", "set", "pin", "pause", "resume", "stop", "stats", "state", "info")
MAX_LINE = 64 * 1024


class RequestError(ValueError):
    """A malformed request (the client's fault): reported as {"ok": false}."""


def _int(req: dict, key: str, limit: int) -> int | None:
    if key not in req or req[key] is None:
        return None
    v = req[key]
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
        raise RequestError(f"{key!r} must be an integer in 0..{limit - 1}, got {v!r}")
    return v


def parse_change(req: dict) -> IdleChange:
    known = {"cmd", "wfx_trap_threshold", "halt_poll_ns", "wfx_passthrough"}
    extra = sorted(set(req) - known)
    if extra:
        raise RequestError(f"set: unknown field(s) {', '.join(extra)} (known: {', '.join(sorted(known - {'cmd'}))})")
    wfx = req.get("wfx_passthrough")
    if wfx is not None:
        if not isinstance(wfx, list) or not all(isinstance(x, str) for x in wfx):
            raise RequestError("'wfx_passthrough' must be a list of names (wfi, wfe)")
        bad = sorted(set(x.lower() for x in wfx) - WFX_NAMES)
        if bad:
            raise RequestError(f"'wfx_passthrough': unknown {', '.join(bad)} (allowed: wfe, wfi)")
        wfx = frozenset(x.lower() for x in wfx)
    change = IdleChange(wfx_trap_threshold=_int(req, "wfx_trap_threshold", 2**64),
                        halt_poll_ns=_int(req, "halt_poll_ns", 2**32), wfx_passthrough=wfx)
    if change == IdleChange():
        raise RequestError("set: give at least one of wfx_trap_threshold, halt_poll_ns, wfx_passthrough")
    return change


def parse_affinity(req: dict) -> dict[int, set[int]]:
    aff = req.get("affinity")
    if not isinstance(aff, dict) or not aff:
        raise RequestError("pin: 'affinity' must be an object {\"VCPU\": [CPU, ...]}")
    out: dict[int, set[int]] = {}
    for k, v in aff.items():
        try:
            idx = int(k)
        except ValueError:
            raise RequestError(f"pin: vCPU {k!r} is not a number") from None
        if idx < 0 or not isinstance(v, list) or not v or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in v):
            raise RequestError(f"pin: vCPU {k}: expected a non-empty list of CPU numbers, got {v!r}")
        out[idx] = set(v)
    return out


def dispatch(req: Any, controller: "IdleController", vmm: "Vmm") -> dict:
    """Run one request against a running VM; never raises for a bad request or a refused change."""
    from pyvmm.outcome import VmOutcome

    try:
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            raise RequestError('a request is a JSON object with a "cmd" string')
        cmd = req["cmd"]
        if cmd == "policy":
            return {"ok": True, "result": controller.policy_dict()}
        if cmd == "set":
            return {"ok": True, "result": controller.change(parse_change(req))}
        if cmd == "pin":
            return {"ok": True, "result": controller.pin(parse_affinity(req))}
        if cmd == "stats":
            return {"ok": True, "result": controller.sample()}
        if cmd == "state":
            vcpus = [{"index": t.vcpu.index, "state": _state_name(t.state)} for t in vmm.threads]
            return {"ok": True, "result": {"state": overall_state(v["state"] for v in vcpus), "vcpus": vcpus}}
        if cmd == "info":
            return {"ok": True, "result": vm_info(vmm)}
        if cmd == "pause":
            if not vmm.pause():
                return refusal("not every vCPU could be paused (some have stopped)", ExitStatus.SOFTWARE)
            return {"ok": True, "result": {"state": "paused"}}
        if cmd == "resume":
            vmm.resume()
            return {"ok": True, "result": {"state": "running"}}
        if cmd == "stop":
            status = _int(req, "status", 256)
            vmm.stop(VmOutcome(ExitStatus.OK if status is None else status, "stopped through the control socket"))
            return {"ok": True, "result": {"state": "stopping"}}
        raise RequestError(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})")
    except (RequestError, IdlePolicyError, PolicyParseError, PyvmmError) as err:
        return refusal(str(err), refusal_status(err))
    except OSError as err:  # e.g. sched_setaffinity refused
        return refusal(f"{err.strerror or err}", ExitStatus.OS_ERR)


def refusal(error: str, status: ExitStatus = ExitStatus.USAGE) -> dict:
    """A refused request's reply; `status` is the exit status `pyvmm ctl` gives for it (README's table)."""
    return {"ok": False, "error": error, "status": int(status)}


def refusal_status(err: Exception) -> ExitStatus:
    """64 for a request that cannot work (bad value, unknown vCPU); 69 when KVM or the kernel refuses the change."""
    if isinstance(err, PyvmmError):
        return ExitStatus(err.exit_status)
    if isinstance(err, IdlePolicyError):
        return ExitStatus.UNAVAILABLE
    return ExitStatus.USAGE


def _state_name(state: object) -> str:
    # VcpuState members are plain strings (or an Enum in older cores): report the name either way.
    return str(getattr(state, "value", state))


def overall_state(vcpu_states: Iterable[str]) -> str:
    """The VM's state from its vCPUs': running while any runs, else paused, created (starting) or stopped."""
    states = set(vcpu_states)
    for state in ("running", "paused", "created", "stopped"):
        if state in states:
            return state
    return "created"


def vm_info(vmm: "Vmm") -> dict:
    """What `pyvmm list` shows of one VM (docs/API.md, `info`)."""
    from pyvmm.api.registry import ProcessClock

    spec = vmm.spec
    pid = os.getpid()
    return {"name": spec.name, "pid": pid, "state": overall_state(_state_name(t.state) for t in vmm.threads),
            "vcpus": spec.cpus, "memory_bytes": spec.memory, "kernel": str(spec.kernel or "hello"),
            "uptime_s": ProcessClock(pid).uptime_s()}


def encode(obj: dict) -> bytes:
    return (json.dumps(obj, default=str) + "\n").encode()


def decode(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"not a JSON line: {err}") from None
