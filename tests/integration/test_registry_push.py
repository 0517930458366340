"""Pushing models (ollamafs.registry.pusher) to a real docker-registry, through the fault proxy.

Every push is checked by pulling the model back into an empty second store with the puller and
comparing every digest and byte.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest
import trio

from ollamafs.errors import IntegrityError, MissingBlob, NotFound
from ollamafs.names import Digest, ModelName
from ollamafs.registry import (
    AuthError,
    BlobPuller,
    InsecureRefused,
    RegistryClient,
    RegistryError,
    RegistryUnreachable,
)
from ollamafs.registry.pusher import BlobPusher, PushProgress, mount_source, push_model
from ollamafs.store.ingest import build_manifest, create_model, ingest_bytes, write_manifest
from ollamafs.store.manifest import OLLAMA_PREFIX, Layer, parse_manifest
from ollamafs.store.store import Store

from tests.integration.registry_fixtures import (  # noqa: F401 - fixtures
    Fault,
    FaultProxy,
    RegistryServer,
    fault_proxy,
    log_allow,
    free_port,
    registry_server,
)

pytestmark = pytest.mark.registry

KiB = 1024
CHUNK = 64 * KiB
MODEL_SIZE = 5 * CHUNK + 1234  # six PATCHes at CHUNK


@pytest.fixture(autouse=True)
def _check_logs(log_allow: list[str]) -> list[str]:
    """Every test here fails on an unexpected WARNING or worse (registry_fixtures.log_allow)."""
    return log_allow


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real network, with every request's method, URL and headers (and answer) written down."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, str, dict[str, str], int, dict[str, str]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        seen = (request.method, str(request.url), dict(request.headers), resp.status_code, dict(resp.headers))
        self.seen.append(seen)
        return resp

    async def aclose(self) -> None:
        await self.inner.aclose()


def client(**kw: object) -> RegistryClient:
    return RegistryClient(insecure=True, key_path=None, trust_env=False, **kw)  # type: ignore[arg-type]


def make_model(store: Store, name: ModelName, *, size: int = MODEL_SIZE, seed: str = "") -> bytes:
    """A model as Ollama lays it out: weights, template, system, params, license, config."""
    weights = store.root.parent / f"weights-{seed or name.model}.bin"
    weights.write_bytes(os.urandom(size))
    create_model(
        store,
        name,
        model_file=weights,
        texts={"template": "{{ .Prompt }}" + seed, "system": "You are terse." + seed, "license": "MIT" + seed},
        params={"temperature": 0.5, "stop": ["<|end|>"]},
    )
    return store.read_manifest_bytes(store.get(name))


def pushed(store: Store, name: ModelName, *, client_kw: dict | None = None) -> tuple[Digest, list[PushProgress]]:
    events: list[PushProgress] = []

    async def main() -> Digest:
        async with client(**(client_kw or {})) as c:
            return await push_model(c, store, name, chunk_size=CHUNK, progress=events.append)

    return trio.run(main), events


async def pull_back(c: RegistryClient, name: ModelName, dest: Store) -> bytes:
    body, _ = await c.get_manifest(name)
    dest.blobs_dir.mkdir(parents=True, exist_ok=True)
    puller = BlobPuller(c, dest.blobs_dir)
    for layer in parse_manifest(body).all_blobs():
        await puller.pull(name, layer.digest, size=layer.size)
    write_manifest(dest, name, body)
    return body


def assert_same_model(src: Store, dest: Store, name: ModelName) -> None:
    """Manifest bytes, every digest and every blob byte equal; the copy hashes right."""
    a, b = src.get(name), dest.get(name)
    assert src.read_manifest_bytes(a) == dest.read_manifest_bytes(b)
    assert a.manifest == b.manifest
    for layer in a.manifest.all_blobs():
        data = dest.blob_path(layer.digest).read_bytes()
        assert data == src.blob_path(layer.digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == layer.digest.hex and len(data) == layer.size


def verify_by_pull(name: ModelName, src: Store, tmp: Path) -> None:
    dest = Store(tmp / "pulled")

    async def main() -> None:
        async with client() as c:
            await pull_back(c, name, dest)

    trio.run(main)
    assert_same_model(src, dest, name)


def requests(proxy: FaultProxy, method: str, path: str = "") -> list:
    with proxy._lock:
        return [r for r in proxy.requests if r.method == method and path in r.path]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


# -- the round trip ---------------------------------------------------------------------------


def test_push_then_pull_back_through_proxy(fault_proxy: FaultProxy, store: Store, tmp_path: Path) -> None:
    name = ModelName.parse(f"{fault_proxy.host}/push/roundtrip:v1")
    data = make_model(store, name)
    digest, events = pushed(store, name)

    assert digest == Digest(hashlib.sha256(data).hexdigest()) == store.get(name).manifest.digest
    verify_by_pull(name, store, tmp_path)

    manifest = parse_manifest(data)
    blobs = manifest.all_blobs()
    assert len(requests(fault_proxy, "HEAD", "/blobs/sha256:")) == len(blobs)
    assert len(requests(fault_proxy, "POST", "/blobs/uploads/")) == len(blobs)
    # the 6 chunks of the weights, one PATCH for each small blob
    assert len(requests(fault_proxy, "PATCH")) == 6 + len(blobs) - 1
    puts = requests(fault_proxy, "PUT")
    assert [r.path for r in puts[-1:]] == ["/v2/push/roundtrip/manifests/v1"]
    assert all(r.status == 201 for r in puts)

    # progress: per blob checking -> uploading... -> done; then manifest, done
    for layer in blobs:
        states = [e.state for e in events if e.digest == layer.digest]
        assert states[0] == "checking" and states[-1] == "done" and "uploading" in states
        sent = [e.completed for e in events if e.digest == layer.digest and e.state == "uploading"]
        assert sent == sorted(sent) and sent[-1] == layer.size
    assert [e.state for e in events[-2:]] == ["manifest", "done"]
    assert events[-1].digest == digest


def test_direct_push_and_empty_blob(registry_server: RegistryServer, store: Store, tmp_path: Path) -> None:
    """Straight to the registry, a model with an empty layer (POST + PUT, no PATCH)."""
    name = ModelName.parse(f"{registry_server.host}/push/emptylayer:latest")
    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(10 * KiB))
    create_model(store, name, model_file=weights, texts={"system": ""})
    digest, _ = pushed(store, name)
    assert digest == store.get(name).manifest.digest
    verify_by_pull(name, store, tmp_path)


def test_second_push_skips_every_blob_by_head(fault_proxy: FaultProxy, store: Store, tmp_path: Path) -> None:
    name = ModelName.parse(f"{fault_proxy.host}/push/twice:latest")
    make_model(store, name)
    first, _ = pushed(store, name)
    with fault_proxy._lock:
        fault_proxy.requests.clear()

    second, events = pushed(store, name)
    assert second == first
    assert requests(fault_proxy, "PATCH") == [] and requests(fault_proxy, "POST") == []
    assert [r.method for r in fault_proxy.requests].count("HEAD") == len(store.get(name).manifest.all_blobs())
    assert {e.state for e in events if e.digest != second} == {"checking", "exists", "manifest"}
    # a second tag of the same model: still no blob upload, just the manifest
    other = name.with_tag("again")
    write_manifest(store, other, store.read_manifest_bytes(store.get(name)))
    assert pushed(store, other)[0] == first
    assert requests(fault_proxy, "PATCH") == []
    verify_by_pull(other, store, tmp_path)


def test_chunked_upload_follows_each_location(registry_server: RegistryServer, store: Store) -> None:
    name = ModelName.parse(f"{registry_server.host}/push/chunked:latest")
    size = 3 * CHUNK + 7
    make_model(store, name, size=size)
    weights = store.get(name).manifest.layers[0]
    assert weights.size == size
    transport = RecordingTransport()
    pushed(store, name, client_kw={"transport": transport})

    patches = [s for s in transport.seen if s[0] == "PATCH" and s[3] == 202]
    # the weights: 4 PATCHes, contiguous Content-Range start-end (inclusive, no unit)
    ranges = [s[2]["content-range"] for s in patches[:4]]
    assert ranges == [f"{i * CHUNK}-{min((i + 1) * CHUNK, size) - 1}" for i in range(4)]
    assert [s[2]["content-length"] for s in patches[:4]] == [str(CHUNK)] * 3 + ["7"]
    assert all(s[2]["content-type"] == "application/octet-stream" for s in patches)
    assert all("transfer-encoding" not in s[2] for s in patches)
    # each request goes where the previous answer's Location said (distribution's _state moves on)
    for prev, cur in zip(patches[:3], patches[1:4]):
        assert cur[1] == prev[4]["location"]
    # distribution answers Range: 0-<last byte it holds>
    assert [s[4]["range"] for s in patches[:4]] == [f"0-{r.split('-')[1]}" for r in ranges]
    finish = [s for s in transport.seen if s[0] == "PUT" and "digest=" in s[1]]
    assert finish[0][1] == patches[3][4]["location"] + f"&digest={weights.digest}"
    assert finish[0][3] == 201 and finish[0][4]["docker-content-digest"] == str(weights.digest)


def test_memory_stays_bounded_with_big_chunks(registry_server: RegistryServer, store: Store, tmp_path: Path) -> None:
    """A 24 MiB blob in one 32 MiB chunk, read 256 KiB at a time: the body is never held whole."""
    import tracemalloc

    name = ModelName.parse(f"{registry_server.host}/push/bigchunk:latest")
    make_model(store, name, size=24 << 20)

    async def main() -> Digest:
        async with client() as c:
            return await BlobPusher(c, store, chunk_size=32 << 20, read_size=256 * KiB).push(name)

    tracemalloc.start()
    try:
        trio.run(main)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak} bytes"
    verify_by_pull(name, store, tmp_path)


# -- cross-repository mounts ------------------------------------------------------------------


def derived_model(store: Store, base: ModelName, name: ModelName, from_: str) -> bytes:
    """A model made FROM ``base``: its layers, each with ``from``, plus a new system layer."""
    src = store.get(base).manifest
    layers = [Layer(lay.media_type, lay.digest, lay.size, from_) for lay in src.layers if lay.kind != "system"]
    d, n = ingest_bytes(store, b"You are derived.")
    layers.append(Layer(OLLAMA_PREFIX + "system", d, n))
    config_bytes, manifest_bytes = build_manifest(layers, {"model_format": "gguf", "os": "linux"})
    ingest_bytes(store, config_bytes)
    write_manifest(store, name, manifest_bytes)
    return manifest_bytes


def test_cross_repo_mount(fault_proxy: FaultProxy, store: Store, tmp_path: Path) -> None:
    base = ModelName.parse(f"{fault_proxy.host}/push/base:latest")
    make_model(store, base)
    pushed(store, base)
    name = ModelName.parse(f"{fault_proxy.host}/alice/derived:latest")
    data = derived_model(store, base, name, "push/base:latest")
    with fault_proxy._lock:
        fault_proxy.requests.clear()

    digest, events = pushed(store, name)
    assert digest == Digest(hashlib.sha256(data).hexdigest())
    mounts = requests(fault_proxy, "POST", "mount=")
    shared = [layer for layer in parse_manifest(data).layers if layer.from_]
    assert len(mounts) == len(shared) >= 4
    assert all(r.status == 201 and "from=push/base" in r.path for r in mounts)
    assert {e.digest for e in events if e.state == "mounted"} == {layer.digest for layer in shared}
    # only the new system layer (and the config) went up as bytes
    assert len(requests(fault_proxy, "PATCH")) == 2
    verify_by_pull(name, store, tmp_path)


def test_mount_refused_falls_back_to_upload(fault_proxy: FaultProxy, store: Store, tmp_path: Path) -> None:
    base = ModelName.parse(f"{fault_proxy.host}/push/lonely:latest")
    make_model(store, base, seed="lonely")  # never pushed: nothing to mount from
    name = ModelName.parse(f"{fault_proxy.host}/alice/fallback:latest")
    derived_model(store, base, name, "push/lonely:latest")

    _, events = pushed(store, name)
    mounts = requests(fault_proxy, "POST", "mount=")
    assert mounts and all(r.status == 202 for r in mounts)
    assert not [e for e in events if e.state == "mounted"]
    assert len(requests(fault_proxy, "PATCH")) == 6 + len(store.get(name).manifest.all_blobs()) - 1
    verify_by_pull(name, store, tmp_path)


def test_mount_source_names() -> None:
    assert mount_source("llama3.2:1b") == "library/llama3.2"
    assert mount_source("alice/m:latest") == "alice/m"
    assert mount_source("registry.ollama.ai/alice/m:latest") == "alice/m"
    assert mount_source("") is None and mount_source(None) is None
    assert mount_source("not a name!") is None


# -- failures ---------------------------------------------------------------------------------


def test_patch_5xx_fails_cleanly_without_retry(fault_proxy: FaultProxy, store: Store) -> None:
    name = ModelName.parse(f"{fault_proxy.host}/push/broken:latest")
    make_model(store, name)
    fault_proxy.add(Fault("status", path=r"/blobs/uploads/", method="PATCH", status=500, times=None, skip=2))

    started = time.monotonic()
    with pytest.raises(RegistryError) as info:
        pushed(store, name)
    assert time.monotonic() - started < 5
    err = info.value
    assert err.status == 500 and err.errno == 5
    assert "upload of blob" in str(err) and "HTTP 500" in str(err) and "injected 500" in str(err)
    assert f"bytes {2 * CHUNK}-{3 * CHUNK - 1}" in str(err)
    assert len(requests(fault_proxy, "PATCH")) == 3  # two went through, the third failed: no retry
    assert not requests(fault_proxy, "PUT")  # neither the blob nor the manifest was committed
    deletes = requests(fault_proxy, "DELETE", "/blobs/uploads/")
    assert len(deletes) == 1 and deletes[0].status == 204  # the session was cancelled


def test_bearer_challenge_is_answered(fault_proxy: FaultProxy, store: Store, tmp_path: Path) -> None:
    fault_proxy.require_bearer(token="push-token")
    name = ModelName.parse(f"{fault_proxy.host}/push/private:latest")
    make_model(store, name)
    digest, _ = pushed(store, name)
    assert digest == store.get(name).manifest.digest
    assert len(fault_proxy.token_requests) == 1  # one token, reused for every request
    with fault_proxy._lock:
        answered = [r for r in fault_proxy.requests if r.path.startswith("/v2/")]
    challenged = [r for r in answered if r.status == 401]
    assert len(challenged) == 1 and challenged[0].method == "HEAD"
    assert all(r.authorization == "Bearer push-token" for r in answered if r.status != 401)
    verify_by_pull(name, store, tmp_path)


def test_refused_token_is_auth_error(fault_proxy: FaultProxy, store: Store) -> None:
    """The token endpoint hands out a token the registry refuses: 401 after auth -> AuthError (EACCES)."""
    fault_proxy.require_bearer(token="the-real-one")
    name = ModelName.parse(f"{fault_proxy.host}/push/denied:latest")
    make_model(store, name)

    class WrongToken(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/token":
                return httpx.Response(200, json={"token": "stale"})
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def denied() -> None:
        async with client(transport=WrongToken()) as c:
            await push_model(c, store, name, chunk_size=CHUNK)

    with pytest.raises(AuthError) as info:
        trio.run(denied)
    assert info.value.errno == 13 and "401 after authenticating" in str(info.value)
    assert not requests(fault_proxy, "POST")


def test_unknown_model_is_notfound(fault_proxy: FaultProxy, store: Store) -> None:
    with pytest.raises(NotFound):
        pushed(store, ModelName.parse(f"{fault_proxy.host}/push/nothing:latest"))
    assert fault_proxy.requests == []


def test_missing_local_blob(fault_proxy: FaultProxy, store: Store) -> None:
    name = ModelName.parse(f"{fault_proxy.host}/push/holey:latest")
    make_model(store, name)
    victim = store.get(name).manifest.layers[1]
    store.blob_path(victim.digest).unlink()
    with pytest.raises(MissingBlob) as info:
        pushed(store, name)
    assert str(victim.digest) in str(info.value)
    assert fault_proxy.requests == []  # checked before the first request


def test_corrupt_local_blob_is_refused_by_digest(
    registry_server: RegistryServer, store: Store, log_allow: list[str]
) -> None:
    name = ModelName.parse(f"{registry_server.host}/push/corrupt:latest")
    make_model(store, name)
    victim = store.get(name).manifest.layers[0]
    path = store.blob_path(victim.digest)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    log_allow.append("do not hash to it")
    with pytest.raises(IntegrityError) as info:
        pushed(store, name)
    assert str(victim.digest) in str(info.value) and "corrupt" in str(info.value)


def test_unreachable_registry(store: Store) -> None:
    name = ModelName.parse(f"127.0.0.1:{free_port()}/push/nowhere:latest")
    make_model(store, name, size=1000)
    with pytest.raises(RegistryUnreachable) as info:
        pushed(store, name)
    assert info.value.errno == 5 and "ConnectError" in str(info.value)


def test_http_refused_without_insecure(fault_proxy: FaultProxy, store: Store) -> None:
    name = ModelName.parse(f"{fault_proxy.host}/push/plain:latest")
    make_model(store, name, size=1000)

    async def main() -> None:
        async with RegistryClient(insecure=False, key_path=None, trust_env=False) as c:
            await push_model(c, store, name, scheme="http")

    with pytest.raises(InsecureRefused):
        trio.run(main)
    assert fault_proxy.requests == []
