"""A newc ("070701") cpio writer: the archive format the Linux initramfs loader reads.

pyvmm writes archives itself rather than driving cpio(1) so that owners (root), device nodes and order are exact
without root or fakeroot, and the same input always gives the same bytes. The header is declared with construct:
13 fields of 8 ASCII hex digits after the magic (Documentation/driver-api/early-userspace/buffer-format.rst).
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass, field
from posixpath import normpath

import construct as cs

from pyvmm.errors import UsageError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
MAX_FIELD = 0xFFFFFFFF


class _Hex8(cs.Adapter):
    """A u32 written as 8 upper-case hex digits, as newc wants."""

    def _decode(self, obj: bytes, context, path) -> int:
        return int(obj, 16)

    def _encode(self, obj: int, context, path) -> bytes:
        if not 0 <= obj <= MAX_FIELD:
            raise cs.ExplicitError(f"cpio field value {obj} does not fit in 32 bits")
        return b"%08X" % obj


_H = _Hex8(cs.Bytes(8))

HEADER = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "ino" / _H, "mode" / _H, "uid" / _H, "gid" / _H, "nlink" / _H, "mtime" / _H, "filesize" / _H,
    "devmajor" / _H, "devminor" / _H, "rdevmajor" / _H, "rdevminor" / _H, "namesize" / _H, "check" / _H,
)
HEADER_SIZE = HEADER.sizeof()  # 110


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _clean(path: str) -> str:
    """Archive names are relative ("bin/sh"); the kernel resolves them from the root of rootfs."""
    if not path or "\0" in path:
        raise UsageError(f"bad path in initramfs: {path!r}")
    name = normpath("/" + path).lstrip("/")
    if name in ("", "."):
        raise UsageError(f"bad path in initramfs: {path!r} (must name something below /)")
    return name


@dataclass
class Entry:
    name: str
    mode: int  # file type bits | permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0


@dataclass
class Archive:
    """An initramfs being assembled. Parent directories are added (0755, root) before their contents as needed.

    `mtime` is applied to every entry (0 by default) so the output is reproducible.
    """

    mtime: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)

    # -- adding ----------------------------------------------------------------------------------------------------
    def _add(self, path: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> str:
        name = _clean(path)
        parent = name.rpartition("/")[0]
        if parent and parent not in self.entries:
            self.add_dir(parent)
        elif parent and not stat.S_ISDIR(self.entries[parent].mode):
            raise UsageError(f"initramfs: cannot add /{name}: /{parent} is not a directory")
        existing = self.entries.get(name)
        if existing is not None and not (stat.S_ISDIR(existing.mode) and stat.S_ISDIR(mode)):
            raise UsageError(f"initramfs: /{name} is added twice")
        self.entries[name] = Entry(name, mode, data, rdev, mtime=self.mtime)
        return name

    def add_dir(self, path: str, perm: int = 0o755) -> None:
        self._add(path, stat.S_IFDIR | (perm & 0o7777))

    def add_file(self, path: str, data: bytes, perm: int = 0o644) -> None:
        self._add(path, stat.S_IFREG | (perm & 0o7777), bytes(data))

    def add_symlink(self, path: str, target: str) -> None:
        if not target:
            raise UsageError(f"initramfs: symlink /{path} needs a target")
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def add_device(self, path: str, kind: str, major: int, minor: int, perm: int = 0o600) -> None:
        """kind 'c' (character) or 'b' (block), as mknod(1)."""
        types = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}
        if kind not in types:
            raise UsageError(f"initramfs: device kind must be 'c' or 'b' (got {kind!r})")
        self._add(path, types[kind] | (perm & 0o7777), rdev=(major, minor))

    def add_standard_devices(self) -> None:
        """The nodes a kernel and busybox need before devtmpfs is mounted (and if it cannot be)."""
        self.add_dir("dev")
        self.add_device("dev/console", "c", 5, 1)
        self.add_device("dev/null", "c", 1, 3, 0o666)
        self.add_device("dev/zero", "c", 1, 5, 0o666)
        self.add_device("dev/mem", "c", 1, 1, 0o640)
        self.add_device("dev/ttyS0", "c", 4, 64, 0o620)

    # -- output ----------------------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        out = bytearray()
        ino = 1
        for entry in [*self.entries.values(), Entry(TRAILER, 0)]:
            name = entry.name.encode() + b"\0"
            header = HEADER.build(dict(
                ino=ino if entry.name != TRAILER else 0, mode=entry.mode, uid=entry.uid, gid=entry.gid,
                nlink=2 if stat.S_ISDIR(entry.mode) else 1 if entry.name != TRAILER else 0, mtime=entry.mtime,
                filesize=len(entry.data), devmajor=0, devminor=0, rdevmajor=entry.rdev[0], rdevminor=entry.rdev[1],
                namesize=len(name), check=0,
            ))
            ino += 1
            out += header + name + _pad4(HEADER_SIZE + len(name))
            out += entry.data + _pad4(len(entry.data))
        return bytes(out)

    def to_gzip(self, level: int = 6) -> bytes:
        # mtime=0 in the gzip header too: reproducible output.
        return gzip.compress(self.to_bytes(), compresslevel=level, mtime=0)


def parse(data: bytes) -> list[Entry]:
    """Read a newc archive back (uncompressed or gzip): for tests and `pyvmm initramfs --list`."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    entries: list[Entry] = []
    offset = 0
    while True:
        if offset + HEADER_SIZE > len(data):
            raise UsageError(f"cpio archive truncated at byte {offset} (no {TRAILER} entry)")
        try:
            header = HEADER.parse(data[offset:offset + HEADER_SIZE])
        except (cs.ConstructError, ValueError) as err:
            raise UsageError(f"not a newc cpio archive at byte {offset}: {err}") from None
        offset += HEADER_SIZE
        name = data[offset:offset + header.namesize - 1].decode(errors="replace")
        offset += header.namesize
        offset += -offset % 4
        body = data[offset:offset + header.filesize]
        offset += header.filesize
        offset += -offset % 4
        if name == TRAILER:
            return entries
        entries.append(Entry(name, header.mode, body, (header.rdevmajor, header.rdevminor), header.uid, header.gid,
                             header.mtime))
