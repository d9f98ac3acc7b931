"""The files a VmSpec names, checked once before anything is read, created or opened: where pyvmm reads a file it
must be a regular file (a disk may also be a block device) no larger than it can use, and where it writes one the
path must be a regular file or not exist yet. A FIFO would block pyvmm forever, /dev/zero never ends, a directory
is a typo: each is refused with one line, before any output file is created.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyvmm.errors import MissingFileError, UsageError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _stat(path: Path, option: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise MissingFileError(f"{option} {path} does not exist") from None
    except OSError as err:
        raise MissingFileError(f"{option} {path} cannot be read: {err.strerror}") from None


def input_file(path: Path, option: str, limit: int) -> int:
    """A file pyvmm reads whole (kernel, initrd): its size, at most `limit` (what the VM can hold)."""
    info = _stat(path, option)
    if not stat.S_ISREG(info.st_mode):
        raise MissingFileError(f"{option} {path} is {_kind(info.st_mode)}, not a regular file")
    if not os.access(path, os.R_OK):
        raise MissingFileError(f"{option} {path} cannot be read: permission denied")
    if info.st_size > limit:
        raise UsageError(f"{option} {path} is {info.st_size >> 20} MiB: more than the VM's memory can hold "
                         f"(give the VM more memory)")
    return info.st_size


def disk_file(path: Path, option: str) -> os.stat_result:
    """A disk image: a regular file or a block device (opened later, with its lock)."""
    info = _stat(path, option)
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        raise MissingFileError(f"{option} {path} is {_kind(info.st_mode)}, neither a regular file nor a block device")
    return info


def output_file(path: Path, option: str) -> None:
    """A file pyvmm writes (console log, statistics, DTB dump): a regular file, or a new one in an existing
    directory. Nothing is created here."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        parent = path.parent
        if not parent.is_dir():
            raise MissingFileError(f"{option} {path}: the directory {parent} does not exist") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise MissingFileError(f"{option} {path}: cannot create a file in {parent}: permission denied") from None
        return
    except OSError as err:
        raise MissingFileError(f"{option} {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise MissingFileError(f"{option} {path} is {_kind(info.st_mode)}: give a regular file (or a new path)")
    if not os.access(path, os.W_OK):
        raise MissingFileError(f"{option} {path} cannot be written: permission denied")
