"""One way to call ioctl: libc's, through cffi, raising OSError like the rest of Python; and `bind_no_arg` for the
one ioctl on the exit path (KVM_RUN).

cffi passes pointers and structs by value without copies, which fcntl.ioctl cannot (it copies a buffer, and an int
argument first fails two buffer conversions). An ioctl without an argument is the exception: fcntl.ioctl then goes
straight to the system call (about 330 ns against 520 ns for cffi's libffi call, measured on KVM_GET_API_VERSION).
Both release the GIL, so vCPU threads run KVM_RUN in parallel.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any, Callable

import pyvmm_bindings

bindings = pyvmm_bindings.load()
ffi = bindings.ffi
libc = bindings.lib  # the libc functions declared in bindings/cdefs (ioctl, fallocate)
_libc_ioctl = libc.ioctl
_NULL = ffi.NULL


def ioctl(fd: int, request: int, arg: Any = None) -> int:
    """Call ioctl(2). `arg` is None (0), an int (passed by value) or cffi pointer (passed by reference)."""
    if arg is None:
        arg = _NULL
    elif isinstance(arg, int):
        arg = ffi.cast("void *", arg)
    result = _libc_ioctl(fd, request, arg)
    if result < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return result


# (call, fd, request): `call(fd, request)` is the ioctl. Raises OSError (EINTR after a kick).
NoArgIoctl = tuple[Callable[[int, int], int], int, int]


def bind_no_arg(fd: int, request: int) -> NoArgIoctl:
    """ioctl(fd, request) as fcntl.ioctl itself with its two arguments, for a caller that binds the three to locals: a C
    call with no Python frame, and no functools.partial in between (about 130 instructions less per KVM_RUN)."""
    return fcntl.ioctl, fd, request


def check_extension(fd: int, cap: int) -> int:
    """KVM_CHECK_EXTENSION on /dev/kvm or a VM fd: 0 when absent (or unknown to this kernel), else the cap's value."""
    try:
        return ioctl(fd, bindings.KVM_CHECK_EXTENSION, cap)
    except OSError as err:
        if err.errno == errno.EINVAL:
            return 0
        raise


def new(ctype: str, init: Any = None) -> Any:
    """A zeroed cffi object, e.g. new("struct kvm_regs *")."""
    return ffi.new(ctype, init)
