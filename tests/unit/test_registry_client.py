"""RegistryClient and BlobPuller over httpx.MockTransport (no network), run under trio."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from ollamafs.errors import InvalidName, ManifestError, NotFound, OllamaFSError
from ollamafs.names import Digest, ModelName, parse_with_scheme
from ollamafs.registry import (
    AuthError,
    BlobPuller,
    DigestMismatch,
    DownloadFailed,
    InsecureRefused,
    PartState,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnreachable,
    TransferError,
)
from ollamafs.registry.auth import (
    EMPTY_BODY_HASH,
    Challenge,
    load_signing_key,
    parse_challenges,
    token_url,
)

NAME = ModelName.parse("registry.example.com/library/tiny:latest")
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"digest": "sha256:" + "0" * 64, "size": 1}, "layers": []}).encode()
Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, **kw: object) -> RegistryClient:
    kw.setdefault("key_path", None)
    return RegistryClient(transport=httpx.MockTransport(handler), trust_env=False, **kw)  # type: ignore[arg-type]


def run(fn: Callable[[], object]) -> object:
    return trio.run(fn)


# -- challenge parsing --------------------------------------------------------------------------


def test_parse_bearer_challenge_with_commas_and_escapes() -> None:
    [ch] = parse_challenges(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:library/tiny:pull,push", error="invalid_token", note="a \\"quoted\\" word"'
    )
    assert ch.scheme == "bearer"
    assert ch.realm == "https://auth.example.com/token"
    assert ch.service == "registry.example.com"
    assert ch.scope == "repository:library/tiny:pull,push"
    assert ch.params["error"] == "invalid_token"
    assert ch.params["note"] == 'a "quoted" word'


def test_parse_several_challenges_and_headers() -> None:
    chs = parse_challenges(['Basic realm="r1", Bearer realm=https://a/t,service=s', 'Negotiate'])
    assert [c.scheme for c in chs] == ["basic", "bearer", "negotiate"]
    assert chs[0].realm == "r1"
    assert chs[1].realm == "https://a/t" and chs[1].service == "s"


def test_parse_challenge_scheme_is_case_insensitive() -> None:
    [ch] = parse_challenges('BEARER Realm="x"')
    assert ch.scheme == "bearer" and ch.realm == "x"


@given(st.text(max_size=200))
def test_parse_challenges_never_raises(text: str) -> None:
    for ch in parse_challenges(text):
        assert isinstance(ch, Challenge)


def test_token_url_is_encoded_like_go() -> None:
    ch = Challenge("bearer", {"realm": "https://ollama.com/token?x=1", "service": "ollama.com",
                              "scope": "repository:library/tiny:pull repository:other/m:pull"})
    url = token_url(ch, signed=True, now=1700000000, nonce="abc_-")
    # Go's url.Values.Encode: keys sorted, values of one key in order, QueryEscape.
    assert url == (
        "https://ollama.com/token?nonce=abc_-"
        "&scope=repository%3Alibrary%2Ftiny%3Apull&scope=repository%3Aother%2Fm%3Apull"
        "&service=ollama.com&ts=1700000000&x=1"
    )
    assert token_url(ch, signed=False).startswith("https://ollama.com/token?scope=")
    assert "ts=" not in token_url(ch, signed=False)


# -- scheme policy ------------------------------------------------------------------------------


def test_https_by_default_http_refused_without_insecure() -> None:
    c = make_client(lambda r: httpx.Response(500))
    assert c.manifest_url(NAME) == "https://registry.example.com/v2/library/tiny/manifests/latest"
    name, scheme = parse_with_scheme("http://registry.example.com/library/tiny:latest")
    with pytest.raises(InsecureRefused) as info:
        c.manifest_url(name, scheme)
    assert info.value.errno == errno.EACCES
    assert "insecure" in str(info.value) and "registry.example.com" in str(info.value)
    with pytest.raises(InvalidName):
        c.manifest_url(name, "ftp")


def test_insecure_client_uses_http() -> None:
    c = make_client(lambda r: httpx.Response(500), insecure=True)
    name, scheme = parse_with_scheme("http://localhost:5000/library/tiny:1b")
    assert c.manifest_url(name, scheme) == "http://localhost:5000/v2/library/tiny/manifests/1b"
    # like `ollama pull --insecure`: every registry is spoken to over plain http
    assert c.blob_url(NAME, Digest("a" * 64)).startswith("http://registry.example.com/v2/library/tiny/blobs/sha256:")


def test_refused_scheme_makes_no_request() -> None:
    seen: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, content=MANIFEST)

    async def main() -> None:
        async with make_client(handler) as c:
            with pytest.raises(InsecureRefused):
                await c.get_manifest(NAME, scheme="http")

    run(main)
    assert seen == []


# -- manifests and error mapping --------------------------------------------------------------


def test_get_manifest_sends_accept_and_returns_bytes_and_json() -> None:
    seen: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, content=MANIFEST, headers={
            "Docker-Content-Digest": "sha256:" + hashlib.sha256(MANIFEST).hexdigest()})

    async def main() -> tuple[bytes, dict]:
        async with make_client(handler) as c:
            return await c.get_manifest(NAME)

    body, doc = run(main)  # type: ignore[misc]
    assert body == MANIFEST and doc["schemaVersion"] == 2
    accept = seen[0].headers["accept"]
    assert "application/vnd.docker.distribution.manifest.v2+json" in accept
    assert "application/vnd.oci.image.manifest.v1+json" in accept
    assert str(seen[0].url) == "https://registry.example.com/v2/library/tiny/manifests/latest"


@pytest.mark.parametrize(
    ("response", "error", "text"),
    [
        (httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}),
         RegistryNotFound, "MANIFEST_UNKNOWN"),
        (httpx.Response(500, json={"errors": [{"code": "UNKNOWN", "message": "boom"}]}),
         RegistryError, "UNKNOWN: boom"),
        (httpx.Response(502, text="bad gateway page"), RegistryError, "bad gateway page"),
        (httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no"}]}), AuthError, "DENIED"),
        (httpx.Response(200, content=b"not json"), ManifestError, "not JSON"),
        (httpx.Response(200, content=b"[1]"), ManifestError, "not a JSON object"),
        (httpx.Response(200, content=MANIFEST, headers={"Docker-Content-Digest": "sha256:" + "1" * 64}),
         ManifestError, "Docker-Content-Digest"),
    ],
)
def test_manifest_error_mapping(response: httpx.Response, error: type, text: str) -> None:
    async def main() -> None:
        async with make_client(lambda r: response) as c:
            with pytest.raises(error) as info:
                await c.get_manifest(NAME)
            assert text in str(info.value)
            assert isinstance(info.value, OllamaFSError)

    run(main)


def test_404_is_notfound_enoent_and_500_keeps_body() -> None:
    body500 = b'{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}'

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path.endswith("/nope"):
            return httpx.Response(404)
        return httpx.Response(500, content=body500)

    async def main() -> None:
        async with make_client(handler) as c:
            with pytest.raises(NotFound) as nf:
                await c.get_manifest(NAME.with_tag("nope"))
            assert nf.value.errno == errno.ENOENT
            with pytest.raises(RegistryError) as err:
                await c.get_manifest(NAME)
            assert err.value.status == 500 and err.value.body == body500 and err.value.retryable
            assert err.value.errno == errno.EIO

    run(main)


@pytest.mark.parametrize("exc", [httpx.ConnectError("Connection refused"), httpx.ConnectTimeout("timed out"),
                                 httpx.ReadTimeout("read timed out")])
def test_transport_errors_are_unreachable_with_host_and_cause(exc: Exception) -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        raise exc

    async def main() -> None:
        async with make_client(handler) as c:
            with pytest.raises(RegistryUnreachable) as info:
                await c.get_manifest(NAME)
            msg = str(info.value)
            assert "registry.example.com" in msg and type(exc).__name__ in msg and str(exc) in msg
            assert info.value.retryable and info.value.errno == errno.EIO

    run(main)


def test_blob_size_heads_and_maps_404() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        assert r.method == "HEAD"
        if "aaaa" in r.url.path:
            return httpx.Response(200, headers={"Content-Length": "1234"})
        return httpx.Response(404)

    async def main() -> None:
        async with make_client(handler) as c:
            assert await c.blob_size(NAME, Digest("a" * 64)) == 1234
            with pytest.raises(RegistryNotFound):
                await c.blob_size(NAME, Digest("b" * 64))

    run(main)


# -- auth: Basic, Bearer, signed -------------------------------------------------------------


def bearer_registry(token_key: str = "token", *, signed_key: Ed25519PublicKey | None = None,
                    token_status: int = 200) -> tuple[Handler, dict]:
    """A registry demanding a Bearer token from https://auth.example.com/token."""
    state: dict = {"token_requests": [], "registry_requests": [], "valid": {"tok-1"}}

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.host == "auth.example.com":
            state["token_requests"].append(r)
            if token_status != 200:
                return httpx.Response(token_status, json={"errors": [{"code": "DENIED", "message": "bad key"}]})
            n = len(state["token_requests"])
            return httpx.Response(200, json={token_key: f"tok-{n}"})
        state["registry_requests"].append(r)
        token = r.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in state["valid"]:
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED"}]}, headers={
                "WWW-Authenticate": 'Bearer realm="https://auth.example.com/token",'
                                    'service="registry.example.com",scope="repository:library/tiny:pull"'})
        return httpx.Response(200, content=MANIFEST)

    return handler, state


