"""The bundled bare-metal guests (package ``pyvmm_guests``), built from the assembly sources next to them.

x86_64 guests are flat 16-bit real-mode binaries (``x86_64/<name>.bin``, loaded at 0x10000, CS = 0x1000,
IP = 0); arm64 guests are position-independent arm64 Images (``arm64/<name>.Image``). What each guest does and
which arguments it reads is described in docs/MACHINES.md.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ARCHES", "NAMES", "names", "path"]

_ROOT = Path(__file__).resolve().parent

#: Architecture -> file suffix of its built guests.
_SUFFIX: dict[str, str] = {"x86_64": ".bin", "arm64": ".Image"}

ARCHES: tuple[str, ...] = tuple(_SUFFIX)
#: The same guests exist for every architecture.
NAMES: tuple[str, ...] = ("hello", "exits", "idle", "hostile")


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
