"""Models that are not local yet: manifests fetched on lookup, blobs pulled on read.

:class:`PullManager` joins the store and the registry: it fetches and caches remote manifests
(one request per name at a time), pulls blobs with the registry's :class:`BlobPuller` as jobs of
its own nursery (so a reader that goes away does not abandon a download other readers wait
for), and commits a model to the store once every layer is local and verified: the blobs
first, then the manifest (re-encoded as Ollama writes it), then the blobs of the manifest it
replaced that nothing references any more are pruned (unless ``OLLAMA_NOPRUNE``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .errors import ManifestError, OllamaFSError
from .gguf_meta import TruncatedGGUF, parse_metadata
from .names import Digest, ModelName
from .registry import BlobPuller, PullProgress, RegistryClient
from .store import ModelRecord, Store
from .store import manifest as mf
from .store.ingest import write_manifest
from .store.manifest import Manifest, parse_manifest
from .store.prune import noprune, remove_unreferenced

log = logging.getLogger(__name__)

MANIFEST_TTL = 300.0  # how long a fetched remote manifest is shown without asking again
HEADER_PROBE = (4 << 20, 64 << 20)  # bytes of a GGUF fetched to read its header (first, max)


@dataclass
class _Job:
    name: ModelName
    digest: Digest
    size: int
    done: trio.Event = field(default_factory=trio.Event)
    ready: trio.Event = field(default_factory=trio.Event)  # the bytes checked out, or the job ended
    # the models to commit once the blob is stored, by (name, manifest digest)
    records: dict[tuple[ModelName, Digest], ModelRecord] = field(default_factory=dict)
    error: OllamaFSError | None = None
    progress: PullProgress | None = None
    started: float = field(default_factory=time.time)

    async def outcome(self) -> None:
        """Wait for the job to end; raise its error if it failed."""
        await self.done.wait()
        if self.error is not None:
            raise self.error


class PullManager:
    """Remote manifests and blob pulls for one store; see the module text."""

    def __init__(self, store: Store, client: RegistryClient, puller: BlobPuller, *, scheme: str | None = None) -> None:
        self.store = store
        self.client = client
        self.puller = puller
        self.scheme = scheme
        self._nursery: trio.Nursery | None = None
        self._remotes: dict[ModelName, tuple[float, ModelRecord]] = {}
        self._fetching: dict[ModelName, trio.Event] = {}
        self._jobs: dict[Digest, _Job] = {}
        self._headers: dict[Digest, dict] = {}
        self.version = 0  # changes whenever the set of remote models does

    def attach(self, nursery: trio.Nursery) -> None:
        """Run pulls as background jobs of ``nursery`` (the mount's); without it they run inline."""
        self._nursery = nursery

    # ---- manifests ---------------------------------------------------------------------
    def cached_remote(self, name: ModelName) -> ModelRecord | None:
        hit = self._remotes.get(name)
        if hit is None or time.monotonic() - hit[0] > MANIFEST_TTL:
            return None
        return hit[1]

    def remotes(self) -> list[ModelRecord]:
        """Remote models looked up recently (shown in listings beside the local ones)."""
        now = time.monotonic()
        return [rec for at, rec in self._remotes.values() if now - at <= MANIFEST_TTL]

    async def remote(self, name: ModelName) -> ModelRecord:
        """The registry's manifest of ``name`` (cached); RegistryNotFound (ENOENT) if none."""
        while True:
            hit = self.cached_remote(name)
            if hit is not None:
                return hit
            pending = self._fetching.get(name)
            if pending is None:
                break
            await pending.wait()
            if name not in self._remotes:
                break  # that fetch failed; try ourselves
        event = self._fetching[name] = trio.Event()
        try:
            raw, _doc = await self.client.get_manifest(name, scheme=self.scheme)
            try:
                manifest = parse_manifest(raw)
            except ManifestError as exc:
                raise ManifestError(f"registry {name.host} sent an unusable manifest for {name}: {exc}") from None
            record = ModelRecord(name, self.store.manifest_path(name), manifest, time.time_ns(), remote=raw)
            self._remotes[name] = (time.monotonic(), record)
            self.version += 1
            log.info("fetched manifest of %s from %s (%d layers, %d bytes)", name, name.host,
                     len(manifest.layers), manifest.total_size)
            return record
        finally:
            del self._fetching[name]
            event.set()

    # ---- blobs -------------------------------------------------------------------------
    async def ensure_blob(self, name: ModelName, digest: Digest, size: int) -> None:
        """Make the blob local and verified, pulling it if needed; readers wait for it."""
        if self.store.blob_size(digest) == size:
            return
        await (await self._start(name, digest, size)).outcome()

    async def open_verified(self, record: ModelRecord, digest: Digest, size: int) -> tuple[int, _Job] | None:
        """Like :meth:`ensure_blob`, but return as soon as the blob's bytes are verified.

        While the puller still makes the blob durable (fsync, rename), the result is a new
        read-only descriptor on those verified bytes, which the caller owns, and the pull job,
        for :meth:`stored`; the job goes on to store the blob and to commit ``record`` if that
        completes it.  None: the blob is in the store.
        """
        if self.store.blob_size(digest) == size:
            return None
        job = await self._start(record.name, digest, size)
        job.records[(record.name, record.manifest.digest)] = record
        await job.ready.wait()
        if not job.done.is_set():
            fd = self.puller.open_verified(digest)
            if fd is not None:
                return fd, job
        await job.outcome()
        return None

    async def stored(self, job: _Job, record: ModelRecord | None = None) -> None:
        """Wait until the pull ``job`` (from :meth:`open_verified`) has stored its blob, raise
        its error if it failed, then commit ``record``'s manifest if that completed the model."""
        await job.outcome()
        if record is not None:
            await self.commit_if_complete(record)

    async def _start(self, name: ModelName, digest: Digest, size: int) -> _Job:
        """The job pulling ``digest``, started if there is none: in the mount's nursery, or
        (without one: the command line) here, to the end."""
        job = self._jobs.get(digest)
        if job is None:
            job = self._jobs[digest] = _Job(name, digest, size)
            if self._nursery is not None:
                self._nursery.start_soon(self._run_job, job)
            else:
                await self._run_job(job)
        return job

    async def _run_job(self, job: _Job) -> None:
        def progress(p: PullProgress) -> None:
            job.progress = p
            if p.state == "storing":
                job.ready.set()

        try:
            await self.puller.pull(job.name, job.digest, size=job.size, scheme=self.scheme, progress=progress)
            for record in job.records.values():  # readers that did not wait for the store
                try:
                    await self.commit_if_complete(record)
                except OllamaFSError as exc:
                    log.error("storing the manifest of %s failed: %s", record.name, exc)
        except OllamaFSError as exc:
            log.error("pull of blob %s of %s failed: %s", job.digest, job.name, exc)
            job.error = exc
        except Exception as exc:  # a bug: fail this pull, keep the mount alive
            log.exception("pull of blob %s of %s failed unexpectedly", job.digest, job.name)
            job.error = OllamaFSError(f"pull of blob {job.digest} failed: {type(exc).__name__}: {exc}")
        finally:
            del self._jobs[job.digest]
            job.ready.set()
            job.done.set()

    def in_use(self) -> set[Digest]:
        return set(self._jobs) | set(self.puller.in_flight())

    def progress(self) -> list[tuple[ModelName, Digest, PullProgress | None, int]]:
        return [(job.name, job.digest, job.progress, job.size) for job in self._jobs.values()]

    async def ensure_text_layers(self, record: ModelRecord) -> None:
        """Pull the small layers a Modelfile needs (template, system, params, ...)."""
        async with trio.open_nursery() as nursery:
            for layer in record.manifest.layers:
                if layer.kind not in (mf.MODEL, mf.ADAPTER, mf.PROJECTOR, None):
                    nursery.start_soon(self.ensure_blob, record.name, layer.digest, layer.size)

    async def gguf_header(self, record: ModelRecord, layer: mf.Layer) -> dict:
        """GGUF metadata of a layer not yet local, from a ranged read of its first bytes.

        These bytes are used for metadata only and never served or stored.
        """
        hit = self._headers.get(layer.digest)
        if hit is not None:
            return hit
        want = HEADER_PROBE[0]
        while True:
            end = min(want, layer.size)
            async with self.client.stream_blob(record.name, layer.digest, 0, end, scheme=self.scheme) as body:
                data = b"".join([chunk async for chunk in body])
            try:
                meta = parse_metadata(data)
                break
            except TruncatedGGUF:
                if end >= layer.size or want >= HEADER_PROBE[1]:
                    raise
                want *= 4
        self._headers[layer.digest] = meta
        return meta

    # ---- whole models ------------------------------------------------------------------
    async def commit_if_complete(self, record: ModelRecord) -> bool:
        """Write the manifest of a remote model once all its blobs are local; prune the old one."""
        if record.remote is None:
            return False
        for layer in record.manifest.all_blobs():
            if self.store.blob_size(layer.digest) != layer.size:
                return False
        await trio.to_thread.run_sync(self._commit, record)
        self._remotes.pop(record.name, None)
        self.version += 1
        return True

    def _commit(self, record: ModelRecord) -> None:
        old = self.store.list(max_age=0).get(record.name)
        data = record.manifest.to_json_bytes()
        if old is not None and old.manifest.digest == parse_manifest(data).digest:
            return
        write_manifest(self.store, record.name, data)
        log.info("pulled %s: all layers verified, manifest written", record.name)
        if old is not None and not noprune():
            new = {layer.digest for layer in record.manifest.all_blobs()}
            stale = [layer.digest for layer in old.manifest.all_blobs() if layer.digest not in new]
            remove_unreferenced(self.store, stale, self.in_use())

    async def push_model(self, name: ModelName) -> Digest:
        """``ollama push`` of a local model (the file-based push: setfattr user.ollama.push)."""
        from .registry.pusher import push_model

        digest = await push_model(self.client, self.store, name, scheme=self.scheme)
        log.info("pushed %s to %s (manifest %s)", name, name.host, digest)
        return digest

    async def pull_model(self, name: ModelName, on_progress: Callable[[int, int], None] | None = None) -> Manifest:
        """``ollama pull``: fetch the manifest, pull every blob, commit.  Returns the manifest."""
        self._remotes.pop(name, None)
        record = await self.remote(name)
        blobs = record.manifest.all_blobs()
        total = sum(layer.size for layer in blobs)

        async def report() -> None:
            while on_progress is not None:
                done = 0
                for layer in blobs:
                    size = self.store.blob_size(layer.digest)
                    job = self._jobs.get(layer.digest)
                    if size == layer.size:
                        done += layer.size
                    elif job is not None and job.progress is not None:
                        done += job.progress.completed
                on_progress(done, total)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            async with trio.open_nursery() as pulls:
                for layer in blobs:
                    pulls.start_soon(self.ensure_blob, name, layer.digest, layer.size)
            nursery.cancel_scope.cancel()
        if on_progress is not None:
            on_progress(total, total)
        await self.commit_if_complete(record)
        return record.manifest

