"""Ollama's on-disk model store: ``manifests/<host>/<ns>/<model>/<tag>`` and ``blobs/``.

This module only reads (the mutation issues add ingest and prune beside it).  Everything here
is synchronous and bounded; the filesystem calls it from worker threads where it touches many
files (a listing) and inline where it is a single ``stat``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidName, ManifestError, MissingBlob, NotFound, PermissionDenied
from ..names import Digest, ModelName
from .manifest import Manifest, parse_manifest

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def default_store_path() -> Path:
    """``$OLLAMA_MODELS``, else ``~/.ollama/models`` (Ollama's own default)."""
    env = os.environ.get("OLLAMA_MODELS")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".ollama" / "models"


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One model of the store as the listing saw it."""

    name: ModelName
    path: Path  # the manifest file (where it will be, for a model not yet local)
    manifest: Manifest
    mtime_ns: int
    remote: bytes | None = None  # the registry's manifest bytes, for a model not yet local


@dataclass(frozen=True, slots=True)
class _StatKey:
    """What must stay equal for a cached parse to still be the file's (ctime catches an
    in-place rewrite of the same size within one mtime tick, and a restored mtime)."""

    ino: int
    mtime_ns: int
    ctime_ns: int
    size: int

    @classmethod
    def of(cls, st: os.stat_result) -> _StatKey:
        return cls(st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class Store:
    """Read access to one Ollama models directory.

    ``list()`` walks ``manifests/*/*/*/*`` the way Ollama's listing does: a path that is not a
    valid name or a file that does not parse is skipped with one warning (per file version), and
    two manifests whose names differ only in case count once (the first in sorted order).
    Parsed manifests are cached by (inode, mtime, size), so repeated listings cost one ``stat``
    per model.  ``list()`` results are reused for ``listing_ttl`` seconds.
    """

    def __init__(self, root: Path | str, *, listing_ttl: float = 1.0) -> None:
        self.root = Path(root)
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"
        self.listing_ttl = listing_ttl
        self._parsed: dict[str, tuple[_StatKey, Manifest | None]] = {}
        self._lock = threading.Lock()
        self._listing: dict[ModelName, ModelRecord] | None = None
        self._listing_at = 0.0
        self.generation = 0  # bumped with every new listing (what callers compare, never id())

    # ---- blobs -------------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        return self.blobs_dir / digest.filename

    def blob_size(self, digest: Digest) -> int | None:
        """The blob's size on disk, or None when the store lacks it."""
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def open_blob(self, digest: Digest) -> int:
        """An O_RDONLY descriptor on the blob; MissingBlob names it when absent."""
        path = self.blob_path(digest)
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MissingBlob(f"blob {digest} is missing from the store ({path})") from None
        except PermissionError:
            raise PermissionDenied(f"blob {digest} is not readable by this user ({path})") from None

    def read_small_blob(self, digest: Digest, limit: int = 16 * 1024 * 1024) -> bytes:
        """The whole content of a small layer (template, system, params...)."""
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise MissingBlob(f"blob {digest} is missing from the store ({path})") from None
        if len(data) > limit:
            raise ManifestError(f"blob {digest} is larger than {limit} bytes; not a text layer")
        return data

    # ---- manifests ---------------------------------------------------------------------
    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_relpath)

    def _load(self, path: Path, st: os.stat_result) -> Manifest | None:
        """Parse (cached) the manifest at path; None (with one warning) when it is unusable."""
        key = _StatKey.of(st)
        spath = str(path)
        with self._lock:
            hit = self._parsed.get(spath)
        if hit is not None and hit[0] == key:
            return hit[1]
        manifest: Manifest | None
        try:
            if st.st_size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"manifest is {st.st_size} bytes, over {MAX_MANIFEST_BYTES}")
            with open(path, "rb") as f:
                manifest = parse_manifest(f.read(MAX_MANIFEST_BYTES + 1))
        except ManifestError as exc:
            log.warning("skipping manifest %s: %s", path, exc)
            manifest = None
        except OSError as exc:
            log.warning("skipping manifest %s: cannot read it: %s", path, exc)
            manifest = None
        with self._lock:
            self._parsed[spath] = (key, manifest)
        return manifest

    def peek(self, name: ModelName) -> ModelRecord | None:
        """``get`` from caches plus one ``stat``, or None when that needs more disk work.

        Cheap enough to call on the event loop; the filesystem falls back to ``get`` in a
        worker thread when this answers None.
        """
        listing = self.cached_listing()
        record = listing.get(name) if listing is not None else None
        if record is None:
            return None
        try:
            st = os.stat(record.path)
        except OSError:
            return None
        key = _StatKey.of(st)
        with self._lock:
            hit = self._parsed.get(str(record.path))
        if hit is None or hit[0] != key or hit[1] is None:
            return None
        if hit[1] is record.manifest and st.st_mtime_ns == record.mtime_ns:
            return record
        return ModelRecord(record.name, record.path, hit[1], st.st_mtime_ns)

    def get(self, name: ModelName) -> ModelRecord:
        """The model's current manifest, read fresh (one stat); NotFound when absent or unusable."""
        record = self.list().get(name)
        path = record.path if record is not None else self.manifest_path(name)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"model {name} not found") from None
        manifest = self._load(path, st)
        if manifest is None:
            raise NotFound(f"model {name} has an unusable manifest ({path})")
        found = record.name if record is not None else name
        return ModelRecord(found, path, manifest, st.st_mtime_ns)

    def read_manifest_bytes(self, record: ModelRecord) -> bytes:
        """The manifest file's bytes, checked against the digest the record was parsed with."""
        if record.remote is not None:
            return record.remote
        try:
            with open(record.path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(f"model {record.name} was removed") from None
        if parse_manifest(data).digest != record.manifest.digest:
            raise NotFound(f"model {record.name} changed while it was read")
        return data

    def invalidate(self) -> None:
        """Forget the cached listing (after a change made through us)."""
        with self._lock:
            self._listing = None

    def cached_listing(self, max_age: float | None = None) -> dict[ModelName, ModelRecord] | None:
        """The last listing while it is fresh, else None (never touches the disk)."""
        ttl = self.listing_ttl if max_age is None else min(max_age, self.listing_ttl)
        with self._lock:
            if self._listing is not None and time.monotonic() - self._listing_at < ttl:
                return self._listing
        return None

    def list(self, max_age: float | None = None) -> dict[ModelName, ModelRecord]:
        """Every valid model in the store (cached for ``listing_ttl`` or ``max_age`` seconds)."""
        now = time.monotonic()
        cached = self.cached_listing(max_age)
        if cached is not None:
            return cached
        listing = self._walk()
        with self._lock:
            self._listing = listing
            self._listing_at = now
            self.generation += 1
        return listing

    def _walk(self) -> dict[ModelName, ModelRecord]:
        out: dict[ModelName, ModelRecord] = {}
        for parts, path in _walk4(self.manifests_dir):
            try:
                name = ModelName(*parts)
            except InvalidName as exc:
                self._warn_once(path, f"skipping manifest {path}: not a valid model name ({exc})")
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue  # removed while we walked
            manifest = self._load(path, st)
            if manifest is None:
                continue
            if name in out:
                self._warn_once(path, f"skipping manifest {path}: same name as {out[name].path} but for case")
                continue
            out[name] = ModelRecord(name, path, manifest, st.st_mtime_ns)
        return out

    def _warn_once(self, path: Path, message: str) -> None:
        spath = "name:" + str(path)
        with self._lock:
            if spath in self._parsed:
                return
            self._parsed[spath] = (_StatKey(0, 0, 0, 0), None)
        log.warning("%s", message)


def _walk4(top: Path):
    """Yield ((host, ns, model, tag), path) for every file four levels under top, sorted."""

    def entries(path: Path, want_dir: bool):
        try:
            with os.scandir(path) as it:
                found = [e for e in it if (e.is_dir() if want_dir else e.is_file())]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []
        return sorted(found, key=lambda e: e.name)

    for host in entries(top, True):
        for ns in entries(Path(host.path), True):
            for model in entries(Path(ns.path), True):
                for tag in entries(Path(model.path), False):
                    yield (host.name, ns.name, model.name, tag.name), Path(tag.path)

