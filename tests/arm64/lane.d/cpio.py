"""A minimal writer for the newc cpio format the Linux initramfs loader reads.

Written in Python rather than driving cpio(1) so that ownership (root), device nodes (/dev/console) and the
archive layout are exact without needing root or fakeroot, and so that directory order is deterministic.
"""
from __future__ import annotations

import gzip
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


def _pad4(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


@dataclass
class CpioWriter:
    """Streams newc entries to a binary file object; parent directories are emitted before their contents."""

    out: BinaryIO
    mtime: int = 0
    _ino: int = 1
    _seen: set[str] = field(default_factory=set)

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               mtime: int | None = None) -> None:
        name = name.strip("/") or "."
        nameb = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, self.mtime if mtime is None else mtime, len(data), 0, 0,
                  rdev[0], rdev[1], len(nameb), 0)
        self._ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(hdr + nameb + _pad4(len(hdr) + len(nameb)))
        self.out.write(data + _pad4(len(data)))

    def mkdirs(self, path: str, mode: int = 0o755) -> None:
        """Create path and its parents (each once)."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p and p not in self._seen:
                self._seen.add(p)
                self._entry(p, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644, mtime: int | None = None) -> None:
        self.mkdirs(os.path.dirname(path.strip("/")))
        self._seen.add(path.strip("/"))
        self._entry(path, stat.S_IFREG | mode, data, mtime=mtime)

    def symlink(self, path: str, target: str) -> None:
        self.mkdirs(os.path.dirname(path.strip("/")))
        self._seen.add(path.strip("/"))
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.mkdirs(os.path.dirname(path.strip("/")))
        self._seen.add(path.strip("/"))
        self._entry(path, stat.S_IFCHR | mode, rdev=(major, minor))

    def tree(self, src: Path, dest: str = "/") -> None:
        """Add the contents of directory src under dest, keeping modes, symlinks and mtimes (pyc checks)."""
        src = Path(src)
        self.mkdirs(dest)
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            base = dest.rstrip("/") + ("" if rel == "." else "/" + rel)
            for name in dirs + sorted(files):
                full = os.path.join(root, name)
                st = os.lstat(full)
                target = f"{base}/{name}"
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(target, os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    if target.strip("/") not in self._seen:
                        self._seen.add(target.strip("/"))
                        self._entry(target, stat.S_IFDIR | stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.file(target, Path(full).read_bytes(), stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def close(self) -> None:
        self._entry(_TRAILER, 0)
        pos = self.out.tell() if self.out.seekable() else 0
        self.out.write(b"\0" * ((512 - pos % 512) % 512))


def write_archive(dest: Path, build, compress: bool = True, level: int = 6) -> None:
    """Create dest (gzip-compressed newc unless compress=False) by calling build(writer); atomic via rename."""
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as raw:
        if compress:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as gz:
                w = CpioWriter(gz)
                build(w)
                w.close()
        else:
            w = CpioWriter(raw)
            build(w)
            w.close()
    tmp.replace(dest)