@pytest.mark.parametrize("token_key", ["token", "access_token"])
def test_bearer_flow_fetches_token_retries_once_and_caches(token_key: str) -> None:
    handler, state = bearer_registry(token_key)

    async def main() -> None:
        async with make_client(handler) as c:
            for _ in range(3):
                body, _ = await c.get_manifest(NAME)
                assert body == MANIFEST

    run(main)
    assert len(state["token_requests"]) == 1  # cached per scope
    q = parse_qs(urlsplit(str(state["token_requests"][0].url)).query)
    assert q == {"scope": ["repository:library/tiny:pull"], "service": ["registry.example.com"]}
    auths = [r.headers.get("authorization") for r in state["registry_requests"]]
    assert auths == [None, "Bearer tok-1", "Bearer tok-1", "Bearer tok-1"]


def test_refused_cached_token_is_refreshed_once() -> None:
    handler, state = bearer_registry()

    async def main() -> None:
        async with make_client(handler) as c:
            await c.get_manifest(NAME)
            state["valid"] = {"tok-2"}  # tok-1 revoked
            await c.get_manifest(NAME)
            state["valid"] = set()  # nothing is accepted any more
            with pytest.raises(AuthError) as info:
                await c.get_manifest(NAME)
            assert "401" in str(info.value) and info.value.errno == errno.EACCES

    run(main)
    assert len(state["token_requests"]) == 3


