"""The control socket under careless and hostile clients: early closes, many at once, many idle, long lines.
What must hold: no traceback, every well-behaved client served, threads and fds of the server bounded."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from pyvmm.api.client import Client
from pyvmm.api.server import MAX_PATH_BYTES, ControlServer
from pyvmm.errors import UsageError


class FakeController:
    def policy_dict(self) -> dict:
        return {"exits": {"wfi": "trap"}}


class FakeVmm:
    threads: list = []


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def serve(tmp_path):
    """Start servers on a fresh path; everything they opened is gone afterwards."""
    servers: list[ControlServer] = []
    fds, threads = open_fds(), threading.active_count()

    def start(**options) -> ControlServer:
        server = ControlServer(str(tmp_path / f"vm{len(servers)}.sock"), FakeController(), FakeVmm(), **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    deadline = time.monotonic() + 5
    while (open_fds(), threading.active_count()) != (fds, threads) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (open_fds(), threading.active_count()) == (fds, threads), "the server left fds or threads behind"


def raw_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def test_clients_that_close_before_reading_their_reply_cost_nothing(serve, capfd):
    server = serve()
    for _ in range(50):
        sock = raw_client(server.path)
        sock.sendall(b'{"cmd": "policy"}\n' * 20)
        sock.close()
    with Client(server.path) as client:
        assert client.request("policy") == {"exits": {"wfi": "trap"}}
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_fifty_concurrent_clients_are_all_served(serve):
    server = serve()
    failures: list[BaseException] = []
    start = threading.Barrier(50)

    def one() -> None:
        try:
            start.wait()
            with Client(server.path) as client:
                for _ in range(5):
                    assert client.request("policy")["exits"]["wfi"] == "trap"
        except BaseException as err:
            failures.append(err)

    workers = [threading.Thread(target=one) for _ in range(50)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not failures, failures[:3]


def test_a_thousand_idle_clients_keep_the_server_bounded(serve):
    server = serve(max_clients=8, idle_timeout=1.0)
    threads = threading.active_count()
    idle: list[socket.socket] = []
    refused = 0
    for _ in range(1000):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(server.path)
        except BlockingIOError:  # the backlog (as long as the limit) is full
            sock.close()
            refused += 1
            continue
        idle.append(sock)
    try:
        time.sleep(0.2)
        assert server.client_count <= 8
        assert threading.active_count() == threads  # one serving thread, whatever the clients do
        assert refused >= 1000 - 8 - 8 - 2  # limit + backlog (+1 the kernel allows) connect, the rest are refused
        # The idle ones are closed after the timeout, which makes room for a client that talks.
        with Client(server.path, timeout=10) as client:
            assert client.request("policy")
    finally:
        for sock in idle:
            sock.close()


def test_idle_connections_are_closed_after_the_timeout(serve):
    server = serve(idle_timeout=0.3)
    sock = raw_client(server.path)
    sock.settimeout(5)
    started = time.monotonic()
    assert sock.recv(1) == b""  # closed by the server
    assert 0.2 < time.monotonic() - started < 3
    sock.close()
    assert server.client_count == 0


def test_a_line_over_the_limit_is_refused_and_the_connection_closed(serve):
    server = serve()
    sock = raw_client(server.path)
    sock.settimeout(5)
    sock.sendall(b"x" * (64 * 1024 + 10))
    with sock, sock.makefile("rb") as replies:
        reply = json.loads(replies.readline())
        assert not reply["ok"] and "longer than" in reply["error"]
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:  # closed with the rest of the line unread: also closed
            pass


def test_a_client_that_never_reads_is_dropped(serve):
    server = serve()
    sock = raw_client(server.path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = b'{"cmd": "policy"}\n' * 1000
    try:
        for _ in range(200):  # ~40 bytes of reply per request: far past what the server keeps unsent
            sock.sendall(request)
    except (BrokenPipeError, ConnectionResetError):
        pass
    deadline = time.monotonic() + 5
    while server.client_count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.client_count == 0
    sock.close()


def test_a_path_longer_than_a_socket_address_is_one_line(tmp_path):
    path = str(tmp_path / ("x" * (MAX_PATH_BYTES + 1)))
    with pytest.raises(UsageError, match=f"over the {MAX_PATH_BYTES}"):
        ControlServer(path, FakeController(), FakeVmm())


def test_close_without_start_and_twice(tmp_path):
    fds = open_fds()
    server = ControlServer(str(tmp_path / "vm.sock"), FakeController(), FakeVmm())
    server.close()
    server.close()
    assert open_fds() == fds and not (tmp_path / "vm.sock").exists()


def test_the_client_retries_while_the_socket_is_not_yet_listening(tmp_path):
    path = str(tmp_path / "vm.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # bound, not listening yet: connect is refused (ECONNREFUSED) until listen()
    timer = threading.Timer(0.3, listener.listen)
    timer.start()
    try:
        client = Client(path, timeout=5)
        peer, _ = listener.accept()
        peer.sendall(b'{"ok": true, "result": 1}\n')
        assert client.request("policy") == 1
        client.close()
        peer.close()
    finally:
        timer.join()
        listener.close()
