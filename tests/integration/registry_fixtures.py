"""A real registry server and a fault-injecting proxy on 127.0.0.1, for integration tests.

* :func:`run_registry` starts ``/usr/bin/docker-registry serve CONFIG`` (Debian's package of
  distribution 2.8) on a free port with its own YAML config (filesystem storage in a temporary
  directory, deletes enabled), waits until ``/v2/`` answers and stops it afterwards (terminate,
  then kill).
* :func:`seed_model` uploads blobs (POST + monolithic PUT) and PUTs an Ollama-style manifest,
  with plain synchronous httpx.
* :class:`FaultProxy` is a small threaded HTTP/1.1 proxy (stdlib only) in front of the registry
  that, per test, corrupts, truncates or resets blob bodies, answers 5xx a few times, stalls,
  307-redirects blob GETs to a second listening address (a CDN stand-in) or demands a Bearer
  token from its own tiny token endpoint.  Every fault is bounded in count and time, and
  everything listens on 127.0.0.1 only.

The pytest fixtures at the end (``registry_server``, ``fault_proxy``) can be imported by a
conftest or a test module.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
LOOPBACK = "127.0.0.1"

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"


# -- the registry server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RegistryServer:
    url: str  # http://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT, as it appears in a model name
    port: int
    root: Path  # storage directory
    log_path: Path


_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: ollamafs-test-secret
health:
  storagedriver:
    enabled: false
"""


def registry_available() -> bool:
    return os.access(REGISTRY_BINARY, os.X_OK)


@contextlib.contextmanager
def run_registry(workdir: Path | None = None, *, startup_timeout: float = 15.0) -> Iterator[RegistryServer]:
    """Run docker-registry on a free 127.0.0.1 port until the block ends."""
    if not registry_available():
        raise RuntimeError(f"{REGISTRY_BINARY} is not installed")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ollamafs-registry-")))
        root = workdir / "storage"
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = workdir / "config.yml"
        config.write_text(_CONFIG.format(root=root, addr=f"{LOOPBACK}:{port}"))
        log_path = workdir / "registry.log"
        log_file = stack.enter_context(open(log_path, "wb"))
        proc = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            server = RegistryServer(f"http://{LOOPBACK}:{port}", f"{LOOPBACK}:{port}", port, root, log_path)
            _wait_ready(proc, server, startup_timeout)
            yield server
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], server: RegistryServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as http:
        while True:
            if proc.poll() is not None:
                log_tail = server.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"docker-registry exited with {proc.returncode}: {log_tail}")
            try:
                if http.get(server.url + "/v2/").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not answer on {server.url} within {timeout} s")
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- seeding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeededModel:
    repo: str  # namespace/model
    tag: str
    manifest: bytes
    blobs: dict[str, bytes]  # "sha256:<hex>" -> content
    model_digest: str  # the first layer's digest

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_blob(http: httpx.Client, base_url: str, repo: str, data: bytes) -> str:
    """POST an upload session, then PUT the whole blob with ``?digest=`` (monolithic upload)."""
    digest = sha256_digest(data)
    r = http.post(f"{base_url}/v2/{repo}/blobs/uploads/")
    if r.status_code != 202:
        raise RuntimeError(f"upload start for {repo}: HTTP {r.status_code} {r.text}")
    location = str(httpx.URL(base_url).join(r.headers["location"]))
    sep = "&" if "?" in location else "?"
    r = http.put(
        f"{location}{sep}digest={digest}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    if r.status_code != 201:
        raise RuntimeError(f"upload of {digest} to {repo}: HTTP {r.status_code} {r.text}")
    return digest


def seed_model(
    base_url: str,
    repo: str = "library/tiny",
    tag: str = "latest",
    *,
    model: bytes | None = None,
    extra_layers: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
) -> SeededModel:
    """Upload a model blob, optional extra layers and a config, then PUT an Ollama manifest."""
    if model is None:
        model = os.urandom(64 * 1024)
    config = json.dumps(
        {"model_format": "gguf", "model_family": "test", "architecture": "amd64", "os": "linux",
         "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    blobs: dict[str, bytes] = {}
    layers = []
    with httpx.Client(trust_env=False, timeout=30.0) as http:
        for media_type, data in [(MODEL_MEDIA_TYPE, model), *extra_layers]:
            digest = upload_blob(http, base_url, repo, data)
            blobs[digest] = data
            layers.append({"mediaType": media_type, "digest": digest, "size": len(data)})
        config_digest = upload_blob(http, base_url, repo, config)
        blobs[config_digest] = config
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_V2,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)},
                "layers": layers,
            }
        ).encode()
        r = http.put(f"{base_url}/v2/{repo}/manifests/{tag}", content=manifest, headers={"Content-Type": MANIFEST_V2})
        if r.status_code != 201:
            raise RuntimeError(f"manifest PUT for {repo}:{tag}: HTTP {r.status_code} {r.text}")
    return SeededModel(repo, tag, manifest, blobs, layers[0]["digest"])


