"""`pyvmm list`: the running named VMs (kvmtool's `lkvm list`), from their control sockets (pyvmm.api.registry)."""

from __future__ import annotations

import json

import click


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def vm_rows() -> list[dict]:
    """`info` of every running VM; a VM that ends while being asked is left out."""
    from pyvmm.api import registry
    from pyvmm.api.client import ApiError, Client

    rows = []
    for path in registry.running():
        try:
            with Client(str(path), timeout=2.0) as client:
                info = client.request("info")
        except ApiError:
            continue
        rows.append({**info, "name": info.get("name") or registry.name_of(path), "socket": str(path)})
    return rows


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects (docs/API.md, `info`, plus socket).")
def list_vms(as_json: bool) -> int:
    """List the running VMs: name, pid, state, vCPUs, memory, kernel and uptime (`pyvmm ctl NAME` controls one).

    Stale control sockets (their VM was killed) are removed on the way. VMs started with --api-socket elsewhere
    are not listed.
    """
    from pyvmm.spec.core import format_size

    rows = vm_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    table = [["NAME", "PID", "STATE", "VCPUS", "MEMORY", "UPTIME", "KERNEL"]]
    table += [[r["name"], str(r["pid"]), r["state"], str(r["vcpus"]), format_size(r["memory_bytes"]),
               _uptime(r.get("uptime_s")), r["kernel"]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0
