"""Pick kernel modules (with their dependencies, in load order) out of an extracted Debian kernel package.

Debian's package ships compressed .ko.xz files but no modules.dep (depmod runs at install time), so dependencies
are read from each module's .modinfo section ("depends=a,b"). Modules are decompressed here because busybox
insmod does not read xz.
"""
from __future__ import annotations

import lzma
import re
from dataclasses import dataclass
from pathlib import Path

from util import LaneError


@dataclass(frozen=True)
class Module:
    name: str          # canonical name (dashes as underscores), as insmod/lsmod know it
    data: bytes        # the uncompressed .ko


def _index(moddir: Path) -> dict[str, Path]:
    idx: dict[str, Path] = {}
    for p in moddir.rglob("*.ko*"):
        stem = p.name.split(".ko")[0]
        idx[stem.replace("-", "_")] = p
    return idx


def _load(p: Path) -> bytes:
    raw = p.read_bytes()
    if p.name.endswith(".xz"):
        return lzma.decompress(raw)
    if p.name.endswith(".ko"):
        return raw
    raise LaneError(f"unsupported module compression: {p.name}")


def _depends(ko: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def closure(moddir: Path, wanted: list[str]) -> list[Module]:
    """wanted modules that exist (others are built in or absent: skipped) plus dependencies, deps first."""
    idx = _index(moddir)
    order: list[Module] = []
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in done or name not in idx:
            return
        if name in stack:
            raise LaneError(f"module dependency cycle: {' -> '.join(stack + (name,))}")
        data = _load(idx[name])
        for dep in _depends(data):
            if dep not in idx:
                raise LaneError(f"module {name} depends on {dep}, which is not in {moddir}")
            visit(dep, stack + (name,))
        done.add(name)
        order.append(Module(name, data))

    for w in wanted:
        visit(w.replace("-", "_"), ())
    return order
