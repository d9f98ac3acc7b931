"""Serving the control protocol on a Unix socket (mode 0600) from a thread while the VM runs."""

from __future__ import annotations

import errno
import os
import socket
import socketserver
import stat
import threading
from typing import TYPE_CHECKING

from pyvmm.api.protocol import MAX_LINE, RequestError, decode, dispatch, encode
from pyvmm.errors import UsageError

if TYPE_CHECKING:
    from pyvmm.idle.control import IdleController
    from pyvmm.vmm.vmm import Vmm


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: ControlServer = self.server  # type: ignore[assignment]
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                return
            if len(line) > MAX_LINE:
                self.wfile.write(encode({"ok": False, "error": f"request longer than {MAX_LINE} bytes"}))
                return
            if not line.strip():
                continue
            try:
                reply = dispatch(decode(line), server.controller, server.vmm)
            except RequestError as err:
                reply = {"ok": False, "error": str(err)}
            except Exception as err:  # a bug must not kill the VM or leave the client hanging
                reply = {"ok": False, "error": f"internal error: {type(err).__name__}: {err}"}
            self.wfile.write(encode(reply))
            self.wfile.flush()


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, controller: "IdleController", vmm: "Vmm") -> None:
        self.controller = controller
        self.vmm = vmm
        self.path = path
        _clear_stale(path)
        # Only the owner may talk to the VM: create the socket with 0600 from the start (umask), not chmod later.
        old = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        except OSError as err:
            raise UsageError(f"--api-socket {path}: cannot listen there: {err.strerror}") from None
        finally:
            os.umask(old)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="api-socket", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
            self._thread = None
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse a live socket or any other file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise UsageError(f"--api-socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise UsageError(f"--api-socket {path}: {err.strerror}") from None
    finally:
        probe.close()
    raise UsageError(f"--api-socket {path}: another VM is listening there")
