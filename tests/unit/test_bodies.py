"""registry/bodies.BodyPool against a small local HTTP server (keep-alive, stale connections)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ollamafs.registry.bodies import BodyPool

BODY = bytes(range(256)) * 64


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    drop_after_answer = False  # close the socket after answering, without saying so
    connections: list[int] = []

    def setup(self) -> None:
        super().setup()
        type(self).connections.append(id(self.connection))

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
        if type(self).drop_after_answer:
            self.close_connection = True


@pytest.fixture
def server():
    _Handler.connections = []
    _Handler.drop_after_answer = False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/blob"
    srv.shutdown()
    srv.server_close()


def read_all(pool: BodyPool, url: str) -> bytes:
    buf = memoryview(bytearray(4096))
    out = bytearray()
    with pool.get(url, {}, timeout=5) as resp:
        assert resp.status == 200
        while n := resp.readinto(buf):
            out += buf[:n]
    return bytes(out)


def test_connections_are_kept_alive_and_reused(server):
    pool = BodyPool(user_agent="t", trust_env=False)
    try:
        for _ in range(3):
            assert read_all(pool, server) == BODY
        assert len(_Handler.connections) == 1
    finally:
        pool.close()


def test_a_connection_the_server_closed_while_idle_gets_a_fresh_try(server):
    _Handler.drop_after_answer = True
    pool = BodyPool(user_agent="t", trust_env=False)
    try:
        for _ in range(3):
            assert read_all(pool, server) == BODY  # the pooled one is dead each time
        assert len(_Handler.connections) == 3
    finally:
        pool.close()


def test_a_body_not_read_to_its_end_does_not_go_back_to_the_pool(server):
    pool = BodyPool(user_agent="t", trust_env=False)
    try:
        with pool.get(server, {}, timeout=5) as resp:
            resp.readinto(memoryview(bytearray(100)))
        assert read_all(pool, server) == BODY
        assert len(_Handler.connections) == 2
    finally:
        pool.close()
