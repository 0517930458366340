"""rm -r and mv of models through the mount (§Deleting and renaming)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from ollamafs.store import Store

pytestmark = pytest.mark.fuse

A = "registry.ollama.ai/library/a:1"
B = "registry.ollama.ai/library/b:1"


@pytest.fixture
def models(store, tiny_gguf, tmp_path):
    store.model(A, tiny_gguf, system="shared system")
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_gguf.read_bytes() + b"\0" * 64)
    store.model(B, other, system="shared system")
    return store


def blob_names(store) -> set[str]:
    return set(os.listdir(store.root / "blobs"))


def test_rm_r_deletes_model_and_only_its_own_blobs(models, mount):
    m = mount(["offline"])
    before = blob_names(models)
    b_blobs = {layer.digest.filename for rec in Store(models.root).list().values() if rec.name.model == "b"
               for layer in rec.manifest.all_blobs()}
    out = subprocess.run(["rm", "-r", str(m.path / "registry.ollama.ai/library/a:1")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert os.listdir(m.path / "registry.ollama.ai/library") == ["b:1"]
    assert not (models.root / "manifests/registry.ollama.ai/library/a").exists()
    after = blob_names(models)
    assert b_blobs <= after  # the shared system blob and b's own survive
    assert before - after and not (before - after) & b_blobs
    # the last model of a namespace takes the empty directories with it
    shutil.rmtree(m.path / "registry.ollama.ai/library/b:1")
    assert os.listdir(m.path) == []
    assert not (models.root / "manifests/registry.ollama.ai").exists()


def test_lone_unlink_is_refused(models, mount):
    m = mount(["offline"])
    f = m.path / "registry.ollama.ai/library/a:1/system"
    with pytest.raises(OSError) as info:
        os.unlink(f)
    assert info.value.errno == errno.EPERM
    assert f.exists()
    assert "remove the model with rm -r" in m.log()


def test_open_blob_keeps_reading_after_rm(models, mount, tiny_gguf):
    m = mount(["offline"])
    d = m.path / "registry.ollama.ai/library/a:1"
    with open(d / "model.gguf", "rb") as held:
        head = held.read(100)
        subprocess.run(["rm", "-r", str(d)], check=True)
        assert held.read() == tiny_gguf.read_bytes()[100:]
    assert head == tiny_gguf.read_bytes()[:100]


def test_mv_renames_without_copying(models, mount):
    m = mount(["offline"])
    before = blob_names(models)
    lib = m.path / "registry.ollama.ai/library"
    os.rename(lib / "a:1", lib / "c:2")
    assert sorted(os.listdir(lib)) == ["b:1", "c:2"]
    assert blob_names(models) == before
    assert (lib / "c:2/system").read_text() == "shared system"
    # across namespaces and hosts, into a directory that exists only by being named
    os.makedirs(m.path / "localhost/me", exist_ok=True)
    out = subprocess.run(["mv", str(lib / "c:2"), str(m.path / "localhost/me/pirate:latest")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert {str(n) for n in Store(models.root).list()} == {B, "localhost/me/pirate:latest"}
    # onto an existing model: refused
    with pytest.raises(OSError) as info:
        os.rename(m.path / "localhost/me/pirate:latest", lib / "b:1")
    assert info.value.errno in (errno.EEXIST, errno.ENOTEMPTY)
    with pytest.raises(OSError) as info:
        os.rename(lib / "b:1", lib / "not a name")
    assert info.value.errno == errno.EINVAL