def test_token_endpoint_refusal_is_autherror() -> None:
    handler, _ = bearer_registry(token_status=401)

    async def main() -> None:
        async with make_client(handler) as c:
            with pytest.raises(AuthError, match="DENIED"):
                await c.get_manifest(NAME)

    run(main)


def test_basic_auth_is_sent_when_configured() -> None:
    seen: list[str | None] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r.headers.get("authorization"))
        if r.headers.get("authorization") != "Basic " + base64.b64encode(b"alice:pw").decode():
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="reg"'})
        return httpx.Response(200, content=MANIFEST)

    async def main() -> None:
        async with make_client(handler, username="alice", password="pw") as c:
            assert (await c.get_manifest(NAME))[0] == MANIFEST
        async with make_client(handler) as c:
            with pytest.raises(AuthError, match="credentials are needed"):
                await c.get_manifest(NAME)
        async with make_client(handler, username="alice", password="wrong") as c:
            with pytest.raises(AuthError):
                await c.get_manifest(NAME)

    run(main)
    assert seen[0] == "Basic YWxpY2U6cHc="


def test_basic_credentials_go_to_the_token_endpoint() -> None:
    handler, state = bearer_registry()

    async def main() -> None:
        async with make_client(handler, username="bob", password="x") as c:
            await c.get_manifest(NAME)

    run(main)
    assert state["token_requests"][0].headers["authorization"] == "Basic " + base64.b64encode(b"bob:x").decode()


def write_openssh_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    return key


def decode_ssh_ed25519(b64: str) -> Ed25519PublicKey:
    blob = base64.b64decode(b64)
    (n,) = struct.unpack(">I", blob[:4])
    assert blob[4:4 + n] == b"ssh-ed25519"
    (m,) = struct.unpack(">I", blob[4 + n:8 + n])
    return Ed25519PublicKey.from_public_bytes(blob[8 + n:8 + n + m])


def test_signed_token_request_matches_ollama_format(tmp_path: Path) -> None:
    key_path = tmp_path / "id_ed25519"
    key = write_openssh_key(key_path)
    handler, state = bearer_registry()

    async def main() -> None:
        async with make_client(handler, key_path=key_path) as c:
            assert (await c.get_manifest(NAME))[0] == MANIFEST

    run(main)
    [req] = state["token_requests"]
    url = str(req.url)
    q = parse_qs(urlsplit(url).query)
    assert set(q) == {"nonce", "scope", "service", "ts"}
    assert abs(int(q["ts"][0]) - __import__("time").time()) < 60
    assert len(base64.urlsafe_b64decode(q["nonce"][0] + "==")) == 16
    pub_b64, sig_b64 = req.headers["authorization"].split(":")
    # the public key part is the authorized_keys field without its "ssh-ed25519 " prefix
    expected_pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert pub_b64 == expected_pub.split()[1].decode()
    assert EMPTY_BODY_HASH == base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    payload = f"GET,{url},{EMPTY_BODY_HASH}".encode()
    decode_ssh_ed25519(pub_b64).verify(base64.b64decode(sig_b64), payload)  # raises if wrong


