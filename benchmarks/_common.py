"""Shared helpers for the benchmark scripts: locating tools, timing, statistics, table printing.

Not a package module: the scripts import it as a sibling (a script's own folder is first on sys.path).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUESTS_X86 = REPO / "guest-kernels" / "x86_64"


def default_pyvmm() -> str | None:
    """The `pyvmm` console script of the interpreter running this script, else the one on PATH.

    The one next to sys.executable is preferred because on PATH it may be a pyenv shim (a bash script that execs
    `pyenv exec`), which would add tens of milliseconds that are not pyvmm's.
    """
    beside = Path(sys.executable).parent / "pyvmm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("pyvmm")


def resolve_tool(path: str | None, what: str) -> str | None:
    """An executable path, or None after printing why the comparison is skipped."""
    if not path:
        print(f"SKIP {what}: no path given")
        return None
    found = shutil.which(path) if os.sep not in path else (path if os.access(path, os.X_OK) else None)
    if found is None:
        print(f"SKIP {what}: {path} not found or not executable")
        return None
    return found


def script_interpreter(script: str) -> str | None:
    """The interpreter named on a console script's shebang line (None for a binary or a shell shim)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode(errors="replace").split()
    if not parts or "python" not in Path(parts[0]).name:
        return None
    return parts[0]


@dataclass
class Summary:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        return cls(statistics.median(values), min(values), max(values), len(values))

    def spread_pct(self) -> float:
        """(max - min) / median, in percent: a blunt but honest noise figure for a handful of runs."""
        return 100.0 * (self.high - self.low) / self.median if self.median else float("nan")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def verdict(ratio: float, target: float) -> str:
    return "MET" if ratio <= target else "NOT MET"


def machine_note() -> str:
    """One line about the machine's state: these are wall-clock figures, so a busy machine makes them noisy."""
    load1, _, _ = os.getloadavg()
    cpus = os.cpu_count() or 1
    note = f"machine: {cpus} CPUs, load average (1 min) {load1:.2f}"
    if load1 > 0.5:
        note += "  WARNING: the machine is busy; expect noisy figures (rerun when it is idle)"
    return note
