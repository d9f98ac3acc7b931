"""The bundled bare-metal guests (package ``pyvmm_guests``), built from the assembly sources next to them.

x86_64 guests are flat 16-bit real-mode binaries (``x86_64/<name>.bin``, loaded at 0x10000, CS = 0x1000,
IP = 0); arm64 guests are position-independent arm64 Images (``arm64/<name>.Image``). What each guest does and
which arguments it reads is described in docs/MACHINES.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

__all__ = ["ARCHES", "NAMES", "GUESTS", "Guest", "names", "path", "resolve"]

_ROOT = Path(__file__).resolve().parent

#: Architecture -> file suffix of its built guests.
_SUFFIX: dict[str, str] = {"x86_64": ".bin", "arm64": ".Image"}

ARCHES: tuple[str, ...] = tuple(_SUFFIX)
#: The same guests exist for every architecture.
NAMES: tuple[str, ...] = ("hello", "exits", "idle", "hostile")


class Guest(NamedTuple):
    """What a bundled guest does and the arguments it reads (`--guest-arg`, in order; 0 = the default)."""

    name: str
    does: str
    arguments: str


#: The table of docs/MACHINES.md, for `pyvmm guests`.
GUESTS: tuple[Guest, ...] = (
    Guest("hello", "prints `Hello from the pyvmm <arch> guest` on the UART, then exits 0", "none"),
    Guest("exits", "makes N exits to the VMM (writes to the test device's SINK), prints `exits: N`, then exits 0",
          "N (default 100000)"),
    Guest("idle", "N times: arms a one-shot timer P µs away and idles (HLT / WFI) until it fires, reporting each "
                  "wake-up latency as DATA (--stats-json); then exits 0",
          "N (default 100), P in µs (default 2000)"),
    Guest("hostile", "drives the first virtio-blk device as a malicious driver would, one phase at a time (DATA "
                     "per phase); exits 0 when the device survived every phase",
          "phase mask (default all), RAM size in MiB, flood rounds (default 1)"),
)
assert tuple(g.name for g in GUESTS) == NAMES


def _check_arch(arch: str) -> str:
    if arch not in _SUFFIX:
        raise ValueError(f"unknown guest architecture {arch!r} (expected one of: {', '.join(ARCHES)})")
    return arch


def names(arch: str) -> tuple[str, ...]:
    """The names of the bundled guests for ``arch`` ("x86_64" or "arm64")."""
    _check_arch(arch)
    return NAMES


def path(arch: str, name: str) -> Path:
    """The file of the bundled guest ``name`` for ``arch``; raises if it is unknown or was not built."""
    _check_arch(arch)
    if name not in NAMES:
        raise ValueError(f"unknown {arch} guest {name!r} (expected one of: {', '.join(NAMES)})")
    file = _ROOT / arch / f"{name}{_SUFFIX[arch]}"
    if not file.is_file():
        raise FileNotFoundError(f"guest binary {file} is missing: build it with `make -C guest-kernels`")
    return file


def resolve(kernel: str | Path, arch: str) -> Path:
    """`-k NAME`: the bundled guest NAME for ``arch``, unless a file called NAME exists (a real file wins)."""
    candidate = Path(kernel)
    if str(kernel) in NAMES and not candidate.exists():
        return path(arch, str(kernel))
    return candidate
