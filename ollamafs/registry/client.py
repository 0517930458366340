"""An httpx client for the registry protocol (OCI distribution v2) as Ollama speaks it.

One :class:`RegistryClient` wraps one shared ``httpx.AsyncClient`` with bounded limits and is
used from trio (httpx runs on trio through anyio).  It turns every httpx failure into an error of
:mod:`ollamafs.registry.errors`:

* no answer (refused, reset before a response, timeout, TLS) -> :class:`RegistryUnreachable`;
* 404 -> :class:`RegistryNotFound` (a :class:`ollamafs.errors.NotFound`);
* 401 after the one authenticated retry, 403 -> :class:`AuthError`;
* any other status >= 400 -> :class:`RegistryError` carrying the (capped) body;
* a body that breaks off or comes back short -> :class:`TransferError`.

Scheme policy, as Ollama's: a name is fetched over https; an ``http://`` name is refused with
:class:`InsecureRefused` unless the client was built with ``insecure=True``, and an insecure
client talks plain http to every registry (Ollama's ``--insecure`` does the same).

Authentication: Basic when a username and password are given; on a 401 with a Bearer challenge
the client fetches a token from the realm (signed with the OpenSSH ed25519 key at ``key_path``
when that file exists, as Ollama's registry expects; plain otherwise), retries once, and caches
the token per (realm, service, scope) until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
import trio

from .. import __version__
from ..errors import InvalidDigest, InvalidName, ManifestError
from ..names import Digest, ModelName
from .auth import (
    DEFAULT_KEY_PATH,
    Challenge,
    SigningKey,
    bearer_challenge,
    load_signing_key,
    parse_challenges,
    token_url,
)
from .bodies import BodyPool
from .errors import (
    AuthError,
    InsecureRefused,
    RegistryError,
    RegistryNotFound,
    RegistryUnreachable,
    TransferError,
)

log = logging.getLogger(__name__)

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_ACCEPT = f"{MANIFEST_V2}, {OCI_MANIFEST}"

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what registries accept for a manifest
MAX_ERROR_BODY = 64 * 1024  # what we keep of an error response
MAX_REDIRECTS = 10
DEFAULT_TOKEN_TTL = 60.0  # seconds, the distribution spec's default for tokens without expires_in
_REDIRECTS = (301, 302, 303, 307, 308)

# httpcore reads a response body 64 KiB per socket read; a blob body is hundreds of MB, and each
# read costs a trip through trio, anyio, httpcore and h11.  Reading up to 1 MiB at a time (the
# kernel returns what it has) cut a 1 GiB pull on loopback from 4.5 s to 3.4 s (scripts/bench).
# It is a class attribute of httpcore's HTTP/1.1 connection, so this sets it for the process.
BODY_READ_SIZE = 1 << 20
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = max(httpcore.AsyncHTTP11Connection.READ_NUM_BYTES, BODY_READ_SIZE)
httpcore.HTTP11Connection.READ_NUM_BYTES = max(httpcore.HTTP11Connection.READ_NUM_BYTES, BODY_READ_SIZE)

DEFAULT_TIMEOUT = httpx.Timeout(connect=15.0, read=60.0, write=60.0, pool=120.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=16, keepalive_expiry=30.0)


@dataclass(slots=True)
class _Token:
    value: str
    expires: float  # time.monotonic()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class BlobBody:
    """The body of one (ranged) blob response: an async iterator of ``bytes`` chunks.

    It yields at most ``length`` bytes (when known) and raises :class:`TransferError` if the body
    breaks off or ends before ``length`` bytes.
    """

    def __init__(self, response: httpx.Response, *, start: int, length: int | None, total: int | None) -> None:
        self.response = response
        self.status = response.status_code
        self.url = str(response.url)
        self.start = start
        self.length = length
        self.total = total
        self.received = 0
        self._overrun = False
        # Iterated to its end even after the last wanted byte: httpcore's generators then finish
        # instead of being left suspended for the garbage collector (trio warns about those).
        self._it = response.aiter_bytes()

    async def aclose(self) -> None:
        """Finalise httpx's body iterator here, inside trio, not later in the garbage collector."""
        await self._it.aclose()  # type: ignore[attr-defined]

    def __aiter__(self) -> BlobBody:
        return self

    async def __anext__(self) -> bytes:
        if self._overrun:
            raise StopAsyncIteration
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            if self.length is not None and self.received < self.length:
                raise TransferError(
                    f"{self.url}: body ended after {self.received} of {self.length} bytes", url=self.url
                ) from None
            raise
        except httpx.TransportError as exc:
            raise TransferError(
                f"{self.url}: body broke off after {self.received} bytes: {type(exc).__name__}: {exc}",
                url=self.url,
            ) from exc
        if self.length is not None and self.received + len(chunk) > self.length:
            # A server that sent more than the range asked for (a 200 for a prefix): stop there.
            chunk = chunk[: self.length - self.received]
            self._overrun = True
        self.received += len(chunk)
        return chunk


