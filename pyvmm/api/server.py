"""Serving the control protocol on a Unix socket (mode 0600) while the VM runs.

One selector thread serves every client, so what clients can cost pyvmm is bounded whatever they do: at most
`max_clients` connections at once (the listen backlog holds as many more; past that, connecting fails with EAGAIN
and `Client` retries briefly), a request line of at most MAX_LINE bytes, at most MAX_UNSENT bytes of replies a
client has not read, and `idle_timeout` seconds without a byte from a client before its connection is closed.
A client that goes away before reading its reply is dropped without a word. Requests run one at a time on that
thread: each is short (a policy change, a pause, a stats sample).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import stat
import threading
import time
from typing import TYPE_CHECKING

from pyvmm.errors import UsageError

if TYPE_CHECKING:
    from pyvmm.idle.control import IdleController
    from pyvmm.vmm.vmm import Vmm

MAX_CLIENTS = 32
IDLE_TIMEOUT = 60.0
MAX_UNSENT = 1 << 20
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_PATH_BYTES = 107


class _Connection:
    def __init__(self, sock: socket.socket, last_heard: float) -> None:
        self.sock = sock
        self.last_heard = last_heard
        self.received = bytearray()
        self.unsent = bytearray()
        self.closing = False  # close once the unsent replies are out


def _log():
    import logging  # only on the rare paths that log: logging costs start-up time

    return logging.getLogger(__name__)


def check_path(path: str) -> None:
    """Refuse a path a Unix socket cannot have, with one line."""
    size = len(os.fsencode(path))
    if size > MAX_PATH_BYTES:
        raise UsageError(f"--api-socket {path}: the path is {size} bytes, over the {MAX_PATH_BYTES} a Unix socket "
                         f"address holds (use a shorter path)")


class ControlServer:
    """Listens at `path` from construction (so a refused path fails before the VM runs); `start` serves."""

    def __init__(self, path: str, controller: "IdleController", vmm: "Vmm", *, max_clients: int = MAX_CLIENTS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.controller = controller
        self.vmm = vmm
        self.path = path
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        check_path(path)
        _clear_stale(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Only the owner may talk to the VM: create the socket with 0600 from the start (umask), not chmod later.
        old = os.umask(0o177)
        try:
            listener.bind(path)
            listener.listen(max_clients)
        except OSError as err:
            listener.close()
            raise UsageError(f"--api-socket {path}: cannot listen there: {err.strerror or err}") from None
        finally:
            os.umask(old)
        listener.setblocking(False)
        self._listener = listener
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake, selectors.EVENT_READ, None)
        self._selector.register(listener, selectors.EVENT_READ, listener)
        self._accepting = True
        self._clients: set[_Connection] = set()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False

    # -- lifecycle (any thread) ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="api-socket", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket file. Bounded: a request still running finishes on its own and
        its thread then releases everything."""
        if self._closed:
            return
        self._closed = True
        try:
            st = os.lstat(self.path)
            if stat.S_ISSOCK(st.st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        thread, self._thread = self._thread, None
        if thread is None:
            self._closing = True
            self._release()
            return
        # Wake the thread before it may see _closing: once it has, it closes the eventfd.
        os.eventfd_write(self._wake, 1)
        self._closing = True
        if thread is not threading.current_thread():
            thread.join(5)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # -- the serving thread -------------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select(self._next_deadline()):
                    if key.data is None:
                        continue  # the wake-up: the loop condition decides
                    if key.data is self._listener:
                        self._accept()
                    elif events & selectors.EVENT_READ:
                        self._receive(key.data)
                    elif events & selectors.EVENT_WRITE:
                        self._send(key.data)
                self._expire_idle()
        except Exception:  # a bug here must not take the VM down; the socket just stops answering
            _log().exception("control socket %s: stopped serving", self.path)
        finally:
            self._release()

    def _release(self) -> None:
        for conn in list(self._clients):
            self._drop(conn)
        self._selector.close()
        self._listener.close()
        os.close(self._wake)

    def _next_deadline(self) -> float | None:
        if not self._clients:
            return None
        oldest = min(conn.last_heard for conn in self._clients)
        return max(0.0, oldest + self.idle_timeout - time.monotonic())

    def _expire_idle(self) -> None:
        limit = time.monotonic() - self.idle_timeout
        for conn in [c for c in self._clients if c.last_heard <= limit]:
            self._drop(conn)

    def _set_accepting(self) -> None:
        """Accept while there is room; when full, new clients wait in the listen backlog."""
        wanted = len(self._clients) < self.max_clients
        if wanted != self._accepting:
            if wanted:
                self._selector.register(self._listener, selectors.EVENT_READ, self._listener)
            else:
                self._selector.unregister(self._listener)
            self._accepting = wanted

    def _accept(self) -> None:
        while len(self._clients) < self.max_clients:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:  # e.g. EMFILE: leave the client in the backlog, try again on the next event
                _log().debug("control socket %s: accept: %s", self.path, err)
                break
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic())
            self._clients.add(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)
        self._set_accepting()

    def _drop(self, conn: _Connection) -> None:
        if conn in self._clients:
            self._clients.discard(conn)
            self._selector.unregister(conn.sock)
        conn.sock.close()
        if not self._closing:
            self._set_accepting()

    def _receive(self, conn: _Connection) -> None:
        # The protocol (and json) is imported here, with the first client, on this thread: a VM nobody talks to
        # never loads it, and the vCPUs are already running when one does.
        from pyvmm.api.protocol import MAX_LINE, encode

        try:
            chunk = conn.sock.recv(MAX_LINE + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:
            self._drop(conn)
            return
        conn.last_heard = time.monotonic()
        conn.received += chunk
        while not conn.closing:
            end = conn.received.find(b"\n")
            if end < 0:
                if len(conn.received) > MAX_LINE:
                    conn.unsent += encode({"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    conn.closing = True
                break
            line = bytes(conn.received[:end + 1])
            del conn.received[:end + 1]
            if len(line) > MAX_LINE + 1:
                conn.unsent += encode({"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                conn.closing = True
            elif line.strip():
                conn.unsent += encode(self._answer(line))
        self._send(conn)

    def _answer(self, line: bytes) -> dict:
        from pyvmm.api.protocol import RequestError, decode, dispatch

        try:
            return dispatch(decode(line), self.controller, self.vmm)
        except RequestError as err:
            return {"ok": False, "error": str(err)}
        except Exception as err:  # a bug must not kill the VM or leave the client hanging
            return {"ok": False, "error": f"internal error: {type(err).__name__}: {err}"}

    def _send(self, conn: _Connection) -> None:
        if conn.unsent:
            try:
                sent = conn.sock.send(conn.unsent)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # EPIPE, ECONNRESET: the client left without reading its reply
                self._drop(conn)
                return
            del conn.unsent[:sent]
        if len(conn.unsent) > MAX_UNSENT:
            self._drop(conn)  # it asks and never reads
        elif conn.unsent:
            self._selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        elif conn.closing:
            self._drop(conn)
        else:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)


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
        raise UsageError(f"--api-socket {path}: {err.strerror or err}") from None
    finally:
        probe.close()
    raise UsageError(f"--api-socket {path}: another VM is listening there")
