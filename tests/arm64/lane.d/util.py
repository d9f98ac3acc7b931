"""Small shared helpers: logging, subprocess with bounds, atomic cache directories."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

_T0 = time.monotonic()


class LaneError(Exception):
    """A failure the lane reports as one line and a non-zero exit status outside pytest's 0-5."""

    def __init__(self, message: str, status: int = 20):
        super().__init__(message)
        self.status = status


def log(msg: str) -> None:
    print(f"[lane {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], capture: bool = False, cwd: Path | None = None, timeout: float = 300,
        env: dict[str, str] | None = None) -> str:
    try:
        r = subprocess.run(cmd, cwd=cwd, timeout=timeout, env=env, text=True,
                           stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.PIPE if capture else None)
    except FileNotFoundError:
        raise LaneError(f"command not found: {cmd[0]}") from None
    except subprocess.TimeoutExpired:
        raise LaneError(f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])} ...") from None
    if r.returncode != 0:
        detail = (r.stderr or "").strip().splitlines()[-3:] if capture else []
        raise LaneError(f"failed ({r.returncode}): {' '.join(cmd[:6])} {' | '.join(detail)}")
    return r.stdout if capture else ""


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


class Building:
    """Context manager for a cache entry: build into a temporary sibling, rename into place on success."""

    def __init__(self, final: Path, prune: bool = True):
        self.final = final
        self.prune = prune
        self.tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.final.exists():  # another run finished the same key first
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                self.tmp.rename(self.final)
            if self.prune:
                prune_siblings(self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


UNUSED_FOR = 3 * 24 * 3600  # seconds: superseded cache entries older than this are removed


def used(entry: Path) -> Path:
    """Mark a cache entry as used now (its mtime is its last use); returns it."""
    os.utime(entry)
    return entry


def prune_siblings(entry: Path) -> None:
    """Remove entries of the same kind (same name up to the digest) not used for UNUSED_FOR seconds; a
    concurrent run on another key keeps its entry fresh through used()."""
    kind = entry.name.rsplit("-", 1)[0] + "-"
    now = time.time()
    for other in entry.parent.glob(kind + "*"):
        if other != entry and not other.name.startswith(".") and now - other.stat().st_mtime > UNUSED_FOR:
            log(f"pruning unused cache entry {other.name}")
            if other.is_dir():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)
