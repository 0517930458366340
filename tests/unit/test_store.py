"""Tests for ollamafs.store.store: reading Ollama's models directory."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from ollamafs.errors import MissingBlob, NotFound
from ollamafs.names import Digest, ModelName
from ollamafs.store import Store, default_store_path

IMG = "application/vnd.ollama.image."
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
STORE_LOGGER = "ollamafs.store.store"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_blob(root: Path, data: bytes) -> Digest:
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    digest = Digest(sha(data))
    (blobs / digest.filename).write_bytes(data)
    return digest


def manifest_bytes(root: Path, model: bytes = b"weights", *, config_digest: str | None = None) -> bytes:
    config = b'{"model_format":"gguf"}'
    cdig = config_digest if config_digest is not None else str(write_blob(root, config))
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": cdig, "size": len(config)},
        "layers": [{"mediaType": IMG + "model", "digest": str(write_blob(root, model)), "size": len(model)}],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def write_manifest(root: Path, relpath: str, data: bytes) -> Path:
    path = root / "manifests" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == STORE_LOGGER and r.levelno >= logging.WARNING]


@pytest.fixture
def messy_store(tmp_path: Path) -> Path:
    """Two valid models plus every kind of bad entry Ollama skips."""
    write_manifest(tmp_path, "registry.ollama.ai/library/llama3/latest", manifest_bytes(tmp_path, b"llama"))
    write_manifest(tmp_path, "example.com/alice/coder/q4", manifest_bytes(tmp_path, b"coder"))
    write_manifest(tmp_path, "registry.ollama.ai/library/notjson/latest", b"this is not json")
    write_manifest(
        tmp_path, "registry.ollama.ai/library/baddigest/latest", manifest_bytes(tmp_path, config_digest="sha256:1234")
    )
    write_manifest(tmp_path, "registry.ollama.ai/library/-bad/latest", manifest_bytes(tmp_path))
    # extra nesting: a directory where the tag file should be, and a file one level too high
    write_manifest(tmp_path, "registry.ollama.ai/library/deep/latest/extra", manifest_bytes(tmp_path))
    write_manifest(tmp_path, "registry.ollama.ai/library/shallow", manifest_bytes(tmp_path))
    return tmp_path


# --- listing --------------------------------------------------------------------------------------


def test_list_returns_exactly_the_valid_models(messy_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    store = Store(messy_store, listing_ttl=0)
    listing = store.list()
    assert sorted(str(n) for n in listing) == [
        "example.com/alice/coder:q4",
        "registry.ollama.ai/library/llama3:latest",
    ]
    record = listing[ModelName.parse("llama3")]
    assert record.name.parts == ("registry.ollama.ai", "library", "llama3", "latest")
    assert record.path == messy_store / "manifests/registry.ollama.ai/library/llama3/latest"
    assert record.mtime_ns == os.stat(record.path).st_mtime_ns
    assert record.manifest.digest == Digest(sha(record.path.read_bytes()))
    assert record.manifest.layers[0].digest == Digest(sha(b"llama"))


def test_one_warning_per_bad_file_even_across_listings(messy_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    store = Store(messy_store, listing_ttl=0)
    store.list()
    first = warnings_of(caplog)
    assert len(first) == 3
    assert sum("notjson" in m and "not JSON" in m for m in first) == 1
    assert sum("baddigest" in m and "invalid digest format" in m for m in first) == 1
    assert sum("-bad" in m and "not a valid model name" in m for m in first) == 1
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == STORE_LOGGER)
    caplog.clear()
    store.invalidate()
    assert len(store.list()) == 2
    assert warnings_of(caplog) == []


def test_a_rewritten_bad_manifest_warns_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = write_manifest(tmp_path, "h/ns/m/t", b"junk")
    store = Store(tmp_path, listing_ttl=0)
    assert store.list() == {}
    path.write_bytes(b"other junk, longer")
    assert store.list() == {}
    assert len(warnings_of(caplog)) == 2
    path.write_bytes(manifest_bytes(tmp_path))
    assert list(store.list()) == [ModelName.parse("h/ns/m:t")]


def test_missing_manifests_dir_is_empty(tmp_path: Path) -> None:
    assert Store(tmp_path / "nothing-here").list() == {}


def test_names_differing_only_in_case_count_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    write_manifest(tmp_path, "registry.ollama.ai/library/Llama3/latest", manifest_bytes(tmp_path, b"upper"))
    write_manifest(tmp_path, "registry.ollama.ai/library/llama3/latest", manifest_bytes(tmp_path, b"lower"))
    write_manifest(tmp_path, "registry.ollama.ai/library/llama3/LATEST", manifest_bytes(tmp_path, b"tag"))
    store = Store(tmp_path, listing_ttl=0)
    listing = store.list()
    assert len(listing) == 1
    (record,) = listing.values()
    # the first in sorted order wins
    assert record.name.parts == ("registry.ollama.ai", "library", "Llama3", "latest")
    assert record.manifest.layers[0].digest == Digest(sha(b"upper"))
    assert len(warnings_of(caplog)) == 2
    store.list()
    assert len(warnings_of(caplog)) == 2


# --- get ------------------------------------------------------------------------------------------


def test_get_is_case_insensitive(messy_store: Path) -> None:
    store = Store(messy_store, listing_ttl=0)
    record = store.get(ModelName.parse("EXAMPLE.com/Alice/CODER:Q4"))
    assert record.name.parts == ("example.com", "alice", "coder", "q4")
    assert record.path == messy_store / "manifests/example.com/alice/coder/q4"
    assert record.manifest.layers[0].digest == Digest(sha(b"coder"))


def test_get_case_insensitive_with_stored_upper_case(tmp_path: Path) -> None:
    write_manifest(tmp_path, "registry.ollama.ai/Alice/MyModel/V1", manifest_bytes(tmp_path))
    record = Store(tmp_path, listing_ttl=0).get(ModelName.parse("alice/mymodel:v1"))
    assert record.name.parts == ("registry.ollama.ai", "Alice", "MyModel", "V1")


@pytest.mark.parametrize("name", ["nothere", "notjson", "baddigest", "example.com/alice/coder:q5"])
def test_get_absent_or_unusable_raises_not_found(messy_store: Path, name: str) -> None:
    with pytest.raises(NotFound) as info:
        Store(messy_store, listing_ttl=0).get(ModelName.parse(name))
    assert info.value.errno == errno.ENOENT


def test_get_reads_fresh_even_when_listing_is_cached(tmp_path: Path) -> None:
    store = Store(tmp_path, listing_ttl=3600)
    assert store.list() == {}
    write_manifest(tmp_path, "registry.ollama.ai/library/new/latest", manifest_bytes(tmp_path, b"new"))
    assert store.get(ModelName.parse("new")).manifest.layers[0].digest == Digest(sha(b"new"))


def test_get_sees_a_moved_tag(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "h/ns/m/t", manifest_bytes(tmp_path, b"one"))
    store = Store(tmp_path, listing_ttl=3600)
    assert store.get(ModelName.parse("h/ns/m:t")).manifest.layers[0].size == 3
    path.write_bytes(manifest_bytes(tmp_path, b"a longer second model"))
    assert store.get(ModelName.parse("h/ns/m:t")).manifest.layers[0].digest == Digest(sha(b"a longer second model"))


def test_same_size_rewrite_in_the_same_tick_is_seen(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "h/ns/m/t", manifest_bytes(tmp_path, b"one"))
    before = os.stat(path)
    store = Store(tmp_path, listing_ttl=0)
    assert store.get(ModelName.parse("h/ns/m:t")).manifest.layers[0].digest == Digest(sha(b"one"))
    path.write_bytes(manifest_bytes(tmp_path, b"two"))  # same length, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_ino == before.st_ino
    assert store.get(ModelName.parse("h/ns/m:t")).manifest.layers[0].digest == Digest(sha(b"two"))


# --- listing cache ----------------------------------------------------------------------------------


def test_ttl_zero_sees_new_manifests_immediately(tmp_path: Path) -> None:
    store = Store(tmp_path, listing_ttl=0)
    assert store.list() == {}
    write_manifest(tmp_path, "h/ns/a/t", manifest_bytes(tmp_path))
    assert list(store.list()) == [ModelName.parse("h/ns/a:t")]
    os.remove(tmp_path / "manifests/h/ns/a/t")
    assert store.list() == {}
    assert store.cached_listing() is None


def test_listing_is_cached_for_the_ttl(tmp_path: Path) -> None:
    store = Store(tmp_path, listing_ttl=3600)
    first = store.list()
    assert first == {}
    write_manifest(tmp_path, "h/ns/a/t", manifest_bytes(tmp_path))
    assert store.list() is first
    assert store.cached_listing() is first
    store.invalidate()
    assert store.cached_listing() is None
    assert list(store.list()) == [ModelName.parse("h/ns/a:t")]


def test_manifests_are_parsed_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ollamafs.store.store as store_module

    write_manifest(tmp_path, "h/ns/a/t", manifest_bytes(tmp_path))
    calls = []
    real = store_module.parse_manifest
    monkeypatch.setattr(store_module, "parse_manifest", lambda data: calls.append(1) or real(data))
    store = Store(tmp_path, listing_ttl=0)
    store.list()
    store.list()
    store.get(ModelName.parse("h/ns/a:t"))
    assert len(calls) == 1


# --- blobs ----------------------------------------------------------------------------------------


def test_blob_path_and_size(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = write_blob(tmp_path, b"12345")
    assert store.blob_path(digest) == tmp_path / "blobs" / f"sha256-{digest.hex}"
    assert store.blob_size(digest) == 5
    assert store.blob_size(Digest("0" * 64)) is None


def test_open_blob(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = write_blob(tmp_path, b"blob bytes")
    fd = store.open_blob(digest)
    try:
        assert os.pread(fd, 100, 0) == b"blob bytes"
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_open_missing_blob_names_the_digest(tmp_path: Path) -> None:
    missing = Digest("a" * 64)
    with pytest.raises(MissingBlob) as info:
        Store(tmp_path).open_blob(missing)
    assert info.value.errno == errno.EIO
    assert str(missing) in str(info.value)


def test_read_small_blob(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = write_blob(tmp_path, b"template text")
    assert store.read_small_blob(digest) == b"template text"
    with pytest.raises(MissingBlob):
        store.read_small_blob(Digest("b" * 64))


# --- manifest bytes -------------------------------------------------------------------------------


def test_read_manifest_bytes(tmp_path: Path) -> None:
    data = manifest_bytes(tmp_path)
    write_manifest(tmp_path, "h/ns/m/t", data)
    store = Store(tmp_path, listing_ttl=0)
    record = store.get(ModelName.parse("h/ns/m:t"))
    assert store.read_manifest_bytes(record) == data


def test_read_manifest_bytes_of_a_changed_or_removed_manifest(tmp_path: Path) -> None:
    path = write_manifest(tmp_path, "h/ns/m/t", manifest_bytes(tmp_path, b"one"))
    store = Store(tmp_path, listing_ttl=0)
    record = store.get(ModelName.parse("h/ns/m:t"))
    path.write_bytes(manifest_bytes(tmp_path, b"two"))
    with pytest.raises(NotFound):
        store.read_manifest_bytes(record)
    path.unlink()
    with pytest.raises(NotFound):
        store.read_manifest_bytes(record)


def test_manifest_path(tmp_path: Path) -> None:
    assert Store(tmp_path).manifest_path(ModelName.parse("example.com:5000/a/m:t")) == (
        tmp_path / "manifests" / "example.com:5000" / "a" / "m" / "t"
    )


# --- default path ---------------------------------------------------------------------------------


def test_default_store_path_honours_ollama_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    assert default_store_path() == tmp_path / "models"


def test_default_store_path_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OLLAMA_MODELS", "~/elsewhere")
    assert default_store_path() == tmp_path / "elsewhere"


@pytest.mark.parametrize("value", [None, ""])
def test_default_store_path_without_ollama_models(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_MODELS", value)
    assert default_store_path() == tmp_path / ".ollama" / "models"