# -- the fault-injecting proxy -----------------------------------------------------------------

FAULT_KINDS = ("corrupt", "truncate", "reset", "status", "stall", "stall_headers", "redirect")
MAX_STALL = 10.0  # seconds; no fault holds a connection longer


@dataclass
class Fault:
    """One fault rule.

    ``kind``:
      * ``corrupt``: flip the byte at body offset ``after`` (XOR 0xFF);
      * ``truncate``: send ``after`` body bytes, then close the connection cleanly;
      * ``reset``: send ``after`` body bytes, then reset the connection (RST);
      * ``status``: answer ``status`` (default 503) without asking the registry;
      * ``stall``: send ``after`` body bytes, then pause ``seconds``, then go on;
      * ``stall_headers``: pause ``seconds`` before answering at all;
      * ``redirect``: answer 307 to the same path on the proxy's second address.

    A rule applies to requests whose method is ``method`` and whose path matches ``path`` (a
    regex, searched).  The first ``skip`` matching requests pass untouched; then it fires
    ``times`` times (``None``: until removed).  Body faults only fire on responses with more
    than ``after`` bytes (so the one-byte probe that resolves redirects is not counted).
    """

    kind: str
    path: str = r"/blobs/sha256:"
    method: str = "GET"
    times: int | None = 1
    skip: int = 0
    after: int = 0
    status: int = 503
    seconds: float = 2.0
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        self.seconds = min(self.seconds, MAX_STALL)

    @property
    def body_fault(self) -> bool:
        return self.kind in ("corrupt", "truncate", "reset", "stall")


@dataclass
class RequestRecord:
    listener: str  # "main" or "alt"
    method: str
    path: str
    range: str | None
    authorization: str | None
    status: int = 0
    fault: str | None = None
    conn: int = 0  # serial number of the client connection it came on (keep-alive reuse)


@dataclass
class _BearerConfig:
    token: str
    service: str
    token_key: str  # "token" or "access_token"