class RegistryClient:
    """The registry protocol over one shared ``httpx.AsyncClient``; use from trio.

    ``transport`` replaces the network (tests pass ``httpx.MockTransport``).  ``key_path`` is the
    OpenSSH ed25519 key for Ollama's signed token requests; when the file does not exist token
    requests go unsigned, ``None`` never signs.
    """

    def __init__(
        self,
        *,
        insecure: bool = False,
        username: str | None = None,
        password: str | None = None,
        key_path: str | os.PathLike[str] | None = DEFAULT_KEY_PATH,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = True,
        user_agent: str = f"ollamafs/{__version__}",
    ) -> None:
        self.insecure = insecure
        self._basic: str | None = None
        if username is not None and password is not None:
            self._basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self._key_path = Path(key_path) if key_path is not None else None
        self._key: SigningKey | None = None
        self._http = httpx.AsyncClient(
            timeout=timeout,
            limits=limits,
            transport=transport,
            trust_env=trust_env,
            follow_redirects=False,
            headers={"User-Agent": user_agent},
        )
        self._sync_args = dict(limits=limits, trust_env=trust_env, headers={"User-Agent": user_agent})
        self._sync: httpx.Client | None = None
        self._sync_lock = threading.Lock()  # worker threads create it lazily, exactly once
        self.threaded_bodies = transport is None  # a mocked transport keeps everything async
        self.bodies = BodyPool(user_agent=user_agent, trust_env=trust_env)  # part bodies (see .bodies)
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._token_locks: dict[tuple[str, str, str], trio.Lock] = {}
        self._repo_auth: dict[tuple[tuple[str, str, int | None], str], tuple[str, str, str]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()
        self.bodies.close()
        with self._sync_lock:
            if self._sync is not None:
                self._sync.close()
                self._sync = None

    def body_client(self, read_timeout: float) -> httpx.Client:
        """The synchronous client that worker threads stream blob bodies with (see puller)."""
        with self._sync_lock:
            if self._sync is None:
                timeout = httpx.Timeout(connect=15.0, read=read_timeout, write=60.0, pool=120.0)
                self._sync = httpx.Client(timeout=timeout, follow_redirects=True, **self._sync_args)
            return self._sync

    def cached_auth(self, url: str, name: ModelName) -> str | None:
        """The Authorization value a request to ``url`` for ``name`` would carry now, if any."""
        own = httpx.URL(self.blob_url(name, Digest("0" * 64)))
        target = httpx.URL(url)
        if _origin(target) != _origin(own):
            return None  # credentials only ever go to the registry's own origin
        hdrs: dict[str, str] = {}
        self._credentials((_origin(target), self.repository(name)), hdrs)
        return hdrs.get("Authorization")

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- URLs ------------------------------------------------------------------------------

    def scheme_for(self, name: ModelName, scheme: str | None) -> str:
        """The scheme a request for ``name`` uses, or the refusal of an insecure one."""
        if scheme is not None:
            scheme = scheme.lower()
        if scheme not in (None, "https", "http"):
            raise InvalidName(f"unsupported scheme {scheme!r} in model name {name}")
        if scheme == "http" and not self.insecure:
            raise InsecureRefused(
                f"refusing insecure protocol http for {name}: pass insecure=True (--insecure) to allow it"
            )
        return "http" if self.insecure else "https"

    def base_url(self, name: ModelName, scheme: str | None = None) -> str:
        return f"{self.scheme_for(name, scheme)}://{name.host}"

    @staticmethod
    def repository(name: ModelName) -> str:
        return f"{name.namespace}/{name.model}"

    def manifest_url(self, name: ModelName, scheme: str | None = None) -> str:
        return f"{self.base_url(name, scheme)}/v2/{self.repository(name)}/manifests/{name.tag}"

    def blob_url(self, name: ModelName, digest: Digest, scheme: str | None = None) -> str:
        return f"{self.base_url(name, scheme)}/v2/{self.repository(name)}/blobs/{digest}"

    # -- public API ------------------------------------------------------------------------

    async def get_manifest(self, name: ModelName, *, scheme: str | None = None) -> tuple[bytes, dict[str, Any]]:
        """Fetch the manifest of ``name``: its exact bytes and the parsed JSON object."""
        url = self.manifest_url(name, scheme)
        repo = self.repository(name)
        resp = await self._send("GET", url, repo=repo, headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        try:
            if resp.status_code >= 400:
                await self._raise_for_status(resp, f"manifest for {name}")
            body = await self._read_capped(resp, MAX_MANIFEST_BYTES + 1)
        finally:
            await resp.aclose()
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest for {name} is larger than {MAX_MANIFEST_BYTES} bytes")
        expected = resp.headers.get("docker-content-digest")
        if expected:
            try:
                want = Digest.parse(expected)
            except InvalidDigest:
                want = None  # another algorithm: nothing to check against
            if want is not None and hashlib.sha256(body).hexdigest() != want.hex:
                raise ManifestError(
                    f"manifest for {name}: body does not match Docker-Content-Digest {expected}"
                )
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ManifestError(f"manifest for {name} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ManifestError(f"manifest for {name} is not a JSON object")
        return body, doc

    async def blob_size(self, name: ModelName, digest: Digest, *, scheme: str | None = None) -> int:
        """``HEAD`` the blob (following redirects) and return its Content-Length."""
        url = self.blob_url(name, digest, scheme)
        resp = await self._send(
            "HEAD", url, repo=self.repository(name), headers={"Accept-Encoding": "identity"}, follow=True
        )
        try:
            if resp.status_code >= 400:
                await self._raise_for_status(resp, f"blob {digest} of {name}")
        finally:
            await resp.aclose()
        length = resp.headers.get("content-length")
        if length is None or not length.isdigit():
            raise RegistryError(f"HEAD {url}: no Content-Length", status=resp.status_code, url=url)
        return int(length)

    async def resolve_blob_url(self, name: ModelName, digest: Digest, *, scheme: str | None = None) -> str:
        """The URL the blob's bytes come from, resolving redirects once (as Ollama does).

        A GET for the first byte follows redirects within the registry's origin and stops at the
        first redirect to another origin (a CDN): that Location is returned, and all ranged part
        requests go there.  Without a redirect this is the registry's own blob URL.
        """
        url = self.blob_url(name, digest, scheme)
        registry = _origin(httpx.URL(url))
        current = url
        for _ in range(MAX_REDIRECTS):
            resp = await self._send(
                "GET",
                current,
                repo=self.repository(name),
                headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"},
                stream=True,
            )
            try:
                if resp.status_code in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise RegistryError(
                            f"GET {current}: redirect without Location", status=resp.status_code, url=current
                        )
                    await self._read_capped(resp, MAX_ERROR_BODY)
                    target = httpx.URL(current).join(location)
                    if _origin(target) != registry:
                        log.debug("blob %s redirects to %s", digest.short, target.host)
                        return str(target)
                    current = str(target)
                    continue
                if resp.status_code >= 400:
                    await self._raise_for_status(resp, f"blob {digest} of {name}")
                if resp.status_code == 206:
                    await self._read_capped(resp, 1024)  # the one byte: the connection is reused
                return current
            finally:
                await resp.aclose()
        raise RegistryError(f"GET {url}: more than {MAX_REDIRECTS} redirects", url=url)

    @asynccontextmanager
    async def stream_blob(
        self,
        name: ModelName,
        digest: Digest,
        start: int = 0,
        end: int | None = None,
        *,
        url: str | None = None,
        scheme: str | None = None,
    ) -> AsyncIterator[BlobBody]:
        """Open ``bytes [start, end)`` of a blob (``end`` exclusive, ``None`` = to the end).

        ``url`` is a resolved URL from :meth:`resolve_blob_url`; without it the registry's blob
        URL is used.  Redirects are followed either way; credentials only ever go to the
        registry's own origin.  Use as ``async with client.stream_blob(...) as body: async for chunk in body``.
        """
        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"bad range [{start}, {end})")
        own = self.blob_url(name, digest, scheme)
        target = url or own
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        same_origin = _origin(httpx.URL(target)) == _origin(httpx.URL(own))
        resp = await self._send(
            "GET",
            target,
            repo=self.repository(name),
            headers=headers,
            stream=True,
            follow=True,
            authenticate=same_origin,
        )
        try:
            if resp.status_code >= 400:
                await self._raise_for_status(resp, f"blob {digest} of {name}")
            body = self._blob_body(resp, start, end)
            try:
                yield body
            finally:
                await body.aclose()
        finally:
            await resp.aclose()

    # -- internals -------------------------------------------------------------------------

    def _blob_body(self, resp: httpx.Response, start: int, end: int | None) -> BlobBody:
        url = str(resp.url)
        total: int | None = None
        if resp.status_code == 206:
            first, last, total = _parse_content_range(resp.headers.get("content-range", ""), url)
            if first != start:
                raise TransferError(f"GET {url}: asked for bytes from {start}, got {first}", url=url)
            length = last - first + 1
            if end is not None:
                length = min(length, end - start)
        elif resp.status_code == 200:
            if start:
                raise TransferError(f"GET {url}: server ignored the Range request", url=url)
            cl = resp.headers.get("content-length")
            total = int(cl) if cl and cl.isdigit() else None
            length = end if end is not None else total
            if end is not None and total is not None:
                length = min(end, total)
        else:
            raise RegistryError(f"GET {url}: unexpected HTTP {resp.status_code}", status=resp.status_code, url=url)
        if end is not None and total is not None and end > total:
            raise TransferError(f"GET {url}: range end {end} is past the blob's {total} bytes", url=url)
        if end is not None and length is not None and length < end - start:
            raise TransferError(f"GET {url}: got {length} of {end - start} requested bytes", url=url)
        return BlobBody(resp, start=start, length=length, total=total)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        repo: str,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        follow: bool = False,
        authenticate: bool = True,
    ) -> httpx.Response:
        """Send one request with credentials; on a 401 answer its challenge and retry once.

        The returned response may have any status; with ``stream=True`` the caller closes it.
        """
        hdrs = dict(headers or {})
        auth_key = (_origin(httpx.URL(url)), repo)
        sent = self._credentials(auth_key, hdrs) if authenticate else None
        resp = await self._do(method, url, hdrs, stream=stream, follow=follow)
        if resp.status_code != 401 or not authenticate:
            return resp
        await self._answer_challenge(resp, hdrs, sent, auth_key, f"{method} {url}")
        resp = await self._do(method, url, hdrs, stream=stream, follow=follow)
        if resp.status_code == 401:
            body = await self._read_capped(resp, MAX_ERROR_BODY)
            await resp.aclose()
            raise AuthError(f"{method} {url}: HTTP 401 after authenticating{_detail(body)}", status=401, body=body)
        return resp

    def _credentials(self, auth_key, hdrs: dict[str, str]) -> _Token | None:
        """Put the Authorization a request would carry now into ``hdrs`` (a cached Bearer token
        for the repository, else Basic); return the token sent, if any."""
        key = self._repo_auth.get(auth_key)
        token = self._tokens.get(key) if key else None
        if token is not None and token.expires > time.monotonic():
            hdrs["Authorization"] = f"Bearer {token.value}"
            return token
        if self._basic:
            hdrs["Authorization"] = self._basic
        return None

    async def _answer_challenge(
        self, resp: httpx.Response, hdrs: dict[str, str], sent: _Token | None, auth_key, what: str
    ) -> None:
        """Answer a 401's challenge by updating ``hdrs`` (a fresh Bearer token, or Basic), or
        raise AuthError when there is nothing more to offer.  Closes ``resp``."""
        challenges = parse_challenges(resp.headers.get_list("www-authenticate"))
        body = await self._read_capped(resp, MAX_ERROR_BODY)
        await resp.aclose()
        bearer = bearer_challenge(challenges)
        if bearer is not None:
            key = (bearer.realm, bearer.service, bearer.scope)
            if sent is not None and self._tokens.get(key) is sent:
                del self._tokens[key]  # refused: it expired early or was revoked
            hdrs["Authorization"] = "Bearer " + await self._token(bearer, key)
            self._repo_auth[auth_key] = key
        elif any(ch.scheme == "basic" for ch in challenges) and self._basic and hdrs.get("Authorization") != self._basic:
            hdrs["Authorization"] = self._basic
        else:
            refused = "credentials were refused" if "Authorization" in hdrs else "credentials are needed"
            raise AuthError(f"{what}: HTTP 401, {refused}{_detail(body)}", status=401, body=body)

    async def _do(
        self, method: str, url: str, headers: dict[str, str], *, stream: bool, follow: bool
    ) -> httpx.Response:
        request = self._http.build_request(method, url, headers=headers)
        try:
            return await self._http.send(request, stream=stream, follow_redirects=follow)
        except httpx.TransportError as exc:
            host = request.url.netloc.decode("ascii", "replace")
            raise RegistryUnreachable(
                f"cannot reach registry {host}: {type(exc).__name__}: {exc or 'no detail'}", url=url
            ) from exc
        except httpx.TooManyRedirects as exc:
            raise RegistryError(f"{method} {url}: too many redirects", url=url) from exc

    async def _token(self, challenge: Challenge, key: tuple[str, str, str]) -> str:
        """A Bearer token for the challenge, from the cache or the realm (one fetch per key)."""
        lock = self._token_locks.setdefault(key, trio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires > time.monotonic():
                return cached.value
            token, ttl = await self._fetch_token(challenge)
            self._tokens[key] = _Token(token, time.monotonic() + max(ttl - 5.0, 1.0))
            return token

    def _signing_key(self) -> SigningKey | None:
        if self._key is None and self._key_path is not None and self._key_path.exists():
            self._key = load_signing_key(self._key_path)
        return self._key

    async def _fetch_token(self, challenge: Challenge) -> tuple[str, float]:
        realm = httpx.URL(challenge.realm)
        if realm.scheme not in ("http", "https"):
            raise AuthError(f"bad token realm {challenge.realm!r}")
        if realm.scheme == "http" and not self.insecure:
            raise InsecureRefused(f"refusing token realm over http ({challenge.realm}) without insecure=True")
        key = self._signing_key()
        url = token_url(challenge, signed=key is not None)
        url = str(httpx.URL(url))  # what is sent is what is signed
        headers: dict[str, str] = {}
        if key is not None:
            headers["Authorization"] = key.authorization("GET", url)
        elif self._basic:
            headers["Authorization"] = self._basic
        resp = await self._do("GET", url, headers, stream=True, follow=False)
        try:
            body = await self._read_capped(resp, MAX_ERROR_BODY)
        finally:
            await resp.aclose()
        if resp.status_code in (401, 403):
            raise AuthError(
                f"token request to {realm.host} refused: HTTP {resp.status_code}{_detail(body)}",
                status=resp.status_code,
                body=body,
            )
        if resp.status_code >= 400:
            raise RegistryError(
                f"token request to {realm.host}: HTTP {resp.status_code}{_detail(body)}",
                status=resp.status_code,
                body=body,
                url=url,
            )
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        token = None
        if isinstance(doc, dict):
            token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"token request to {realm.host}: no token in the answer")
        ttl = DEFAULT_TOKEN_TTL
        if isinstance(doc.get("expires_in"), (int, float)) and doc["expires_in"] > 0:
            ttl = float(doc["expires_in"])
        log.debug("got a registry token from %s for %r", realm.host, challenge.scope)
        return token, ttl

    @staticmethod
    async def _read_capped(resp: httpx.Response, cap: int) -> bytes:
        """Read at most ``cap`` bytes of a body; transport failures become TransferError."""
        chunks: list[bytes] = []
        size = 0
        it = resp.aiter_bytes()
        try:
            async for chunk in it:
                chunks.append(chunk)
                size += len(chunk)
                if size >= cap:
                    break
        except httpx.TransportError as exc:
            raise TransferError(
                f"{resp.url}: body broke off: {type(exc).__name__}: {exc}", url=str(resp.url)
            ) from exc
        except httpx.DecodingError as exc:
            raise TransferError(f"{resp.url}: undecodable body: {exc}", url=str(resp.url)) from exc
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        return b"".join(chunks)[:cap]

    async def _raise_for_status(self, resp: httpx.Response, what: str) -> None:
        """Raise the error a status >= 400 stands for (the response stays open)."""
        url = str(resp.request.url)
        status = resp.status_code
        if resp.request.method == "HEAD":
            body = b""
        else:
            body = await self._read_capped(resp, MAX_ERROR_BODY)
        if status == 404:
            raise RegistryNotFound(f"{what} not found ({url}){_detail(body)}", url=url)
        if status in (401, 403):
            raise AuthError(f"{what}: access denied, HTTP {status}{_detail(body)}", status=status, body=body)
        raise RegistryError(f"{what}: HTTP {status} from {url}{_detail(body)}", status=status, body=body, url=url)

    async def send(
        self,
        method: str,
        url: str,
        *,
        repo: str,
        what: str,
        ok: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        content: bytes | Callable[[], AsyncIterable[bytes]] | None = None,
        authenticate: bool = True,
    ) -> httpx.Response:
        """One request of the write side of the protocol (uploads, manifest PUT), with a body.

        Credentials as for every other request (cached Bearer token or Basic; on a 401 the
        challenge is answered and the request sent once more).  ``content`` is bytes or a
        factory of a fresh async iterable of bytes per attempt (so a 401 can replay a streamed
        body; set Content-Length in ``headers`` then).  Redirects are not followed.  The response
        body is read (capped) and the response closed before it is returned; a status not in
        ``ok`` raises the error it stands for (404 RegistryNotFound, 401/403 AuthError, else
        RegistryError) with ``what`` in the message; no answer raises RegistryUnreachable.
        """
        hdrs = dict(headers or {})
        auth_key = (_origin(httpx.URL(url)), repo)
        sent = self._credentials(auth_key, hdrs) if authenticate else None

        async def attempt() -> httpx.Response:
            body = content() if callable(content) else content
            request = self._http.build_request(method, url, headers=hdrs, content=body)
            try:
                return await self._http.send(request, stream=True, follow_redirects=False)
            except httpx.TransportError as exc:
                host = request.url.netloc.decode("ascii", "replace")
                raise RegistryUnreachable(
                    f"{what}: {method} to registry {host} failed: {type(exc).__name__}: {exc or 'no detail'}",
                    url=url,
                ) from exc

        resp = await attempt()
        if resp.status_code == 401 and authenticate:
            await self._answer_challenge(resp, hdrs, sent, auth_key, f"{what}: {method} {url}")
            resp = await attempt()
            if resp.status_code == 401:
                body = await self._read_capped(resp, MAX_ERROR_BODY)
                await resp.aclose()
                raise AuthError(
                    f"{what}: {method} {url}: HTTP 401 after authenticating{_detail(body)}", status=401, body=body
                )
        try:
            if resp.status_code not in ok:
                await self._raise_for_status(resp, what)
            await self._read_capped(resp, MAX_ERROR_BODY)
        finally:
            await resp.aclose()
        return resp


def _parse_content_range(value: str, url: str) -> tuple[int, int, int | None]:
    """``bytes first-last/total`` (total may be ``*``)."""
    try:
        unit, _, rest = value.strip().partition(" ")
        span, _, total = rest.partition("/")
        first, _, last = span.partition("-")
        if unit.lower() != "bytes":
            raise ValueError(unit)
        f, l_ = int(first), int(last)
        t = None if total.strip() == "*" else int(total)
        if f < 0 or l_ < f:
            raise ValueError(span)
        return f, l_, t
    except ValueError:
        raise TransferError(f"GET {url}: bad Content-Range {value!r}", url=url) from None


def _detail(body: bytes) -> str:
    """``": <message>"`` from an OCI error body (``{"errors":[{"code","message"}]}``) or raw text."""
    if not body:
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        msgs = []
        for e in doc["errors"]:
            if isinstance(e, dict):
                code, msg = e.get("code", ""), e.get("message", "")
                msgs.append(f"{code}: {msg}" if code and msg else str(code or msg))
        if msgs:
            return ": " + "; ".join(msgs)
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return ": " + doc["error"]
    text = body.decode("utf-8", "replace").strip()
    if len(text) > 500:
        text = text[:500] + "…"
    return f": {text}" if text else ""
