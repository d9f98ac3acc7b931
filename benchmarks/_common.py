"""Shared helpers for the benchmark scripts: locating tools, timing, statistics, table printing.

Not a package module: the scripts import it as a sibling (a script's own folder is first on sys.path).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
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

    def scaled(self, factor: float) -> dict[str, float | int]:
        """The summary as a JSON-ready dict in another unit (e.g. 1e6 for microseconds)."""
        return {k: (v * factor if k != "n" else v) for k, v in asdict(self).items()}

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


def kvm_backend() -> str:
    """Which module provides /dev/kvm (as tests/run prints it): kvm_intel, kvm_amd, kvm_pvm (a software backend)..."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm"
    try:
        mods = sorted(m for m in os.listdir("/sys/module") if m.startswith("kvm_"))
    except OSError:
        mods = []
    return f"/dev/kvm from {' '.join(mods) or 'kvm (built in)'}"


def machine_info() -> dict[str, object]:
    """The facts a figure needs beside it: when, which kernel and KVM backend, how many CPUs, how busy."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "kvm": kvm_backend(),
        "cpus": os.cpu_count() or 1,
        "python": platform.python_version(),
        "loadavg": list(os.getloadavg()),
    }


def write_json(path: str | None, data: dict[str, object]) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")


# Run by pyvmm's own interpreter: where its packages are, how many of their modules have no cached bytecode, and
# whether pyvmm is an editable install (PEP 610 direct_url.json; setuptools' editable finder is then imported by a
# .pth file at every interpreter start).
_PROBE = r"""
import importlib.metadata, importlib.util, json, os, sys
dirs = []
for name in ("pyvmm", "pyvmm_bindings", "pyvmm_guests"):
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
        dirs += [d for d in spec.submodule_search_locations if os.path.isdir(d)]
missing = sum(1 for d in dirs for root, _, files in os.walk(d) for f in files
              if f.endswith(".py") and not os.path.exists(importlib.util.cache_from_source(os.path.join(root, f))))
try:
    url = json.loads(importlib.metadata.distribution("pyvmm").read_text("direct_url.json") or "{}")
except importlib.metadata.PackageNotFoundError:
    url = {}
print(json.dumps({"dirs": dirs, "missing": missing, "editable": bool(url.get("dir_info", {}).get("editable")),
                  "version": sys.version.split()[0]}))
"""


def without_dont_write_bytecode() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def pyvmm_install(pyvmm: str) -> dict[str, object]:
    """Facts about the Python install behind a pyvmm console script (empty when it is not a Python script)."""
    python = script_interpreter(pyvmm)
    if python is None:
        return {}
    # From /: a checkout in the current directory (with its pyvmm.egg-info) would shadow the installed package.
    proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60, cwd="/")
    if proc.returncode != 0:
        return {"python": python}
    return {"python": python, **json.loads(proc.stdout)}


def ensure_bytecode(pyvmm: str, warmups: list[list[str]]) -> str:
    """Make sure pyvmm starts from cached bytecode, as a user's install does, and say what was done.

    With PYTHONDONTWRITEBYTECODE set (it is on the project's machines) nothing is ever cached, so every start would
    compile all of pyvmm's modules: tens of milliseconds that a user does not pay. compileall writes the .pyc files of
    pyvmm's packages; one untimed run of each warm-up command without the variable caches any other module it
    imports (site-packages, the stdlib).
    """
    info = pyvmm_install(pyvmm)
    if "dirs" not in info:
        return "bytecode: pyvmm's interpreter is unknown; caches not checked"
    env = without_dont_write_bytecode()
    dirs: list[str] = info["dirs"]  # type: ignore[assignment]
    proc = subprocess.run([str(info["python"]), "-m", "compileall", "-q", *dirs], env=env, capture_output=True,
                          text=True, timeout=300)
    for cmd in warmups:
        subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    after = pyvmm_install(pyvmm).get("missing", "?")
    var = os.environ.get("PYTHONDONTWRITEBYTECODE")
    note = (f"bytecode: PYTHONDONTWRITEBYTECODE={var!r} here; " if var else "bytecode: ")
    note += (f"{info['missing']} of pyvmm's modules had no .pyc; compileall of {', '.join(dirs)} and "
             f"{len(warmups)} untimed run(s) without the variable cached them before timing ({after} left"
             f"{'; compileall failed: ' + proc.stderr.strip().splitlines()[-1] if proc.returncode else ''})")
    return note


def editable_note(pyvmm: str) -> str | None:
    info = pyvmm_install(pyvmm)
    if not info.get("editable"):
        return None
    return ("note: pyvmm is an editable install (pip install -e): setuptools' editable finder "
            "(__editable___pyvmm_*_finder, imported by a .pth at every start) costs a bare interpreter ~10 ms, but "
            "`pyvmm run` imports most of what it imports anyway (about 1% more instructions than a regular install)")