def test_missing_default_key_means_unsigned_token_request(tmp_path: Path) -> None:
    handler, state = bearer_registry()

    async def main() -> None:
        async with make_client(handler, key_path=tmp_path / "absent") as c:
            await c.get_manifest(NAME)

    run(main)
    assert "authorization" not in state["token_requests"][0].headers


def test_bad_key_files_are_autherrors(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("not a key")
    with pytest.raises(AuthError, match="cannot parse"):
        load_signing_key(bad)
    with pytest.raises(AuthError, match="cannot read"):
        load_signing_key(tmp_path / "absent")
    from cryptography.hazmat.primitives.asymmetric import ec

    ecdsa = ec.generate_private_key(ec.SECP256R1())
    other = tmp_path / "ecdsa"
    other.write_bytes(ecdsa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    with pytest.raises(AuthError, match="not an ed25519"):
        load_signing_key(other)


def test_http_token_realm_refused_for_secure_client() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="http://evil.example.com/t"'})

    async def main() -> None:
        async with make_client(handler) as c:
            with pytest.raises(InsecureRefused):
                await c.get_manifest(NAME)

    run(main)


# -- blobs: redirects, ranges ---------------------------------------------------------------


DIGEST = Digest("c" * 64)


def test_resolve_redirect_once_to_other_origin() -> None:
    seen: list[httpx.Request] = []

    def handler(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        if r.url.host == "registry.example.com" and r.url.path.startswith("/v2/"):
            return httpx.Response(307, headers={"Location": "/redirected" + r.url.path})
        if r.url.path.startswith("/redirected"):
            return httpx.Response(307, headers={"Location": "https://cdn.example.net/blob?sig=abc"})
        raise AssertionError(f"followed the CDN redirect: {r.url}")

    async def main() -> str:
        async with make_client(handler) as c:
            return await c.resolve_blob_url(NAME, DIGEST)

    url = run(main)
    assert url == "https://cdn.example.net/blob?sig=abc"
    assert [r.url.host for r in seen] == ["registry.example.com", "registry.example.com"]
    assert seen[0].headers["range"] == "bytes=0-0"


def test_resolve_without_redirect_is_own_url() -> None:
    async def main() -> str:
        async with make_client(lambda r: httpx.Response(206, content=b"x",
                                                        headers={"Content-Range": "bytes 0-0/10"})) as c:
            return await c.resolve_blob_url(NAME, DIGEST)

    assert run(main) == f"https://registry.example.com/v2/library/tiny/blobs/{DIGEST}"


def test_resolve_maps_404() -> None:
    async def main() -> None:
        async with make_client(lambda r: httpx.Response(404)) as c:
            with pytest.raises(RegistryNotFound):
                await c.resolve_blob_url(NAME, DIGEST)

    run(main)


def ranged_blob(data: bytes, seen: list[httpx.Request] | None = None) -> Handler:
    def handler(r: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(r)
        rng = r.headers.get("range")
        if not rng:
            return httpx.Response(200, content=data)
        first, _, last = rng.removeprefix("bytes=").partition("-")
        a, b = int(first), (int(last) if last else len(data) - 1)
        return httpx.Response(206, content=data[a:b + 1], headers={"Content-Range": f"bytes {a}-{b}/{len(data)}"})

    return handler


def test_stream_blob_range_and_no_credentials_to_cdn() -> None:
    data = os.urandom(10_000)
    seen: list[httpx.Request] = []

    async def main() -> bytes:
        async with make_client(ranged_blob(data, seen), username="u", password="p") as c:
            out = b""
            async with c.stream_blob(NAME, DIGEST, 100, 5000, url="https://cdn.example.net/b") as body:
                assert body.status == 206 and body.length == 4900 and body.total == 10_000
                async for chunk in body:
                    out += chunk
            async with c.stream_blob(NAME, DIGEST, 0, 10) as body:
                out2 = b"".join([chunk async for chunk in body])
            assert out2 == data[:10]
            return out

    assert run(main) == data[100:5000]
    assert seen[0].headers["range"] == "bytes=100-4999"
    assert "authorization" not in seen[0].headers  # the CDN never sees registry credentials
    assert seen[1].headers["authorization"].startswith("Basic ")
    assert seen[0].headers["accept-encoding"] == "identity"


def test_stream_blob_rejects_ignored_range_and_wrong_start() -> None:
    data = b"0123456789"

    async def main() -> None:
        async with make_client(lambda r: httpx.Response(200, content=data)) as c:
            with pytest.raises(TransferError, match="ignored the Range"):
                async with c.stream_blob(NAME, DIGEST, 5, 10):
                    pass
        wrong = httpx.Response(206, content=data[:5], headers={"Content-Range": "bytes 0-4/10"})
        async with make_client(lambda r: wrong) as c:
            with pytest.raises(TransferError, match="asked for bytes from 5"):
                async with c.stream_blob(NAME, DIGEST, 5, 10):
                    pass

    run(main)


class _BrokenStream(httpx.AsyncByteStream):
    def __init__(self, first: bytes) -> None:
        self.first = first

    async def __aiter__(self):  # type: ignore[override]
        yield self.first
        raise httpx.ReadError("connection reset by peer")


def test_stream_blob_broken_body_is_transfer_error() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        return httpx.Response(206, stream=_BrokenStream(b"abc"), headers={"Content-Range": "bytes 0-9/10"})

    async def main() -> None:
        async with make_client(handler) as c:
            got = b""
            with pytest.raises(TransferError, match="broke off after 3 bytes") as info:
                async with c.stream_blob(NAME, DIGEST, 0, 10) as body:
                    async for chunk in body:
                        got += chunk
            assert got == b"abc" and info.value.retryable

    run(main)


def test_stream_blob_short_body_is_transfer_error() -> None:
    def handler(r: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=b"abc", headers={"Content-Range": "bytes 0-9/10"})

    async def main() -> None:
        async with make_client(handler) as c:
            with pytest.raises(TransferError, match="ended after 3 of 10"):
                async with c.stream_blob(NAME, DIGEST, 0, 10) as body:
                    async for _ in body:
                        pass

    run(main)


# -- the puller (mock registry) ------------------------------------------------------------------


def test_part_json_is_ollamas_format() -> None:
    p = PartState(3, 300, 100, 42)
    assert p.to_json() == b'{"N":3,"Offset":300,"Size":100,"Completed":42}\n'
    assert PartState.from_json(p.to_json()) == p
    for bad in (b"[]", b'{"N":0,"Offset":0,"Size":1,"Completed":2}', b'{"N":-1}', b'{"N":"0"}', b"{"):
        with pytest.raises(ValueError):
            PartState.from_json(bad)


def test_plan_clamps_part_sizes_like_ollama() -> None:
    p = BlobPuller(make_client(lambda r: httpx.Response(500)), "/nonexistent")
    MB = 1000 * 1000
    assert [x.size for x in p._plan(250 * MB)] == [100 * MB, 100 * MB, 50 * MB]
    parts = p._plan(40_000 * MB)
    assert len(parts) == 40 and all(x.size == 1000 * MB for x in parts)
    parts = p._plan(3200 * MB)
    assert len(parts) == 16 and parts[-1].offset + parts[-1].size == 3200 * MB
    assert p._plan(0) == []


def blob_of(n: int) -> tuple[bytes, Digest]:
    data = os.urandom(n)
    return data, Digest(hashlib.sha256(data).hexdigest())


def small_puller(client: RegistryClient, path: Path, **kw: object) -> BlobPuller:
    opts: dict = dict(parts=4, min_part_size=1000, max_part_size=4000, backoff_base=0.001, write_size=512,
                      stall_timeout=5.0)
    opts.update(kw)
    return BlobPuller(client, path, **opts)


def test_pull_writes_final_blob_and_no_partials(tmp_path: Path) -> None:
    data, digest = blob_of(10_000)
    events = []

    async def main() -> Path:
        async with make_client(ranged_blob(data)) as c:
            return await small_puller(c, tmp_path).pull(NAME, digest, size=len(data), progress=events.append)

    path = run(main)
    assert path.read_bytes() == data
    assert os.listdir(tmp_path) == [digest.filename]
    assert events[-1].state == "done" and events[-1].completed == len(data)
    assert "verifying" in [e.state for e in events]


def test_pull_single_flight(tmp_path: Path) -> None:
    data, digest = blob_of(10_000)
    seen: list[httpx.Request] = []

    async def main() -> list[Path]:
        results: list[Path] = []
        async with make_client(ranged_blob(data, seen)) as c:
            puller = small_puller(c, tmp_path)

            async def one() -> None:
                results.append(await puller.pull(NAME, digest))

            async with trio.open_nursery() as n:
                for _ in range(5):
                    n.start_soon(one)
        return results

    results = run(main)
    assert len(results) == 5 and len(set(results)) == 1
    gets = [r for r in seen if r.method == "GET" and r.headers.get("range") != "bytes=0-0"]
    assert len(gets) == 4  # 10_000 bytes in 4 parts of 2500: one download, not five
    assert len([r for r in seen if r.method == "HEAD"]) == 1


def test_pull_mismatch_deletes_partials_logs_once_and_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, _ = blob_of(5000)
    wrong = Digest("d" * 64)

    async def main() -> None:
        async with make_client(ranged_blob(data)) as c:
            with pytest.raises(DigestMismatch) as info:
                await small_puller(c, tmp_path).pull(NAME, wrong, size=len(data))
            assert info.value.errno == errno.EIO

    with caplog.at_level(logging.ERROR, logger="ollamafs.registry"):
        run(main)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert wrong.hex in errors[0].getMessage() and hashlib.sha256(data).hexdigest() in errors[0].getMessage()
    assert os.listdir(tmp_path) == []


def test_pull_resumes_from_partial_files(tmp_path: Path) -> None:
    data, digest = blob_of(8000)
    # an interrupted earlier pull: part 0 done, part 1 half done; garbage past what JSON covers
    (tmp_path / digest.partial_filename).write_bytes(data[:6000] + b"\0" * 2000)
    for part in (PartState(0, 0, 4000, 4000), PartState(1, 4000, 4000, 2000)):
        (tmp_path / f"{digest.partial_filename}-{part.n}").write_bytes(part.to_json())
    seen: list[httpx.Request] = []

    async def main() -> Path:
        async with make_client(ranged_blob(data, seen)) as c:
            return await small_puller(c, tmp_path).pull(NAME, digest, size=len(data))

    path = run(main)
    assert path.read_bytes() == data
    ranges = [r.headers.get("range") for r in seen if r.headers.get("range") != "bytes=0-0"]
    assert ranges == ["bytes=6000-7999"]


def test_pull_discards_unusable_partial_state(tmp_path: Path) -> None:
    data, digest = blob_of(3000)
    (tmp_path / digest.partial_filename).write_bytes(b"junk")
    (tmp_path / f"{digest.partial_filename}-0").write_bytes(b'{"N":0,"Offset":0,"Size":9999,"Completed":5}\n')

    async def main() -> Path:
        async with make_client(ranged_blob(data)) as c:
            return await small_puller(c, tmp_path).pull(NAME, digest, size=len(data))

    assert run(main).read_bytes() == data


def test_pull_gives_up_after_max_retries_and_keeps_partials(tmp_path: Path) -> None:
    data, digest = blob_of(1000)  # one part
    calls = {"n": 0}

    def handler(r: httpx.Request) -> httpx.Response:
        if r.headers.get("range") == "bytes=0-0":
            return ranged_blob(data)(r)
        calls["n"] += 1
        return httpx.Response(503, text="busy")

    async def main() -> None:
        async with make_client(handler) as c:
            with pytest.raises(DownloadFailed, match="failed 3 times") as info:
                await small_puller(c, tmp_path, max_retries=3).pull(NAME, digest, size=len(data))
            assert "503" in str(info.value)

    run(main)
    assert calls["n"] == 3
    assert digest.filename not in os.listdir(tmp_path)
    assert f"{digest.partial_filename}-0" in os.listdir(tmp_path)


def test_pull_404_is_not_retried(tmp_path: Path) -> None:
    _, digest = blob_of(10)
    calls = []

    async def main() -> None:
        async with make_client(lambda r: calls.append(r) or httpx.Response(404)) as c:
            with pytest.raises(RegistryNotFound):
                await small_puller(c, tmp_path).pull(NAME, digest)

    run(main)
    assert len(calls) == 1


def test_pull_empty_blob(tmp_path: Path) -> None:
    data, digest = blob_of(0)

    async def main() -> Path:
        async with make_client(lambda r: httpx.Response(500)) as c:
            return await small_puller(c, tmp_path).pull(NAME, digest, size=0)

    assert run(main).read_bytes() == b""