class FaultProxy:
    """A threaded proxy on 127.0.0.1 in front of ``upstream`` (``host:port``), with faults.

    ``url``/``host`` is the main address; ``alt_url`` a second address that serves the same
    content without faults or auth (where ``redirect`` faults point).  ``/token`` on the main
    address is the token endpoint when :meth:`require_bearer` is on.  ``requests`` records every
    request; ``token_requests`` the query and Authorization of every token request.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self.token_requests: list[tuple[dict[str, list[str]], str | None, str]] = []
        self.bearer: _BearerConfig | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._serial = 0
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.url = self.alt_url = self.host = self.alt_host = ""

    # -- configuration --

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.bearer = None

    def require_bearer(
        self, token: str = "s3cret-token", *, service: str = "fault-proxy", token_key: str = "token"
    ) -> None:
        with self._lock:
            self.bearer = _BearerConfig(token, service, token_key)

    def blob_requests(self, listener: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [
                r for r in self.requests
                if "/blobs/" in r.path and r.method == "GET" and (listener is None or r.listener == listener)
            ]

    # -- lifecycle --

    def start(self) -> FaultProxy:
        for listener in ("main", "alt"):
            server = _ProxyServer((LOOPBACK, 0), _ProxyHandler, self, listener)
            port = server.server_address[1]
            if listener == "main":
                self.host, self.url = f"{LOOPBACK}:{port}", f"http://{LOOPBACK}:{port}"
            else:
                self.alt_host, self.alt_url = f"{LOOPBACK}:{port}", f"http://{LOOPBACK}:{port}"
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._servers.append(server)
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for server in self._servers:
            server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for server in self._servers:
            server.server_close()  # joins the handler threads
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler --

    def _match(self, listener: str, method: str, path: str) -> Fault | None:
        if listener != "main":
            return None
        with self._lock:
            for fault in self.faults:
                if fault.method != method or not re.search(fault.path, path):
                    continue
                if fault.times is not None and fault.fired >= fault.times:
                    continue
                return fault
        return None

    def _claim(self, fault: Fault) -> bool:
        """Count a matching request; True if the fault fires on it."""
        with self._lock:
            fault.seen += 1
            if fault.seen <= fault.skip:
                return False
            if fault.times is not None and fault.fired >= fault.times:
                return False
            fault.fired += 1
            return True

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(min(seconds, MAX_STALL))


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, proxy: FaultProxy, listener: str) -> None:
        self.proxy = proxy
        self.listener = listener
        super().__init__(addr, handler)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
               "proxy-authenticate"}
_REPO_RE = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags)/")


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle keep-alive connection closes after this
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._conns.add(self.connection)
            self.server.proxy._serial += 1
            self.serial = self.server.proxy._serial

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        with self.server.proxy._lock:
            self.server.proxy._conns.discard(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            self.close_connection = True

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # --

    def _handle(self) -> None:
        proxy = self.server.proxy
        listener = self.server.listener
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path
        rec = RequestRecord(listener, self.command, path, self.headers.get("Range"), self.headers.get("Authorization"),
                            conn=self.serial)
        with proxy._lock:
            proxy.requests.append(rec)

        if listener == "main" and urlsplit(path).path == "/token":
            self._token(rec)
            return
        bearer = proxy.bearer
        if listener == "main" and bearer is not None and path.startswith("/v2/"):
            if self.headers.get("Authorization") != f"Bearer {bearer.token}":
                m = _REPO_RE.match(urlsplit(path).path)
                scope = f',scope="repository:{m.group(1)}:pull"' if m else ""
                challenge = f'Bearer realm="{proxy.url}/token",service="{bearer.service}"{scope}'
                self._reply(rec, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                            {"WWW-Authenticate": challenge, "Content-Type": "application/json"})
                return

        fault = proxy._match(listener, self.command, urlsplit(path).path)
        if fault is not None and not fault.body_fault and proxy._claim(fault):
            rec.fault = fault.kind
            if fault.kind == "status":
                msg = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": f"injected {fault.status}"}]})
                self._reply(rec, fault.status, msg.encode(), {"Content-Type": "application/json"})
                return
            if fault.kind == "redirect":
                self._reply(rec, 307, b"", {"Location": proxy.alt_url + path})
                return
            if fault.kind == "stall_headers":
                proxy._sleep(fault.seconds)
                fault = None

        conn = http.client.HTTPConnection(*_split_host(proxy.upstream), timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if proxy.bearer is not None:
                headers.pop("Authorization", None)
            conn.request(self.command, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            self._relay(rec, resp, fault)
        finally:
            conn.close()

    def _relay(self, rec: RequestRecord, resp: http.client.HTTPResponse, fault: Fault | None) -> None:
        proxy = self.server.proxy
        out_headers = [
            (k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        ]
        cl = resp.getheader("Content-Length")
        if self.command == "HEAD" or resp.status in (204, 304):
            rec.status = resp.status
            self.send_response(resp.status)
            for k, v in out_headers:
                self.send_header(k, v)
            if cl is not None:
                self.send_header("Content-Length", cl)
            self.end_headers()
            return
        if cl is None:  # small non-blob answers: buffer them
            data = resp.read()
            self._reply(rec, resp.status, data, dict(out_headers))
            return
        total = int(cl)
        fire = fault is not None and fault.body_fault and total > fault.after and proxy._claim(fault)
        if fire:
            rec.fault = fault.kind
        rec.status = resp.status
        self.send_response(resp.status)
        for k, v in out_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(total))
        self.end_headers()
        sent = 0
        while sent < total:
            chunk = resp.read(min(64 * 1024, total - sent))
            if not chunk:
                break
            if fire and sent <= fault.after < sent + len(chunk):
                cut = fault.after - sent
                if fault.kind == "corrupt":
                    chunk = chunk[:cut] + bytes([chunk[cut] ^ 0xFF]) + chunk[cut + 1 :]
                elif fault.kind in ("truncate", "reset"):
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    if fault.kind == "reset":
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                    else:
                        self.connection.shutdown(socket.SHUT_WR)
                    return
                elif fault.kind == "stall":
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    proxy._sleep(fault.seconds)
                    chunk = chunk[cut:]
            self.wfile.write(chunk)
            sent += len(chunk)
        self.wfile.flush()
        if sent < total:
            self.close_connection = True

    def _token(self, rec: RequestRecord) -> None:
        proxy = self.server.proxy
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        with proxy._lock:
            proxy.token_requests.append((query, self.headers.get("Authorization"), self.path))
        bearer = proxy.bearer
        if bearer is None:
            self._reply(rec, 404, b"no token endpoint", {})
            return
        body = json.dumps({bearer.token_key: bearer.token, "expires_in": 300}).encode()
        self._reply(rec, 200, body, {"Content-Type": "application/json"})

    def _reply(self, rec: RequestRecord, status: int, body: bytes, headers: dict[str, str]) -> None:
        rec.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()


def _split_host(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


# -- pytest fixtures (importable by a conftest or a test module) ------------------------------


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One docker-registry for the whole session (each test uses its own repositories)."""
    if not registry_available():
        pytest.skip(f"{REGISTRY_BINARY} is not installed")
    with run_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture
def fault_proxy(registry_server: RegistryServer) -> Iterator[FaultProxy]:
    """A fresh fault proxy in front of ``registry_server``, stopped after the test."""
    with FaultProxy(registry_server.host) as proxy:
        yield proxy



@pytest.fixture(autouse=False)
def log_allow(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Fail a test that logs WARNING or worse from ollamafs unless it allowed that message
    (a test module makes it autouse by importing it under an autouse wrapper)."""
    import logging
    import re

    allowed: list[str] = []
    caplog.set_level(logging.DEBUG, logger="ollamafs")
    yield allowed
    bad = [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.levelno >= logging.WARNING
        and r.name.startswith("ollamafs")
        and not any(re.search(a, r.getMessage()) for a in allowed)
    ]
    assert not bad, f"unexpected warnings: {bad}"
