"""Slow clients (issue 11, item 7): partial headers and stalled bodies are cut off in time, over
raw sockets against a real server; normal and kept-alive requests are not affected."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving.server_process import TestServer

HEADER_S = 1.0
BODY_S = 2.0
KEEP_ALIVE_S = 1.5
"""Longer than HEADER_S on purpose: idle time between kept-alive requests must not count as header time."""
SLACK_S = 2.0
BODY = json.dumps({"instruction": "Sort the numbers.", "inputs": ["3, 1, 2"], "max_new_tokens": 4}).encode()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory, serve_checkpoint: Path, server_factory) -> Iterator[TestServer]:
    proc = server_factory(
        tmp_path_factory.mktemp("slow"),
        serve_checkpoint,
        "--header-timeout",
        str(HEADER_S),
        "--body-timeout",
        str(BODY_S),
        "--keep-alive-timeout",
        str(KEEP_ALIVE_S),
    )
    try:
        yield proc.wait_ready()
    finally:
        stopped = proc.stop(signal.SIGINT)
        proc.kill()
    assert stopped, "SIGINT left processes of the server's group behind"


def connect(server: TestServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def post_head(length: int) -> bytes:
    return (
        f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float | None]:
    """Everything the server sends, and the seconds until it closed the connection (None: still open at limit_s)."""
    start = time.monotonic()
    data = b""
    while (left := limit_s - (time.monotonic() - start)) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return data, time.monotonic() - start
        if not chunk:
            return data, time.monotonic() - start
        data += chunk
    return data, None


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a content-length (what the server sends for JSON), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def test_partial_headers_are_closed_after_the_header_timeout(slow_server: TestServer):
    with connect(slow_server) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
        data, closed_after = read_until_closed(sock, HEADER_S + SLACK_S)
    assert closed_after is not None, "a connection with partial headers stayed open"
    assert HEADER_S * 0.8 <= closed_after <= HEADER_S + SLACK_S and data == b""


def test_a_silent_connection_is_closed_after_the_header_timeout(slow_server: TestServer):
    with connect(slow_server) as sock:
        _, closed_after = read_until_closed(sock, HEADER_S + SLACK_S)
    assert closed_after is not None and closed_after >= HEADER_S * 0.8


def test_a_stalled_body_gets_408_and_is_closed(slow_server: TestServer):
    with connect(slow_server) as sock:
        sock.sendall(post_head(len(BODY)) + BODY[:10])
        data, closed_after = read_until_closed(sock, BODY_S + SLACK_S)
    assert closed_after is not None, "a connection with a stalled body stayed open"
    assert BODY_S * 0.8 <= closed_after <= BODY_S + SLACK_S
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == 408


def test_kept_alive_requests_and_a_slow_but_timely_body_are_served(slow_server: TestServer):
    with connect(slow_server) as sock:
        sock.sendall(post_head(len(BODY)) + BODY[:10])
        time.sleep(BODY_S / 2)  # slow, but within the body deadline
        sock.sendall(BODY[10:])
        status, body = read_response(sock)
        assert status == 200, body
        time.sleep(HEADER_S * 1.2)  # idle between requests: the keep-alive timer's business, not the header deadline's
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        # ...and a kept-alive connection that starts a request but never finishes its headers is closed too.
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        _, closed_after = read_until_closed(sock, HEADER_S + SLACK_S)
    assert closed_after is not None and closed_after >= HEADER_S * 0.8


def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(slow_server: TestServer):
    with connect(slow_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        _, closed_after = read_until_closed(sock, KEEP_ALIVE_S + SLACK_S)
    assert closed_after is not None and closed_after >= KEEP_ALIVE_S * 0.8


def test_150_stalled_sockets_neither_block_a_normal_request_nor_stay_open(slow_server: TestServer):
    stalled = [connect(slow_server) for _ in range(150)]
    try:
        for i, sock in enumerate(stalled):
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n" if i % 2 else post_head(len(BODY)) + BODY[:5])
        start = time.monotonic()
        with slow_server.client() as client:
            response = client.post("/v1/generate", content=BODY, headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert time.monotonic() - start < 10, "a normal request waited behind the stalled sockets"
        deadline = time.monotonic() + BODY_S + SLACK_S
        still_open = [s for s in stalled if read_until_closed(s, max(deadline - time.monotonic(), 0.01))[1] is None]
        assert not still_open, f"{len(still_open)} of 150 stalled sockets still open after the timeouts"
    finally:
        for sock in stalled:
            sock.close()
