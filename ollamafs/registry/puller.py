"""Download one blob into ``blobs/`` the way Ollama does, resumably, and verify it.

Files, all in the blobs directory (Ollama's partial format, so either program can resume the
other's download)::

    sha256-<hex>-partial      the data, truncated to the blob's size up front (sparse)
    sha256-<hex>-partial-<N>  one JSON object per part, as Go's encoder writes
                              Ollama's ``blobDownloadPart``:
                              {"N":0,"Offset":0,"Size":1048576,"Completed":65536}\\n
    sha256-<hex>              the verified blob, renamed into place at the very end

A part's JSON is only ever updated *after* the bytes it counts were written to the data file, so
after a crash (SIGKILL included) a resumed part re-fetches at most what its JSON does not cover.
JSON updates are atomic (a hidden temporary file, then ``os.replace``).

The blob is cut into parts of ``total / parts`` bytes clamped to ``[min_part_size,
max_part_size]`` (Ollama: 16 parts, 100 MB..1000 MB); up to ``concurrency`` parts download at
once as ranged GETs against a URL resolved once (redirects to a CDN are followed a single time).
A part that fails is retried with exponential backoff, up to ``max_retries`` attempts in all; a
part that receives nothing for ``stall_timeout`` seconds is restarted at once (a stall uses up an
attempt too, so a pull always ends).  Data is streamed to disk in ``write_size`` pieces from
worker threads (one ``pwritev`` of the received chunks, no copy): memory stays bounded by about
``concurrency * write_size``.

The file is hashed (sha256) in worker threads: the contiguous finished prefix while parts still
download (bytes below a part's completed mark are never written again), the rest once every part
is complete, and its size is checked; only a match is fsynced and renamed to its final name.  A
mismatch deletes the data and the part files, logs one ERROR with both digests and raises
:class:`DigestMismatch`; nothing unverified ever gets the final name.  Other failures leave the
partial files for the next pull to resume.

Downloads pause while more than ``hash_lead`` bytes of the finished prefix wait to be hashed: on
a link faster than sha256 (a LAN, loopback) the download threads would otherwise take the CPU
and leave most of the hashing for after the last byte, with one core idle.

Between the match and the rename (the fsync of a large file takes a while) the verified bytes can
already be read: progress reports the state ``storing`` then, and
:meth:`BlobPuller.open_verified` opens them.  The store itself only gets the blob, under its
final name, once it is durable.

One download per digest at a time: a second ``pull`` of a digest already in flight waits for the
first one and shares its outcome (if the first caller is cancelled, a waiter takes over).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import hashlib
import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import trio

from ..errors import NotFound, OllamaFSError
from ..names import Digest, ModelName
from .client import RegistryClient
from .errors import (
    AuthError,
    BlobWriteError,
    DigestMismatch,
    DownloadFailed,
    RegistryError,
    RegistryNotFound,
    TransferError,
)

log = logging.getLogger(__name__)

MB = 1000 * 1000  # Ollama's format.MegaByte
PARTS = 16
MIN_PART_SIZE = 100 * MB
MAX_PART_SIZE = 1000 * MB
MAX_RETRIES = 6
STALL_TIMEOUT = 30.0
INITIAL_CONNECTIONS = 2
TOUCH_BYTES = 4 << 20  # a worker thread reports progress to trio every this many bytes
SLOW_RATE = 64 * MB  # bytes/s per connection below which more connections are opened
WRITE_SIZE = 1 << 20
HASH_CHUNK = 4 << 20
HASH_STEP = 64 << 20  # bytes hashed per worker-thread call while downloading
HASH_LEAD = 64 << 20  # how far ahead of the hasher a download may write
_MAX_IOV = 512  # well below IOV_MAX (1024 on Linux)

T = TypeVar("T")

# What the registry client raises; anything else (bugs, OSError) is not retried.
_REMOTE_ERRORS = (RegistryError, NotFound, AuthError)


@dataclass(slots=True)
class PartState:
    """One part of a download: bytes ``[offset, offset + size)``, ``completed`` of them on disk."""

    n: int
    offset: int
    size: int
    completed: int = 0

    @property
    def start(self) -> int:
        return self.offset + self.completed

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def done(self) -> bool:
        return self.completed >= self.size

    def to_json(self) -> bytes:
        """Exactly what Go's ``json.Encoder`` writes for Ollama's ``jsonBlobDownloadPart``."""
        doc = {"N": self.n, "Offset": self.offset, "Size": self.size, "Completed": self.completed}
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> PartState:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        vals = []
        for key in ("N", "Offset", "Size", "Completed"):
            v = doc.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"bad {key}: {v!r}")
            vals.append(v)
        n, offset, size, completed = vals
        if completed > size:
            raise ValueError(f"Completed {completed} > Size {size}")
        return cls(n, offset, size, completed)


@dataclass(frozen=True, slots=True)
class PullProgress:
    """A snapshot of one download, handed to progress callbacks.

    ``state`` is ``"downloading"``, ``"verifying"``, ``"storing"`` (verified; fsync and rename
    running), ``"done"`` or ``"failed"``; ``rate`` is the
    average bytes per second fetched in this session (resumed bytes do not count).
    """

    digest: Digest
    total: int | None
    completed: int
    rate: float
    state: str


ProgressCallback = Callable[[PullProgress], None]


class _Download:
    """The shared record of one in-flight download (single-flight per digest)."""

    def __init__(self, digest: Digest, report_interval: float) -> None:
        self.digest = digest
        self.done = trio.Event()
        self.error: BaseException | None = None
        self.abandoned = False  # the leader was cancelled: a waiter takes over
        self.callbacks: list[ProgressCallback] = []
        self.total: int | None = None
        self.completed = 0
        self.fetched = 0
        self.state = "downloading"
        self.progressed = trio.Event()  # set whenever some part's completed mark moves
        self.fd = -1  # the data file, while verified and not yet stored
        self.hasher: _PrefixHasher | None = None
        self.verified_at = 0.0
        self.started = trio.current_time()
        self._interval = report_interval
        self._last_report = -1e9

    def touch(self, n: int) -> None:
        """A worker thread wrote ``n`` more bytes of some part (called on the trio side)."""
        self.completed += n
        self.fetched += n
        self.progressed.set()
        self.report()

    def snapshot(self) -> PullProgress:
        elapsed = trio.current_time() - self.started
        rate = self.fetched / elapsed if elapsed > 0 else 0.0
        return PullProgress(self.digest, self.total, self.completed, rate, self.state)

    def report(self, state: str | None = None, *, force: bool = False) -> None:
        if state is not None:
            self.state = state
            force = True
        now = trio.current_time()
        if not force and now - self._last_report < self._interval:
            return
        self._last_report = now
        snap = self.snapshot()
        for cb in list(self.callbacks):
            try:
                cb(snap)
            except Exception:  # a broken callback must not break the download
                log.exception("progress callback failed for %s", self.digest.short)


class BlobPuller:
    """Pulls blobs from a registry into one Ollama ``blobs`` directory; see the module text."""

    def __init__(
        self,
        client: RegistryClient,
        blobs_dir: str | os.PathLike[str],
        *,
        parts: int = PARTS,
        min_part_size: int = MIN_PART_SIZE,
        max_part_size: int = MAX_PART_SIZE,
        concurrency: int | None = None,
        max_retries: int = MAX_RETRIES,
        stall_timeout: float = STALL_TIMEOUT,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        write_size: int = WRITE_SIZE,
        checkpoint_interval: float = 1.0,
        progress_interval: float = 0.1,
        io_threads: int = 8,
        hash_threads: int = 2,
        hash_lead: int = HASH_LEAD,
        raw_bodies: bool = True,
    ) -> None:
        if parts < 1 or min_part_size < 1 or max_part_size < min_part_size or max_retries < 1:
            raise ValueError("bad part or retry settings")
        self.client = client
        self.blobs_dir = Path(blobs_dir)
        self.parts = parts
        self.min_part_size = min_part_size
        self.max_part_size = max_part_size
        self.concurrency = concurrency or parts
        self.max_retries = max_retries
        self.stall_timeout = stall_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.write_size = write_size
        self.checkpoint_interval = checkpoint_interval
        self.progress_interval = progress_interval
        self.hash_lead = hash_lead
        self.raw_bodies = raw_bodies  # part bodies through .bodies (False: all through httpx)
        # Every connection holds a thread for its whole part; disk work needs some besides.
        self._io = trio.CapacityLimiter(max(io_threads, self.concurrency + 4))
        self._hash = trio.CapacityLimiter(hash_threads)
        self._inflight: dict[Digest, _Download] = {}

    # -- paths -----------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.filename

    def partial_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.partial_filename

    def part_path(self, digest: Digest, n: int) -> Path:
        return self.blobs_dir / f"{digest.partial_filename}-{n}"

    def _part_tmp_path(self, digest: Digest, n: int) -> Path:
        # Hidden, and not matching Ollama's "<blob>-partial-*" glob.
        return self.blobs_dir / f".{digest.partial_filename}-{n}.tmp"

    # -- public API ------------------------------------------------------------------------

    def progress(self, digest: Digest) -> PullProgress | None:
        """The state of the download of ``digest`` if one is in flight."""
        dl = self._inflight.get(digest)
        return dl.snapshot() if dl is not None else None

    def in_flight(self) -> list[Digest]:
        return list(self._inflight)

    def open_verified(self, digest: Digest) -> int | None:
        """A new read-only descriptor on a blob verified but still being stored (fsync, rename),
        or None.  It reads the same file, under whichever name it has by then."""
        dl = self._inflight.get(digest)
        if dl is None or dl.fd < 0:
            return None
        try:
            return os.open(f"/proc/self/fd/{dl.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no /proc: the same file, sharing its (unused) offset and O_RDWR mode
            return os.dup(dl.fd)

    async def pull(
        self,
        name: ModelName,
        digest: Digest,
        *,
        size: int | None = None,
        scheme: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Make ``blobs/sha256-<hex>`` exist and hold ``digest``'s bytes; return its path.

        ``size`` (from the manifest) saves a HEAD request and is checked as well.  An existing
        final blob is trusted.  Raises :class:`DigestMismatch`, :class:`DownloadFailed`, or the
        client's errors (:class:`RegistryNotFound`, :class:`AuthError`, ...).
        """
        final = self.blob_path(digest)
        while True:
            if final.exists():
                if progress is not None:
                    n = final.stat().st_size
                    progress(PullProgress(digest, n, n, 0.0, "done"))
                return final
            dl = self._inflight.get(digest)
            if dl is None:
                break
            if progress is not None:
                dl.callbacks.append(progress)
            try:
                await dl.done.wait()
            finally:
                if progress is not None and progress in dl.callbacks:
                    dl.callbacks.remove(progress)
            if dl.abandoned:
                continue
            if dl.error is not None:
                raise dl.error.with_traceback(None)
            return final

        dl = _Download(digest, self.progress_interval)
        if progress is not None:
            dl.callbacks.append(progress)
        self._inflight[digest] = dl
        try:
            try:
                await self._run(dl, name, digest, size, scheme)
            except OSError as exc:
                raise BlobWriteError(
                    f"pulling blob {digest.short} into {self.blobs_dir}: {exc.strerror or exc}", err=exc.errno
                ) from exc
        except OllamaFSError as exc:
            dl.error = exc
            dl.report("failed")
            raise
        except BaseException:
            dl.abandoned = True
            raise
        finally:
            del self._inflight[digest]
            dl.done.set()
        dl.report("done")
        return final

    # -- the download ----------------------------------------------------------------------

    async def _run(self, dl: _Download, name: ModelName, digest: Digest, size: int | None, scheme: str | None) -> None:
        parts, total = await self._thread(self._load_parts, digest, size)
        if parts is None:
            if size is None:
                size = await self._with_retries(
                    digest, "HEAD", lambda: self.client.blob_size(name, digest, scheme=scheme)
                )
            total = size
            parts = self._plan(total)
            await self._thread(self._start_fresh, digest, parts)
        else:
            done = sum(p.completed for p in parts)
            log.info("resuming %s: %d of %d bytes in %d parts already on disk", digest.short, done, total, len(parts))
        assert total is not None
        if size is not None and total != size:  # pragma: no cover - _load_parts discards that
            raise DownloadFailed(f"blob {digest.short}: partial state is for {total} bytes, not {size}")
        dl.total = total
        dl.completed = sum(p.completed for p in parts)
        dl.report(force=True)

        fd = await self._thread(self._open_data, digest, total)
        hasher = dl.hasher = _PrefixHasher(fd, parts)
        try:
            if not all(p.done for p in parts):
                if parts:
                    log.debug("downloading %s in %d part(s) of %d bytes", digest.short, len(parts), parts[0].size)
                url = await self._with_retries(
                    digest, "resolving", lambda: self.client.resolve_blob_url(name, digest, scheme=scheme)
                )
                await self._download_parts(dl, name, digest, fd, url, parts, hasher)
            t_downloaded = trio.current_time()
            hashed_ahead = hasher.pos
            dl.report("verifying")
            await self._verify_and_commit(dl, digest, fd, hasher, total, parts)
            t_end = trio.current_time()
            log.info(
                "pulled blob %s: %d bytes in %.2f s (downloaded at %.2f s, %d%% of it hashed by then; "
                "verified at %.2f s; stored at %.2f s)",
                digest.short, total, t_end - dl.started, t_downloaded - dl.started, 100 * hashed_ahead // max(total, 1),
                dl.verified_at - dl.started, t_end - dl.started,
            )
        finally:
            dl.fd = -1
            os.close(fd)

    def _plan(self, total: int) -> list[PartState]:
        """Ollama's split: ``total / parts`` clamped to the part size bounds."""
        size = min(max(total // self.parts, self.min_part_size), self.max_part_size)
        out: list[PartState] = []
        offset = 0
        while offset < total:
            n = min(size, total - offset)
            out.append(PartState(len(out), offset, n))
            offset += n
        return out

    async def _download_parts(
        self,
        dl: _Download,
        name: ModelName,
        digest: Digest,
        fd: int,
        url: str,
        parts: list[PartState],
        hasher: _PrefixHasher,
    ) -> None:
        failures: list[BaseException] = []
        # Start with few connections so parts finish roughly in offset order and the prefix
        # hasher keeps pace; add connections while each one is slow (a network-bound link,
        # where Ollama's 16 parallel parts pay off).  On a fast link two already saturate the
        # CPU, and more would only push hashing to the end.  Each connection takes the next
        # part in offset order from one queue (trio starts tasks in no set order, so one task
        # per part would not).
        queue = collections.deque(p for p in parts if not p.done)
        connections = 0

        async def connection(cancel: trio.CancelScope) -> None:
            while queue:
                part = queue.popleft()
                try:
                    await self._download_part(dl, name, digest, fd, url, part)
                except (OllamaFSError, OSError) as exc:
                    failures.append(exc)
                    cancel.cancel()
                    return

        async def scale(nursery: trio.Nursery) -> None:
            """Every second, add connections (up to ``concurrency``) while each is slow; never
            to a pull that failed or ended (its nursery is cancelled or closed)."""
            nonlocal connections
            last = dl.fetched
            while connections < self.concurrency and queue:
                await trio.sleep(1.0)
                if failures or nursery.cancel_scope.cancel_called:
                    return
                rate = (dl.fetched - last) / connections
                last = dl.fetched
                if rate < SLOW_RATE:
                    more = min(self.concurrency, connections * 2) - connections
                    for _ in range(min(more, len(queue))):
                        try:
                            nursery.start_soon(connection, nursery.cancel_scope)
                        except RuntimeError:  # every connection returned: the nursery closed
                            return
                        connections += 1
                    log.debug("%s: %.1f MB/s per connection; now %d connections", dl.digest.short, rate / 1e6,
                              connections)

        async with trio.open_nursery() as outer:
            outer.start_soon(self._hash_behind, dl, hasher)
            async with trio.open_nursery() as nursery:
                for _ in range(min(self.concurrency, INITIAL_CONNECTIONS, len(queue))):
                    nursery.start_soon(connection, nursery.cancel_scope)
                    connections += 1
                if connections:
                    outer.start_soon(scale, nursery)
            outer.cancel_scope.cancel()
        if failures:
            exc = failures[0]
            if isinstance(exc, OSError):
                raise BlobWriteError(f"writing blob {digest.short}: {exc.strerror or exc}", err=exc.errno) from exc
            raise exc

    async def _hash_behind(self, dl: _Download, hasher: _PrefixHasher) -> None:
        """Hash the finished prefix of the file while the rest downloads (cancelled at the end).

        Bytes below a part's ``completed`` mark are never written again, so what is hashed here
        is what the file will hold; verification then only hashes what is left.
        """
        try:
            while True:
                dl.progressed = trio.Event()
                if hasher.frontier() > hasher.pos:
                    await trio.to_thread.run_sync(hasher.advance, HASH_STEP, limiter=self._hash)
                else:
                    await dl.progressed.wait()
        except OSError as exc:  # verification will read it again and report
            log.debug("hashing %s ahead stopped: %s", dl.digest.short, exc)
            hasher.unpace()  # nothing advances it any more: downloads must not wait for it

    async def _download_part(
        self, dl: _Download, name: ModelName, digest: Digest, fd: int, url: str, part: PartState
    ) -> None:
        attempts = 0
        last: BaseException | None = None
        while not part.done:
            if attempts >= self.max_retries:
                raise DownloadFailed(
                    f"blob {digest.short}: part {part.n} failed {attempts} times; last error: {last}"
                ) from last
            attempts += 1
            error: BaseException | None = None
            stalled = False
            if self.client.threaded_bodies:
                try:
                    await self._attempt_threaded(dl, name, digest, fd, url, part)
                except _REMOTE_ERRORS as exc:
                    error = exc
                except _Stalled:
                    stalled = True
            else:
                error, stalled = await self._attempt_async(dl, name, digest, fd, url, part)
            if stalled:
                last = TransferError(f"part {part.n} stalled: nothing for {self.stall_timeout:g} s")
                log.info("%s part %d stalled; restarting it", digest.short, part.n)
                continue
            if error is None:
                if not part.done:  # pragma: no cover - BlobBody raises on a short body
                    error = TransferError(f"part {part.n} ended at {part.start} of {part.end}")
                else:
                    break
            if not getattr(error, "retryable", False):
                raise error
            last = error
            delay = min(self.backoff_base * 2 ** (attempts - 1), self.backoff_max)
            log.info(
                "%s part %d attempt %d failed: %s; retrying in %.2f s", digest.short, part.n, attempts, error, delay
            )
            await trio.sleep(delay)

    async def _attempt_async(
        self, dl: _Download, name: ModelName, digest: Digest, fd: int, url: str, part: PartState
    ) -> tuple[BaseException | None, bool]:
        """One try at a part over the async client (used with a mocked transport)."""
        writer = _PartWriter(self, dl, digest, fd, part)
        error: BaseException | None = None
        try:
            with trio.CancelScope() as scope:
                scope.deadline = trio.current_time() + self.stall_timeout
                try:
                    async with self.client.stream_blob(name, digest, part.start, part.end, url=url) as body:
                        async for chunk in body:
                            scope.deadline = trio.current_time() + self.stall_timeout
                            # Shielded (a bounded disk write), so a cancellation lands inside
                            # the body's network read and ends httpcore's generators there.
                            with trio.CancelScope(shield=True):
                                await writer.add(chunk)
                except _REMOTE_ERRORS as exc:
                    error = exc
        finally:
            with trio.CancelScope(shield=True):
                await writer.flush()
                await self._thread(self._write_part, digest, part)
        return error, scope.cancelled_caught

    async def _attempt_threaded(
        self, dl: _Download, name: ModelName, digest: Digest, fd: int, url: str, part: PartState
    ) -> None:
        """One try at a part, its body streamed and written by a worker thread.

        Measured: the async client costs ~2 s of CPU per GiB in trio/anyio/httpcore/h11 on top
        of the socket reads; a worker thread on httpx's sync client, writing 1 MiB reads with
        pwrite, moves the same GiB in ~0.6 s, leaving the CPU to the hasher.  The thread
        checks ``stop`` between reads; a stall shows as httpx's read timeout (stall_timeout).
        """
        stop = threading.Event()
        finished = threading.Event()
        gate = threading.Lock()
        started = False
        auth = self.client.cached_auth(url, name)
        token = trio.lowlevel.current_trio_token()

        def work() -> None:
            nonlocal started
            with gate:  # either this sees stop, or the canceller sees started
                if stop.is_set():
                    return
                started = True
            try:
                self._fetch_part(url, auth, digest, fd, part, dl, stop, token)
            finally:
                finished.set()

        try:
            # Abandoned on cancel so the cancellation is seen at once; a thread that started is
            # then told to stop and waited for (it checks between reads; a read blocks at most
            # stall_timeout), so it never writes to the file after we return.  Cancelled while
            # waiting for a thread token, work never runs and there is nothing to wait for.
            await trio.to_thread.run_sync(work, limiter=self._io, abandon_on_cancel=True)
        except trio.Cancelled:
            with gate:
                stop.set()
                running = started
            if running:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(finished.wait)
            raise
        except AuthError:
            # the cached token expired: let the async client answer the challenge, then retry
            await self.client.resolve_blob_url(name, digest)
            raise RegistryError(f"blob {digest.short}: credentials renewed", status=503) from None
        finally:
            stop.set()
            with trio.CancelScope(shield=True):
                await self._thread(self._write_part, digest, part)

    def _fetch_part(self, url, auth, digest, fd, part, dl, stop, token) -> None:
        """Worker thread: GET the part's remaining range and pwrite it; update progress.

        The body comes through :mod:`.bodies` (read into one reusable buffer) when the URL is
        reached directly, through httpx's sync client when a proxy is configured for it.
        """
        headers = {"Range": f"bytes={part.start}-{part.end - 1}", "Accept-Encoding": "identity"}
        if auth:
            headers["Authorization"] = auth
        unreported = 0

        def body(status: int, header: Callable[[str], str | None], read: bytes) -> None:
            """Check the answer's status and range before a byte of it is used."""
            if status >= 400:
                detail = read.decode(errors="replace").strip()
                if status == 404:
                    raise RegistryNotFound(f"blob {digest} not found ({url})", url=url)
                if status in (401, 403):
                    raise AuthError(f"blob {digest}: access denied, HTTP {status}", status=status, body=read)
                raise RegistryError(f"blob {digest}: HTTP {status} from {url}: {detail}", status=status, body=read,
                                    url=url)
            if status != 206:
                if not (status == 200 and part.start == 0):
                    raise RegistryError(f"GET {url}: HTTP {status} for a range request", status=status, url=url)
            else:
                got = header("content-range") or ""
                if not got.startswith(f"bytes {part.start}-"):
                    raise TransferError(f"GET {url}: Content-Range {got!r} for bytes {part.start}-", url=url)

        def write(chunks: Iterator[bytes | memoryview]) -> None:
            """pwrite each chunk as read; bytes before a break still count."""
            nonlocal unreported
            want = part.end - part.start
            last_checkpoint = time.monotonic()
            for chunk in chunks:
                if stop.is_set():
                    return
                chunk = chunk[: part.end - part.start]
                if dl.hasher is not None and not dl.hasher.wait_room(self.hash_lead, stop):
                    return
                _pwritev_all(fd, [chunk], part.start)
                part.completed += len(chunk)  # only now, with the bytes in the file, they count
                unreported += len(chunk)
                if unreported >= TOUCH_BYTES or part.done:  # a trip to trio costs ~50 µs
                    trio.from_thread.run_sync(dl.touch, unreported, trio_token=token)
                    unreported = 0
                now = time.monotonic()
                if now - last_checkpoint >= self.checkpoint_interval:
                    last_checkpoint = now
                    self._write_part(digest, part)
                if part.done:
                    return
            if part.end - part.start > 0:
                raise TransferError(f"{url}: body ended after {want - (part.end - part.start)} of {want} bytes",
                                    url=url)

        try:
            if self.raw_bodies and self.client.bodies.direct(url):
                self._fetch_raw(url, headers, body, write)
            else:
                self._fetch_httpx(url, headers, body, write)
        except trio.RunFinishedError:
            return
        finally:
            if unreported:
                try:
                    trio.from_thread.run_sync(dl.touch, unreported, trio_token=token)
                except trio.RunFinishedError:
                    pass

    def _fetch_raw(self, url: str, headers: dict[str, str], body, write) -> None:
        buf = memoryview(bytearray(self.write_size))

        def net(fn: Callable[[], T]) -> T:
            """Network errors as the retry policy knows them (a disk error stays an OSError)."""
            try:
                return fn()
            except TimeoutError:
                raise _Stalled() from None
            except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: a bad redirect URL
                raise TransferError(f"GET {url}: {type(exc).__name__}: {exc}", url=url) from exc

        def chunks(resp: http.client.HTTPResponse) -> Iterator[memoryview]:
            while n := net(lambda: resp.readinto(buf)):
                yield buf[:n]  # written before the next read refills the buffer

        with contextlib.ExitStack() as stack:
            resp = net(lambda: stack.enter_context(self.client.bodies.get(url, headers, self.stall_timeout)))
            body(resp.status, resp.headers.get, net(lambda: resp.read(4096)) if resp.status >= 400 else b"")
            write(chunks(resp))

    def _fetch_httpx(self, url: str, headers: dict[str, str], body, write) -> None:
        http = self.client.body_client(self.stall_timeout)
        try:
            with http.stream("GET", url, headers=headers) as resp:
                body(resp.status_code, resp.headers.get, resp.read()[:4096] if resp.status_code >= 400 else b"")
                write(resp.iter_raw())
        except httpx.ReadTimeout:
            raise _Stalled() from None
        except httpx.TransportError as exc:
            raise TransferError(f"{url}: body broke off: {type(exc).__name__}: {exc}", url=url) from exc

    async def _with_retries(self, digest: Digest, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a small request with the part retry policy (and the stall timeout as a deadline)."""
        last: BaseException | None = None
        for attempt in range(1, self.max_retries + 1):
            with trio.move_on_after(self.stall_timeout) as scope:
                try:
                    return await fn()
                except _REMOTE_ERRORS as exc:
                    if not getattr(exc, "retryable", False):
                        raise
                    last = exc
            if scope.cancelled_caught:
                last = TransferError(f"{what} {digest.short}: no answer in {self.stall_timeout:g} s")
            if attempt < self.max_retries:
                delay = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
                log.info("%s %s failed: %s; retrying in %.2f s", what, digest.short, last, delay)
                await trio.sleep(delay)
        raise DownloadFailed(f"{what} blob {digest.short} failed {self.max_retries} times: {last}") from last

    async def _verify_and_commit(
        self, dl: _Download, digest: Digest, fd: int, hasher: _PrefixHasher, total: int, parts: list[PartState]
    ) -> None:
        """Hash the whole file (the rest of it, after :meth:`_hash_behind`) and check its size;
        rename only a match into place."""
        actual_hex, actual_size = await trio.to_thread.run_sync(hasher.finish, limiter=self._hash)
        if actual_hex != digest.hex or actual_size != total:
            log.error(
                "digest mismatch, file must be downloaded again: expected %s (%d bytes), got sha256:%s (%d bytes)",
                digest,
                total,
                actual_hex,
                actual_size,
            )
            await self._thread(self._discard, digest, len(parts))
            raise DigestMismatch(
                f"digest mismatch for blob {digest}: downloaded bytes hash to sha256:{actual_hex} "
                f"({actual_size} bytes); file must be downloaded again"
            )
        # Readers may have these bytes now (open_verified); the store gets them once durable.
        dl.fd = fd
        dl.verified_at = trio.current_time()
        dl.report("storing")
        await self._thread(self._commit, digest, fd, len(parts))
        log.debug("blob %s verified and stored", digest.short)

    # -- disk work, always in worker threads -----------------------------------------------

    async def _thread(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._io)

    def _load_parts(self, digest: Digest, size: int | None) -> tuple[list[PartState] | None, int | None]:
        """Read the part files of an earlier attempt; ``(None, None)`` if there is nothing usable."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        prefix = digest.partial_filename + "-"
        parts: list[PartState] = []
        names: list[str] = []
        for entry in os.listdir(self.blobs_dir):
            if entry.startswith("." + prefix) and entry.endswith(".tmp"):
                _unlink(self.blobs_dir / entry)  # a checkpoint interrupted mid-way
            elif entry.startswith(prefix) and entry[len(prefix) :].isdigit():
                names.append(entry)
        if not names:
            return None, None
        try:
            for entry in names:
                parts.append(PartState.from_json((self.blobs_dir / entry).read_bytes()))
            parts.sort(key=lambda p: p.offset)
            problem = _check_parts(parts, size)
        except (OSError, ValueError) as exc:
            problem = f"unreadable part file: {exc}"
        if problem:
            log.info("discarding the partial download of %s: %s", digest.short, problem)
            for entry in names:
                _unlink(self.blobs_dir / entry)
            _unlink(self.partial_path(digest))
            return None, None
        total = sum(p.size for p in parts)
        try:
            have = os.stat(self.partial_path(digest)).st_size
        except FileNotFoundError:
            have = 0
        for p in parts:  # bytes the data file lost (or never had) are not complete
            p.completed = max(0, min(p.completed, have - p.offset))
        return parts, total

    def _start_fresh(self, digest: Digest, parts: list[PartState]) -> None:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        _unlink(self.partial_path(digest))
        for part in parts:
            self._write_part(digest, part)

    def _open_data(self, digest: Digest, total: int) -> int:
        fd = os.open(self.partial_path(digest), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size != total:
                os.ftruncate(fd, total)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write_part(self, digest: Digest, part: PartState) -> None:
        tmp = self._part_tmp_path(digest, part.n)
        with open(tmp, "wb") as f:
            f.write(part.to_json())
        os.replace(tmp, self.part_path(digest, part.n))

    def _discard(self, digest: Digest, nparts: int) -> None:
        _unlink(self.partial_path(digest))
        for n in range(nparts):
            _unlink(self.part_path(digest, n))

    def _commit(self, digest: Digest, fd: int, nparts: int) -> None:
        os.fsync(fd)
        # The pages stay cached: a reader through the mount may be reading them right now
        # (open_verified).  The mount drops what it has served (vfs.fs, read).
        os.rename(self.partial_path(digest), self.blob_path(digest))
        for n in range(nparts):
            _unlink(self.part_path(digest, n))
        dfd = os.open(self.blobs_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class _Stalled(Exception):
    """A threaded part read nothing for stall_timeout seconds."""


class _PartWriter:
    """Collects one attempt's chunks and writes them at the part's position from a worker thread.

    Chunks are kept as received and written with one ``pwritev`` (no copying into a buffer).
    """

    def __init__(self, puller: BlobPuller, dl: _Download, digest: Digest, fd: int, part: PartState) -> None:
        self.puller = puller
        self.dl = dl
        self.digest = digest
        self.fd = fd
        self.part = part
        self.chunks: list[bytes] = []
        self.size = 0
        self.last_checkpoint = trio.current_time()

    async def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size >= self.puller.write_size or len(self.chunks) >= _MAX_IOV:
            await self.flush()
            now = trio.current_time()
            if now - self.last_checkpoint >= self.puller.checkpoint_interval:
                self.last_checkpoint = now
                await self.puller._thread(self.puller._write_part, self.digest, self.part)

    async def flush(self) -> None:
        if not self.chunks:
            return
        chunks, size = self.chunks, self.size
        self.chunks, self.size = [], 0
        room = self.part.end - self.part.start
        if size > room:  # pragma: no cover - BlobBody never yields past the range
            raise TransferError(f"part {self.part.n}: {size} bytes for {room} bytes of room")
        await self.puller._thread(_pwritev_all, self.fd, chunks, self.part.start)
        # Only now, with the bytes in the file, do they count (and may reach the part's JSON).
        self.part.completed += size
        self.dl.completed += size
        self.dl.fetched += size
        self.dl.progressed.set()
        self.dl.report()


def _check_parts(parts: list[PartState], size: int | None) -> str | None:
    """Why a set of part files cannot be resumed, or None if it can."""
    if sorted(p.n for p in parts) != list(range(len(parts))):
        return "part numbers are not 0..n-1"
    offset = 0
    for p in parts:
        if p.offset != offset or p.size <= 0:
            return f"part {p.n} does not continue at offset {offset}"
        offset += p.size
    if size is not None and offset != size:
        return f"parts cover {offset} bytes, the blob has {size}"
    return None


def _pwritev_all(fd: int, chunks: list[bytes], offset: int) -> None:
    bufs: list[bytes | memoryview] = list(chunks)
    while bufs:
        n = os.pwritev(fd, bufs, offset)
        if n <= 0:  # pragma: no cover - pwritev raises rather than returning 0 on regular files
            raise OSError(errno.EIO, "short write")
        offset += n
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs.pop(0)
        if n:
            bufs[0] = memoryview(bufs[0])[n:]


class _PrefixHasher:
    """sha256 of a file's bytes from offset 0 up to ``pos``, advanced in worker threads.

    ``advance`` and ``finish`` run in a thread and update ``h`` and ``pos`` together, so the pair
    stays consistent whether or not the trio side was cancelled while waiting for them.
    """

    def __init__(self, fd: int, parts: list[PartState]) -> None:
        self.fd = fd
        self.parts = parts  # in offset order
        self.h = hashlib.sha256()
        self.pos = 0
        self._moved = threading.Condition()
        self._unpaced = False
        # A resumed pull has this much on disk already: downloads do not wait while it is
        # hashed (that would leave the network idle); pacing starts once the hasher passes it.
        self._resumed = self.frontier()

    def wait_room(self, lead: int, stop: threading.Event) -> bool:
        """Block a download thread while more than ``lead`` bytes of the finished prefix wait to
        be hashed (not counting what a resumed pull found on disk); False if told to stop meanwhile.  Parts further on are not held back by
        their distance alone: on a slow link, many connections are what makes a pull fast."""
        with self._moved:
            while not self._unpaced and self.pos >= self._resumed and self.frontier() - self.pos > lead:
                if stop.is_set():
                    return False
                self._moved.wait(0.5)
        return not stop.is_set()

    def unpace(self) -> None:
        """Hashing ahead stopped (a read error): let every waiting and later download go on."""
        with self._moved:
            self._unpaced = True
            self._moved.notify_all()

    def _update(self, data: bytes) -> None:
        self.h.update(data)
        _start_writeback(self.fd, self.pos, len(data))
        with self._moved:
            self.pos += len(data)
            self._moved.notify_all()

    def frontier(self) -> int:
        """End of the contiguous prefix of written bytes."""
        for p in self.parts:
            if not p.done:
                return p.start
        return self.parts[-1].end if self.parts else 0

    def advance(self, limit: int) -> None:
        """Hash up to ``limit`` more bytes of the finished prefix (worker thread)."""
        stop = min(self.frontier(), self.pos + limit)
        while self.pos < stop:
            data = os.pread(self.fd, min(HASH_CHUNK, stop - self.pos), self.pos)
            if not data:  # shorter than its parts say (truncated under us): stop hashing ahead
                raise OSError(errno.EIO, f"partial file ends at {self.pos}, its parts reach {stop}")
            self._update(data)

    def finish(self) -> tuple[str, int]:
        """Hash the rest of the file up to its end; return the hex digest and the file's length."""
        while True:
            data = os.pread(self.fd, HASH_CHUNK, self.pos)
            if not data:
                return self.h.hexdigest(), self.pos
            self._update(data)


_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing hashed bytes to disk now (sync_file_range(2), no waiting), so that the
    fsync before the rename has little left to do."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)  # advisory: errors are fsync's


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
