"""The errors pyvmm reports to its user, each with its own process exit status.

User errors (bad input, a host that lacks something) are raised as PyvmmError subclasses; the CLI prints their
message on one line and exits with their status. Anything else is a bug and keeps its traceback.
Statuses follow sysexits(3) so they stay clear of the small numbers guests use for their own verdicts.
"""

from __future__ import annotations


class PyvmmError(Exception):
    """Base class: a problem the user can act on. `str(err)` is the whole message."""

    exit_status = 70  # EX_SOFTWARE


class UsageError(PyvmmError):
    """An option value that cannot work (zero vCPUs, an unparsable size, ...)."""

    exit_status = 64  # EX_USAGE


class ImageError(PyvmmError):
    """A kernel, initrd or payload that is not a usable image."""

    exit_status = 65  # EX_DATAERR


class MissingFileError(PyvmmError):
    """A file the user named does not exist or cannot be read."""

    exit_status = 66  # EX_NOINPUT


class KvmUnavailableError(PyvmmError):
    """/dev/kvm is missing, or KVM lacks something the VM needs."""

    exit_status = 69  # EX_UNAVAILABLE


class HostResourceError(PyvmmError):
    """The host cannot give what was asked (memory, CPUs, file descriptors)."""

    exit_status = 71  # EX_OSERR


class KvmPermissionError(PyvmmError):
    """The user may not open /dev/kvm (or another device node)."""

    exit_status = 77  # EX_NOPERM


class GuestFailure(PyvmmError):
    """The VM stopped because of something that went wrong in or with the guest (an exit KVM could not handle)."""

    exit_status = 70


class GuestMemoryError(Exception):
    """A guest-controlled address or length fell outside guest RAM.

    Not a PyvmmError: the guest caused it, so devices catch it and report it to the guest; it never ends pyvmm.
    """


# Exit statuses for outcomes that are not errors of pyvmm.
EXIT_GUEST_REBOOT = 80  # the guest asked for a reset and --on-reboot=exit
EXIT_TIMEOUT = 124  # --timeout expired (as timeout(1))
EXIT_INTERRUPTED = 130  # SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM
