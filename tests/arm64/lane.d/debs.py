"""Debian arm64 packages: resolve versions from the local apt lists, download once into the cache, extract.

The cache key of everything built from .debs is the exact set of .deb file names (which carry the version),
so a package update in the archive produces a new build instead of reusing a stale one.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from util import LaneError, log, run

# apt-cache rebuilds its binary cache on every call where the system disables it (Debian's docker images do):
# keeping one in the lane's cache makes each look-up 0.3 s instead of 2 s. apt revalidates it against the lists.
APT_OPTS: list[str] = []


def use_cache(cache: Path) -> None:
    (cache / "apt").mkdir(parents=True, exist_ok=True)
    APT_OPTS[:] = ["-o", f"Dir::Cache::pkgcache={cache}/apt/pkgcache.bin",
                   "-o", f"Dir::Cache::srcpkgcache={cache}/apt/srcpkgcache.bin"]


@dataclass(frozen=True)
class Deb:
    package: str      # name without architecture
    version: str
    filename: str     # basename of the pool file, e.g. libc6_2.36-9+deb12u10_arm64.deb
    depends: str = ""


class StaleLists(LaneError):
    """apt-get download failed: usually the local lists are older than the mirror (fixed by apt-get update)."""


def update_lists() -> None:
    log("refreshing the apt lists (apt-get update)")
    run(["apt-get", "update", "-q"], timeout=600)


def _arm64_lists_present() -> bool:
    r = subprocess.run(["apt-cache", *APT_OPTS, "show", "--no-all-versions", "libc6:arm64"], capture_output=True, timeout=120)
    return r.returncode == 0 and b"Version:" in r.stdout


def ensure_arm64_apt() -> None:
    """Add the arm64 foreign architecture and refresh the lists, only when arm64 packages are unknown."""
    archs = run(["dpkg", "--print-foreign-architectures"], capture=True).split()
    if "arm64" in archs and _arm64_lists_present():
        return
    log("adding the arm64 architecture to dpkg and running apt-get update")
    if "arm64" not in archs:
        run(["dpkg", "--add-architecture", "arm64"])
    run(["apt-get", "update", "-q"], timeout=600)
    if not _arm64_lists_present():
        raise LaneError("apt knows no arm64 packages even after apt-get update (check /etc/apt/sources.list*)")


def resolve(packages: list[str]) -> list[Deb]:
    """Candidate versions of package:arm64 for each name, from `apt-cache show`."""
    out = run(["apt-cache", *APT_OPTS, "show", "--no-all-versions", *[f"{p}:arm64" for p in packages]], capture=True)
    found: dict[str, Deb] = {}
    for stanza in out.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                k, v = line.split(":", 1)
                fields[k] = v.strip()
        if fields.get("Architecture") in ("arm64", "all") and "Package" in fields:
            found.setdefault(fields["Package"], Deb(fields["Package"], fields["Version"],
                                                    os.path.basename(fields["Filename"]),
                                                    fields.get("Depends", "")))
    missing = [p for p in packages if p not in found]
    if missing:
        raise LaneError(f"no arm64 candidate for: {' '.join(missing)}")
    return [found[p] for p in packages]


def download(debs: list[Deb], cache: Path) -> list[Path]:
    """Make sure every .deb is in cache/debs (apt-get download only the missing ones)."""
    dest = cache / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    missing = [d for d in debs if not (dest / d.filename).exists()]
    if missing:
        log(f"downloading {len(missing)} arm64 package(s): {' '.join(d.package for d in missing)}")
        tmp = dest / f".dl-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        os.chmod(tmp, 0o777)  # apt drops to the _apt user for downloads when it can
        try:
            run(["apt-get", "download", "-q", *[f"{d.package}:arm64={d.version}" for d in missing]],
                cwd=tmp, timeout=900)
        except LaneError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StaleLists(f"{e} (the apt lists may name versions the mirror no longer has)") from None
        for d in missing:
            got = tmp / d.filename
            if not got.exists():
                # apt-get names the file with the epoch escaped (%3a); accept any file of that package
                cands = list(tmp.glob(f"{d.package}_*_*.deb"))
                if len(cands) != 1:
                    raise LaneError(f"apt-get download did not produce {d.filename}")
                got = cands[0]
            got.replace(dest / d.filename)
        tmp.rmdir()
    return [dest / d.filename for d in debs]


def extract(deb: Path, into: Path, members: list[str] | None = None) -> None:
    """dpkg-deb -x, or only the given tar member patterns (much faster for the 90 MB kernel package)."""
    into.mkdir(parents=True, exist_ok=True)
    if members is None:
        run(["dpkg-deb", "-x", str(deb), str(into)])
        return
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        subprocess.run(["tar", "-x", "-C", str(into), "--wildcards", *members], stdin=fsys.stdout, check=True,
                       timeout=600)
    finally:
        fsys.stdout.close()
        fsys.wait(timeout=60)
