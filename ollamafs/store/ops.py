"""Model-level changes to the store, as Ollama makes them: rm, cp, mv, prune.

Shared by the CLI (``ollamafs rm/cp/mv/prune``) and the filesystem (``rm -r``, ``mv``).  Each
change keeps the store consistent after a crash at any point: a manifest is written
(atomically) before the manifest it replaces is removed, and blobs are deleted only after no
manifest references them.  Blocking: call from a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import NotFound, OllamaFSError
from ..names import Digest, ModelName
from .ingest import write_manifest
from .prune import noprune, remove_unreferenced
from .store import ModelRecord, Store

log = logging.getLogger(__name__)

# One change at a time per store (two shells deleting and copying at once stay consistent).
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def store_lock(store: Store) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(store.root.resolve(), threading.Lock())


class ModelExists(OllamaFSError):
    """The destination name of a copy or rename is taken (EEXIST)."""

    errno = errno.EEXIST
    level = logging.INFO
    exit_code = 1


def _prune_empty_dirs(store: Store, path: Path) -> None:
    """Remove empty directories from ``path`` up to (not including) ``manifests/``."""
    top = store.manifests_dir.resolve()
    current = path.resolve()
    while current != top and top in current.parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


def delete_model(store: Store, name: ModelName, in_use: Iterable[Digest] = ()) -> ModelRecord:
    """``ollama rm``: the manifest goes, then every blob of it no other manifest references
    (except those ``in_use``), then empty directories up the manifests tree."""
    with store_lock(store):
        record = store.list(max_age=0).get(name)
        if record is None:
            raise NotFound(f"model {name} not found")
        os.unlink(record.path)
        store.invalidate()
        _prune_empty_dirs(store, record.path.parent)
        removed = remove_unreferenced(store, [layer.digest for layer in record.manifest.all_blobs()], in_use)
        log.info("deleted %s (%d blobs freed)", name, len(removed))
        return record


def copy_model(store: Store, src: ModelName, dst: ModelName, *, replace: bool = False) -> ModelRecord:
    """``ollama cp``: the manifest file is copied to the new name; blobs are shared."""
    with store_lock(store):
        listing = store.list(max_age=0)
        record = listing.get(src)
        if record is None:
            raise NotFound(f"model {src} not found")
        if dst in listing and not replace:
            raise ModelExists(f"model {dst} already exists")
        data = record.path.read_bytes()
        write_manifest(store, dst, data)
        log.info("copied %s to %s", src, dst)
        return store.get(dst)


def rename_model(store: Store, src: ModelName, dst: ModelName) -> ModelRecord:
    """``mv``: the manifest moves to the new name (written first, then the old one removed);
    no blob is copied or deleted."""
    with store_lock(store):
        listing = store.list(max_age=0)
        record = listing.get(src)
        if record is None:
            raise NotFound(f"model {src} not found")
        if dst in listing and dst != src:
            raise ModelExists(f"model {dst} already exists")
        if src.parts == dst.parts:
            return record
        data = record.path.read_bytes()
        if dst == src:  # only the case of the name changes
            record.path.unlink()
            store.invalidate()
            _prune_empty_dirs(store, record.path.parent)
            write_manifest(store, dst, data)
            return store.get(dst)
        write_manifest(store, dst, data)
        os.unlink(record.path)
        store.invalidate()
        _prune_empty_dirs(store, record.path.parent)
        log.info("renamed %s to %s", src, dst)
        return store.get(dst)


ACTIVE_PARTIAL_AGE = 120.0  # a partial file written this recently belongs to a running pull


def open_blob_files(store: Store) -> set[str]:
    """Names of files in ``blobs/`` that some process holds open (/proc/*/fd), the mount daemon
    serving a read included."""
    blobs = str(store.blobs_dir.resolve()) + "/"
    out: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(blobs):
                out.add(target[len(blobs):].removesuffix(" (deleted)"))
    return out


def prune(store: Store, in_use: Iterable[Digest] = ()) -> list[str]:
    """What Ollama does at start-up: delete blobs no manifest references, and files in
    ``blobs/`` whose names are not digests (leftover partials and temporaries), except what a
    running pull or an open handle uses.  Returns the file names removed."""
    keep = set(in_use)
    removed: list[str] = []
    with store_lock(store):
        if noprune():
            log.info("OLLAMA_NOPRUNE is set: not pruning")
            return removed
        try:
            names = os.listdir(store.blobs_dir)
        except FileNotFoundError:
            return removed
        referenced = set()
        for record in store.list(max_age=0).values():
            referenced.update(layer.digest for layer in record.manifest.all_blobs())
        held = open_blob_files(store)
        now = time.time()
        for fname in sorted(names):
            if fname in held:
                continue  # an open handle (a reader through the mount, a pull writing it)
            try:
                if "partial" in fname and now - os.stat(store.blobs_dir / fname).st_mtime < ACTIVE_PARTIAL_AGE:
                    continue  # a pull that is running (or died moments ago) resumes from it
            except FileNotFoundError:
                continue
            try:
                digest = Digest.from_filename(fname)
            except OllamaFSError:
                digest = None
            if digest is not None and (digest in referenced or digest in keep):
                continue
            if digest is None and any(fname.startswith(d.filename) for d in keep):
                continue  # a running pull's partial files
            try:
                os.unlink(store.blobs_dir / fname)
            except (FileNotFoundError, IsADirectoryError):
                continue
            removed.append(fname)
    if removed:
        log.info("pruned %d files from %s", len(removed), store.blobs_dir)
    return removed
