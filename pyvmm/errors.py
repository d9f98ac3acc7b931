"""The errors pyvmm reports to its user, each with its own process exit status.

User errors (bad input, a host that lacks something) are raised as PyvmmError subclasses; the CLI prints their
message on one line and exits with their status. Anything else is a bug and keeps its traceback.
Statuses follow sysexits(3) so they stay clear of the small numbers guests use for their own verdicts.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Every status pyvmm itself gives a process; a guest's own verdict (any 0-255) passes through unchanged."""

    OK = 0
    FAILED = 1  # --fail-on matched, or the guest ended before --expect matched
    USAGE = 64  # EX_USAGE: an option value that cannot work
    DATA_ERR = 65  # EX_DATAERR: an image that is not usable
    NO_INPUT = 66  # EX_NOINPUT: a file that does not exist or cannot be read
    UNAVAILABLE = 69  # EX_UNAVAILABLE: /dev/kvm missing or lacking a capability
    SOFTWARE = 70  # EX_SOFTWARE: the VM stopped on an error, or a command ended without reporting its status
    OS_ERR = 71  # EX_OSERR: the host cannot give the resources
    NO_PERM = 77  # EX_NOPERM: no permission for /dev/kvm
    REBOOT = 80  # the guest asked for a reset and --on-reboot=exit
    TIMEOUT = 124  # --timeout expired (as timeout(1))
    SIGINT = 130  # as a shell reports it
    SIGTERM = 143


class PyvmmError(Exception):
    """Base class: a problem the user can act on. `str(err)` is the whole message."""

    exit_status = ExitStatus.SOFTWARE


class UsageError(PyvmmError):
    """An option value that cannot work (zero vCPUs, an unparsable size, ...)."""

    exit_status = ExitStatus.USAGE


class ImageError(PyvmmError):
    """A kernel, initrd or payload that is not a usable image."""

    exit_status = ExitStatus.DATA_ERR


class MissingFileError(PyvmmError):
    """A file the user named does not exist or cannot be read."""

    exit_status = ExitStatus.NO_INPUT


class KvmUnavailableError(PyvmmError):
    """/dev/kvm is missing, or KVM lacks something the VM needs."""

    exit_status = ExitStatus.UNAVAILABLE


class HostResourceError(PyvmmError):
    """The host cannot give what was asked (memory, CPUs, file descriptors)."""

    exit_status = ExitStatus.OS_ERR


class KvmPermissionError(PyvmmError):
    """The user may not open /dev/kvm (or another device node)."""

    exit_status = ExitStatus.NO_PERM


class StoppedError(PyvmmError):
    """A VM run inside a longer task (a benchmark) was stopped by SIGINT/SIGTERM: the whole task ends with it."""

    def __init__(self, message: str, status: ExitStatus) -> None:
        super().__init__(message)
        self.exit_status = status


class GuestMemoryError(Exception):
    """A guest-controlled address or length fell outside guest RAM.

    Not a PyvmmError: the guest caused it, so devices catch it and report it to the guest; it never ends pyvmm.
    """

