"""Writing into the store crash-safely: blobs and manifests appear only complete.

A blob is written under a temporary name in ``blobs/`` (a name that is not a digest, so Ollama's
start-up prune and ours remove leftovers), hashed while written, fsynced, and renamed to
``sha256-<hex>`` only when its digest is known and, if one was expected, matches.  A manifest
is written the same way into its directory, after its blobs.  Blocking: call from a thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..errors import IntegrityError
from ..names import Digest, ModelName
from .manifest import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, OLLAMA_PREFIX, Layer, Manifest, parse_manifest
from .store import Store

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ingest_stream(store: Store, src: BinaryIO, expected: Digest | None = None) -> tuple[Digest, int]:
    """Copy a stream into the store as a blob; return its digest and size.

    With ``expected``, a mismatch deletes the temporary file and raises IntegrityError naming
    both digests; nothing unverified ever gets a blob name.
    """
    store.blobs_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(prefix=".ingest-", dir=store.blobs_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        digest = Digest(h.hexdigest())
        if expected is not None and digest != expected:
            log.error("digest mismatch: expected %s, got %s; discarding the data", expected, digest)
            raise IntegrityError(f"digest mismatch: expected {expected}, got {digest}")
        _adopt(store, Path(tmp), digest, size)
        return digest, size
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def new_upload(store: Store) -> tuple[int, Path]:
    """A temporary file in ``blobs/`` to write a blob into (prunable by name until adopted)."""
    store.blobs_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=store.blobs_dir)
    return fd, Path(tmp)


def adopt_upload(store: Store, tmp: Path) -> tuple[Digest, int]:
    """Hash a finished upload and give it its blob name, or drop it when the store already has
    those bytes (so a copy stores nothing twice)."""
    h = hashlib.sha256()
    size = 0
    with open(tmp, "rb") as f:
        while chunk := f.read(CHUNK * 4):
            h.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    digest = Digest(h.hexdigest())
    _adopt(store, tmp, digest, size)
    return digest, size


def _adopt(store: Store, tmp: Path, digest: Digest, size: int) -> None:
    """Give verified bytes their blob name, or drop them when the store already holds them."""
    final = store.blob_path(digest)
    if final.exists() and final.stat().st_size == size:
        os.unlink(tmp)
    else:
        os.chmod(tmp, 0o644)
        os.rename(tmp, final)
        _fsync_dir(store.blobs_dir)


def ingest_bytes(store: Store, data: bytes) -> tuple[Digest, int]:
    import io

    return ingest_stream(store, io.BytesIO(data))


def ingest_file(store: Store, path: Path | str) -> tuple[Digest, int]:
    with open(path, "rb") as f:
        return ingest_stream(store, f)


def write_manifest(store: Store, name: ModelName, data: bytes) -> Path:
    """Atomically (re)place the manifest of ``name``; its blobs must already be in the store."""
    manifest = parse_manifest(data)
    for layer in manifest.all_blobs():
        if store.blob_size(layer.digest) != layer.size:
            raise IntegrityError(f"cannot write manifest of {name}: blob {layer.digest} is missing or the wrong size")
    existing = store.list().get(name)
    target = existing.path if existing is not None else store.manifest_path(name)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    store.invalidate()
    return target


def build_manifest(layers: list[Layer], config: dict) -> tuple[bytes, bytes]:
    """(config blob bytes, manifest bytes) for layers, with Ollama's ConfigV2 rootfs filled in."""
    config = dict(config)
    config.setdefault("rootfs", {"type": "layers", "diff_ids": [str(layer.digest) for layer in layers]})
    config_bytes = json.dumps(config, separators=(",", ":")).encode()
    cdigest = Digest(hashlib.sha256(config_bytes).hexdigest())
    manifest = Manifest(
        config=Layer(CONFIG_MEDIA_TYPE, cdigest, len(config_bytes)),
        layers=tuple(layers),
        digest=cdigest,  # replaced by parse below
        media_type=MANIFEST_MEDIA_TYPE,
    )
    return config_bytes, manifest.to_json_bytes()


def create_model(
    store: Store,
    name: ModelName,
    *,
    model_file: Path | None = None,
    texts: dict[str, str] | None = None,
    params: dict | None = None,
    config: dict | None = None,
) -> Manifest:
    """Write a model from a GGUF file and text layers (template, system, license...)."""
    layers: list[Layer] = []
    if model_file is not None:
        digest, size = ingest_file(store, model_file)
        layers.append(Layer(OLLAMA_PREFIX + "model", digest, size))
    for kind, text in (texts or {}).items():
        digest, size = ingest_bytes(store, text.encode())
        layers.append(Layer(OLLAMA_PREFIX + kind, digest, size))
    if params:
        digest, size = ingest_bytes(store, json.dumps(params, separators=(",", ":")).encode())
        layers.append(Layer(OLLAMA_PREFIX + "params", digest, size))
    config_bytes, manifest_bytes = build_manifest(layers, config or {"model_format": "gguf", "os": "linux"})
    ingest_bytes(store, config_bytes)
    write_manifest(store, name, manifest_bytes)
    return parse_manifest(manifest_bytes)

