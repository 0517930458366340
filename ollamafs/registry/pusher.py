"""Push a local model to a registry the way Ollama does (OCI distribution v2).

For every layer and then the config of the model's local manifest (each digest once):

1. ``HEAD /v2/<ns>/<model>/blobs/<digest>``: 200 (or a redirect) means the repository has the
   blob already; it is skipped.
2. A layer with ``from`` (the name of the model it came from, as Ollama records it) is offered as
   a cross-repository mount: ``POST .../blobs/uploads/?mount=<digest>&from=<ns>/<model>``.  201
   means mounted; 202 opens an ordinary upload session, used below.
3. Otherwise ``POST .../blobs/uploads/`` opens an upload session (202).
4. The blob goes up in ``chunk_size`` pieces: ``PATCH <location>`` with ``Content-Range:
   <first>-<last>`` (inclusive, no unit: the form distribution and Ollama use),
   ``Content-Type: application/octet-stream`` and a Content-Length.  Each answer names where the
   next request goes (``Docker-Upload-Location``, else ``Location``; distribution encodes the
   offset in an opaque ``_state`` query and refuses an old one), and its ``Range: 0-<last>`` must
   end where the piece ended (distribution 2.8 ignores Content-Range and simply appends, so this
   is the only check that the registry holds what was sent).
5. ``PUT <location>&digest=<digest>`` with an empty body ends the upload (201); the registry
   verifies the digest (a refusal, ``DIGEST_INVALID``, becomes :class:`IntegrityError`).

Then ``PUT /v2/<ns>/<model>/manifests/<tag>`` with the local manifest's exact bytes, so the
registry's digest is the local ID.

The blob is read from disk in worker threads, ``read_size`` bytes at a time, while the request
body streams: memory stays near ``read_size`` whatever ``chunk_size`` is.  Every local blob is
checked (present, right size) before the first request.  Nothing is retried (except the one
authenticated retry of a 401, which the client does): a failure ends the push with the
registry's error, after a best-effort ``DELETE`` of the open upload session.  Credentials go only
to the registry's own origin (an upload Location on another origin is sent none), and an http
Location from an https registry is refused.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import trio

from ..errors import IntegrityError, InvalidDigest, InvalidName, MissingBlob, OllamaFSError
from ..names import Digest, ModelName, parse_with_scheme
from ..store.manifest import MANIFEST_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, Layer, parse_manifest
from ..store.store import Store
from .client import RegistryClient
from .errors import InsecureRefused, RegistryError, RegistryNotFound, RegistryUnreachable

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 << 20  # bytes per PATCH
READ_SIZE = 1 << 20  # bytes per read of the local blob (what one body piece holds)
OCTET_STREAM = "application/octet-stream"
CLEANUP_TIMEOUT = 5.0  # seconds for the DELETE of an abandoned upload session

_SUCCESS = tuple(range(200, 300))
_REDIRECTS = (301, 302, 303, 307, 308)
_RANGE_RE = re.compile(r"(?:bytes=)?0-(\d+)")


@dataclass(frozen=True, slots=True)
class PushProgress:
    """A snapshot of a push, handed to progress callbacks.

    Per blob, ``state`` goes ``"checking"``, then ``"exists"`` (the registry had it),
    ``"mounted"`` (cross-repository mount) or ``"uploading"`` (``completed`` counting bytes of
    ``total`` sent) and ``"done"``.  Then one ``"manifest"`` (``digest`` None, ``total`` the
    manifest's size) and a last ``"done"`` whose ``digest`` is the manifest digest.
    """

    digest: Digest | None
    total: int
    completed: int
    state: str


ProgressCallback = Callable[[PushProgress], None]


class BlobReadError(OllamaFSError):
    """Reading a local blob for a push failed (an I/O error, permissions)."""


class _Reporter:
    """Progress for one blob; ``"uploading"`` snapshots are throttled to one per ``interval``."""

    def __init__(self, callback: ProgressCallback | None, digest: Digest | None, total: int, interval: float) -> None:
        self.callback = callback
        self.digest = digest
        self.total = total
        self.interval = interval
        self._last = -1e9

    def __call__(self, state: str, completed: int, *, digest: Digest | None = None) -> None:
        if self.callback is None:
            return
        if state == "uploading" and completed < self.total:
            now = trio.current_time()
            if now - self._last < self.interval:
                return
            self._last = now
        try:
            self.callback(PushProgress(digest or self.digest, self.total, completed, state))
        except Exception:  # a broken callback must not break the push
            log.exception("push progress callback failed")


class _BlobSlice:
    """Bytes ``[start, end)`` of an open blob as an async iterator of pieces read in a thread.

    A class, not an async generator: httpx may stop iterating early (an early answer), and a
    suspended generator would be left to the garbage collector.
    """

    def __init__(
        self, fd: int, digest: Digest, start: int, end: int, piece: int, on_read: Callable[[int], None]
    ) -> None:
        self.fd = fd
        self.digest = digest
        self.pos = start
        self.end = end
        self.piece = piece
        self.on_read = on_read

    def __aiter__(self) -> _BlobSlice:
        return self

    async def __anext__(self) -> bytes:
        if self.pos >= self.end:
            raise StopAsyncIteration
        n = min(self.piece, self.end - self.pos)
        try:
            data = await trio.to_thread.run_sync(os.pread, self.fd, n, self.pos)
        except OSError as exc:
            raise BlobReadError(
                f"reading blob {self.digest} at offset {self.pos}: {exc.strerror or exc}", err=exc.errno
            ) from exc
        if len(data) != n:
            raise IntegrityError(f"blob {self.digest} shrank while it was pushed (short read at offset {self.pos})")
        self.pos += n
        self.on_read(self.pos)
        return data


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def mount_source(from_: str | None) -> str | None:
    """The repository (``namespace/model``) a layer's ``from`` names, as Ollama reads it."""
    if not from_:
        return None
    try:
        name, _ = parse_with_scheme(from_)
    except InvalidName:
        log.debug("layer source %r is not a model name; no cross-repository mount", from_)
        return None
    return RegistryClient.repository(name)


class BlobPusher:
    """Pushes models of one local store to registries; see the module text."""

    def __init__(
        self,
        client: RegistryClient,
        store: Store,
        *,
        chunk_size: int = CHUNK_SIZE,
        read_size: int = READ_SIZE,
        progress_interval: float = 0.1,
    ) -> None:
        if chunk_size < 1 or read_size < 1:
            raise ValueError("chunk_size and read_size must be positive")
        self.client = client
        self.store = store
        self.chunk_size = chunk_size
        self.read_size = min(read_size, chunk_size)
        self.progress_interval = progress_interval

    # -- public API ------------------------------------------------------------------------

    async def push(
        self, name: ModelName, *, scheme: str | None = None, progress: ProgressCallback | None = None
    ) -> Digest:
        """Upload the local model ``name`` to its registry; return the manifest digest.

        Raises :class:`~ollamafs.errors.NotFound` (no such local model),
        :class:`~ollamafs.errors.MissingBlob` (a blob it names is not in the store),
        :class:`IntegrityError`, or the client's errors (:class:`RegistryUnreachable`,
        :class:`AuthError`, :class:`InsecureRefused`, :class:`RegistryError`).
        """
        record = await trio.to_thread.run_sync(self.store.get, name)
        data = await trio.to_thread.run_sync(self.store.read_manifest_bytes, record)
        manifest = parse_manifest(data)
        blobs: list[Layer] = []
        seen: set[Digest] = set()
        for layer in (*manifest.layers, manifest.config):  # Ollama sends the config last
            if layer.digest not in seen:
                seen.add(layer.digest)
                blobs.append(layer)
        await trio.to_thread.run_sync(self._check_local, name, blobs)
        self.client.scheme_for(name, scheme)  # the scheme policy, before any request
        for layer in blobs:
            await self.push_blob(name, layer, scheme=scheme, progress=progress)
        report = _Reporter(progress, None, len(data), self.progress_interval)
        report("manifest", 0)
        digest = await self.push_manifest(name, data, media_type=manifest.media_type, scheme=scheme)
        report("done", len(data), digest=digest)
        log.info("pushed %s (%s, %d blobs)", name, digest.short, len(blobs))
        return digest

    async def push_blob(
        self, name: ModelName, layer: Layer, *, scheme: str | None = None, progress: ProgressCallback | None = None
    ) -> str:
        """Make ``name``'s repository hold ``layer``'s blob: ``"exists"``, ``"mounted"`` or ``"uploaded"``."""
        digest = layer.digest
        repo = self.client.repository(name)
        report = _Reporter(progress, digest, layer.size, self.progress_interval)
        report("checking", 0)
        resp = await self.client.send(
            "HEAD",
            self.client.blob_url(name, digest, scheme),
            repo=repo,
            what=f"blob {digest.short} of {name}",
            ok=(200, 404, *_REDIRECTS),
        )
        if resp.status_code != 404:
            log.debug("%s already has blob %s", repo, digest.short)
            report("exists", layer.size)
            return "exists"

        uploads = f"{self.client.base_url(name, scheme)}/v2/{repo}/blobs/uploads/"
        what = f"upload of blob {digest.short} to {repo}"
        source = mount_source(layer.from_)
        session: httpx.Response | None = None
        if source is not None and source.lower() != repo.lower():
            try:
                session = await self.client.send(
                    "POST", f"{uploads}?mount={digest}&from={source}", repo=repo, what=what, ok=(201, 202)
                )
            except RegistryNotFound as exc:
                log.debug("mounting %s from %s: %s; uploading it", digest.short, source, exc)
            else:
                if session.status_code == 201:
                    log.debug("mounted blob %s into %s from %s", digest.short, repo, source)
                    report("mounted", layer.size)
                    return "mounted"
                log.debug("registry did not mount %s from %s; uploading it", digest.short, source)
        if session is None:
            session = await self.client.send("POST", uploads, repo=repo, what=what, ok=(202,))
        location = self._next_location(session, uploads, name, scheme, what)
        await self._upload(name, layer, location, scheme, report)
        report("done", layer.size)
        return "uploaded"

    async def push_manifest(
        self, name: ModelName, data: bytes, *, media_type: str = MANIFEST_MEDIA_TYPE, scheme: str | None = None
    ) -> Digest:
        """``PUT`` manifest bytes as ``name``'s tag; the digest the registry reports (or sha256 of the bytes)."""
        if media_type not in (MANIFEST_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE):
            media_type = MANIFEST_MEDIA_TYPE
        resp = await self.client.send(
            "PUT",
            self.client.manifest_url(name, scheme),
            repo=self.client.repository(name),
            what=f"manifest of {name}",
            ok=_SUCCESS,
            headers={"Content-Type": media_type},
            content=data,
        )
        local = parse_manifest(data).digest
        reported = resp.headers.get("docker-content-digest")
        if reported:
            try:
                remote = Digest.parse(reported)
            except InvalidDigest:
                log.debug("manifest digest %r from the registry is not sha256; using the local one", reported)
            else:
                if remote != local:
                    log.debug("registry reports manifest %s, local bytes hash to %s", remote, local)
                return remote
        return local

    # -- the upload ------------------------------------------------------------------------

    def _check_local(self, name: ModelName, blobs: list[Layer]) -> None:
        for layer in blobs:
            size = self.store.blob_size(layer.digest)
            if size is None:
                raise MissingBlob(
                    f"cannot push {name}: blob {layer.digest} is missing from the store "
                    f"({self.store.blob_path(layer.digest)})"
                )
            if size != layer.size:
                raise IntegrityError(
                    f"cannot push {name}: blob {layer.digest} is {size} bytes on disk, the manifest says {layer.size}"
                )

    async def _upload(
        self, name: ModelName, layer: Layer, location: str, scheme: str | None, report: _Reporter
    ) -> None:
        digest = layer.digest
        repo = self.client.repository(name)
        fd: int | None = None
        try:
            fd = await trio.to_thread.run_sync(self.store.open_blob, digest)
            offset = 0
            while offset < layer.size:
                end = min(offset + self.chunk_size, layer.size)
                location = await self._patch(name, layer, fd, location, offset, end, scheme, report)
                offset = end
            await self._finish(name, layer, location, scheme)
        except RegistryUnreachable:
            raise  # nobody to tell
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._abandon(repo, location, name, scheme)
            raise
        finally:
            if fd is not None:
                os.close(fd)
        log.debug("uploaded blob %s (%d bytes) to %s", digest.short, layer.size, repo)

    async def _patch(
        self,
        name: ModelName,
        layer: Layer,
        fd: int,
        url: str,
        start: int,
        end: int,
        scheme: str | None,
        report: _Reporter,
    ) -> str:
        """Send bytes ``[start, end)``; return the Location for the next request."""
        digest = layer.digest
        repo = self.client.repository(name)
        what = f"upload of blob {digest.short} to {repo} (bytes {start}-{end - 1})"

        def body() -> _BlobSlice:
            return _BlobSlice(fd, digest, start, end, self.read_size, lambda pos: report("uploading", pos))

        try:
            resp = await self.client.send(
                "PATCH",
                url,
                repo=repo,
                what=what,
                ok=_SUCCESS,
                headers={
                    "Content-Type": OCTET_STREAM,
                    "Content-Range": f"{start}-{end - 1}",
                    "Content-Length": str(end - start),
                },
                content=body,
                authenticate=self._same_origin(name, url, scheme),
            )
        except RegistryNotFound as exc:
            raise RegistryError(f"{what}: the registry lost the upload session: {exc}", status=404, url=url) from exc
        stored = resp.headers.get("range")
        if stored is not None:
            m = _RANGE_RE.fullmatch(stored.strip())
            if m is None or int(m.group(1)) != end - 1:
                raise RegistryError(
                    f"{what}: the registry holds bytes {stored!r} of the upload, not 0-{end - 1}", url=url
                )
        return self._next_location(resp, url, name, scheme, what)

    async def _finish(self, name: ModelName, layer: Layer, url: str, scheme: str | None) -> None:
        digest = layer.digest
        repo = self.client.repository(name)
        what = f"upload of blob {digest.short} to {repo}"
        target = f"{url}{'&' if '?' in url else '?'}digest={digest}"
        try:
            resp = await self.client.send(
                "PUT",
                target,
                repo=repo,
                what=what,
                ok=_SUCCESS,
                headers={"Content-Type": OCTET_STREAM, "Content-Length": "0"},
                content=b"",
                authenticate=self._same_origin(name, url, scheme),
            )
        except RegistryNotFound as exc:
            raise RegistryError(f"{what}: the registry lost the upload session: {exc}", status=404, url=url) from exc
        except RegistryError as exc:
            if exc.status == 400 and b"DIGEST_INVALID" in exc.body:
                path = self.store.blob_path(digest)
                log.error("registry refused blob %s: the bytes sent from %s do not hash to it", digest, path)
                raise IntegrityError(
                    f"{what}: the registry says the bytes sent do not match {digest}; is {path} corrupt?"
                ) from exc
            raise
        reported = resp.headers.get("docker-content-digest")
        if reported:
            try:
                ok = Digest.parse(reported) == digest
            except InvalidDigest:
                ok = True  # another algorithm: nothing to compare
            if not ok:
                raise RegistryError(f"{what}: the registry stored it as {reported}", url=url)

    async def _abandon(self, repo: str, url: str, name: ModelName, scheme: str | None) -> None:
        """Best effort: ``DELETE`` the upload session so the registry frees its partial data."""
        with trio.move_on_after(CLEANUP_TIMEOUT):
            try:
                await self.client.send(
                    "DELETE",
                    url,
                    repo=repo,
                    what="cancelling an upload",
                    ok=(*_SUCCESS, 404),
                    authenticate=self._same_origin(name, url, scheme),
                )
            except OllamaFSError as exc:
                log.debug("could not cancel upload session %s: %s", url, exc)

    # -- URLs ------------------------------------------------------------------------------

    def _same_origin(self, name: ModelName, url: str, scheme: str | None) -> bool:
        return _origin(httpx.URL(url)) == _origin(httpx.URL(self.client.base_url(name, scheme)))

    def _next_location(
        self, resp: httpx.Response, current: str, name: ModelName, scheme: str | None, what: str
    ) -> str:
        location = resp.headers.get("docker-upload-location") or resp.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: HTTP {resp.status_code} without a Location", status=resp.status_code)
        target = httpx.URL(current).join(location)
        if target.scheme not in ("http", "https"):
            raise RegistryError(f"{what}: unusable upload Location {location!r}")
        if target.scheme == "http" and not self.client.insecure:
            raise InsecureRefused(f"{what}: refusing the http upload Location {target} of an https registry")
        return str(target)


async def push_model(
    client: RegistryClient,
    store: Store,
    name: ModelName,
    *,
    scheme: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: ProgressCallback | None = None,
) -> Digest:
    """Push the local model ``name`` to its registry (see :class:`BlobPusher`); the manifest digest."""
    return await BlobPusher(client, store, chunk_size=chunk_size).push(name, scheme=scheme, progress=progress)
