"""Talking to a VM's control socket (used by `pyvmm ctl` and the tests)."""

from __future__ import annotations

import errno
import json
import socket
import time
from typing import Any

from pyvmm.errors import ExitStatus, PyvmmError

# A busy server's listen backlog fills (EAGAIN) and a server that is just starting or stopping refuses
# (ECONNREFUSED): both pass within moments, so connecting retries for this long before giving up.
CONNECT_RETRY_SECONDS = 2.0
_TRANSIENT = (errno.EAGAIN, errno.ECONNREFUSED)


class ApiError(PyvmmError):
    """The control socket cannot be reached or answered nonsense."""

    exit_status = ExitStatus.UNAVAILABLE


class RefusedError(PyvmmError):
    """The VM refused the request (reply ok=false); the VM is unchanged. The status is the reply's: 64 for a request
    that cannot work, 69 for a change KVM or the kernel refuses."""

    def __init__(self, message: str, status: int = ExitStatus.UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_status = status


class Client:
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.sock = _connect(path, timeout)
        self.file = self.sock.makefile("rwb")

    def call(self, cmd: str, **args: Any) -> dict:
        """The raw reply {"ok": ..., ...}."""
        try:
            self.file.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
            self.file.flush()
            line = self.file.readline()
        except OSError as err:
            raise ApiError(f"control socket {self.path}: {err.strerror or err}") from None
        if not line:
            raise ApiError(f"control socket {self.path} closed the connection (the VM has ended?)")
        try:
            return json.loads(line)
        except ValueError:
            raise ApiError(f"control socket {self.path} answered something that is not JSON") from None

    def request(self, cmd: str, **args: Any) -> Any:
        """The result, or RefusedError with the VM's one-line reason."""
        reply = self.call(cmd, **args)
        if not reply.get("ok"):
            status = reply.get("status")
            raise RefusedError(f"{cmd} refused: {reply.get('error', 'no reason given')}",
                               status if isinstance(status, int) and 0 < status < 256 else ExitStatus.UNAVAILABLE)
        return reply.get("result")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(path: str, timeout: float) -> socket.socket:
    deadline = time.monotonic() + min(timeout, CONNECT_RETRY_SECONDS)
    pause = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except OSError as err:
            sock.close()
            if err.errno not in _TRANSIENT or time.monotonic() + pause > deadline:
                raise ApiError(f"cannot connect to the control socket {path}: {err.strerror or err}") from None
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
