"""Named VMs: every `pyvmm run` serves its control socket as NAME.sock in one per-user directory, so that
`pyvmm list` finds the running VMs and `pyvmm ctl NAME` reaches one (kvmtool's `lkvm run --name`, `lkvm list`).

The directory is $XDG_RUNTIME_DIR/pyvmm (root: /run/pyvmm; without XDG_RUNTIME_DIR: /tmp/pyvmm-UID; $PYVMM_RUNTIME_DIR
overrides all three), mode 0700; each socket is 0600 (pyvmm.api.server). A socket nobody listens on is stale (its VM
was killed): it is removed when found.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from pathlib import Path
from typing import NamedTuple

from pyvmm.errors import MissingFileError, UsageError

SUFFIX = ".sock"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


RUNTIME_DIR_ENV = "PYVMM_RUNTIME_DIR"  # another directory (tests, or VMs kept apart from the user's others)


def runtime_dir() -> Path:
    if os.environ.get(RUNTIME_DIR_ENV):
        return Path(os.environ[RUNTIME_DIR_ENV])
    if os.geteuid() == 0:
        return Path("/run/pyvmm")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "pyvmm" if xdg else Path(f"/tmp/pyvmm-{os.geteuid()}")


def generated_name() -> str:
    """kvmtool's default: guest-PID, unique among running VMs and short enough to type."""
    return f"guest-{os.getpid()}"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use 1-64 letters, digits and . _ + - (starting with a letter or digit)")
    return name


def socket_path(name: str) -> Path:
    """Where the VM called `name` serves its control socket; creates the directory (0700) when needed."""
    directory = runtime_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise MissingFileError(f"cannot create the control socket directory {directory}: {err.strerror}") from None
    return directory / f"{check_name(name)}{SUFFIX}"


def is_live(path: Path) -> bool:
    """Someone listens on the socket at `path`. A socket file nobody listens on is removed (stale)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)
        return err.errno == errno.EAGAIN  # a busy listener is alive
    finally:
        probe.close()


def claim(name: str) -> Path:
    """The socket path for a new VM called `name`, refusing a name a running VM has."""
    path = socket_path(name)
    if is_live(path):
        raise UsageError(f"--name {name}: a VM of that name is running (pyvmm list); choose another name")
    return path


def running() -> list[Path]:
    """The control sockets of the running named VMs, by name; stale ones are removed on the way."""
    directory = runtime_dir()
    if not directory.is_dir():
        return []
    return [path for path in sorted(directory.glob(f"*{SUFFIX}")) if is_live(path)]


def name_of(path: Path) -> str:
    return path.name.removesuffix(SUFFIX)


def resolve(target: str) -> Path:
    """`pyvmm ctl TARGET`: a socket path (anything with a /, or an existing file), else a running VM's name."""
    if "/" in target or os.path.exists(target):
        return Path(target)
    path = runtime_dir() / f"{target}{SUFFIX}"
    if not _NAME_RE.match(target) or not path.exists():
        raise MissingFileError(f"no VM named {target!r} is running (pyvmm list shows the running ones; a socket "
                               f"path needs a /, e.g. ./{target})")
    return path


class ProcessClock(NamedTuple):
    """How long a process has run, from /proc (the VM's uptime as `pyvmm list` shows it)."""

    pid: int

    def uptime_s(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open("/proc/uptime", encoding="ascii") as f:
                now = float(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            return None
        return max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: starttime, in clock ticks
