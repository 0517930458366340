"""`ollamafs list/rm/cp/mv/prune/push` on a real store (and a real registry for push)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ollamafs.store import Store
from tests.integration.registry_fixtures import registry_server  # noqa: F401 - fixture


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ollamafs", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def two_models(store, tiny_gguf, tmp_path):
    store.model("registry.ollama.ai/library/a:1", tiny_gguf, system="A")
    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_gguf.read_bytes() + b"\0" * 16)
    store.model("registry.ollama.ai/alice/b:latest", other, system="B")
    return store


def blobs(store) -> set[str]:
    return set(os.listdir(store.root / "blobs"))


def test_list_cp_mv_rm(two_models):
    s = str(two_models.root)
    out = cli("list", "--store", s)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert {line.split()[0] for line in lines[1:]} == {"a:1", "alice/b:latest"}
    before = blobs(two_models)
    assert cli("cp", "--store", s, "a:1", "c:copy").returncode == 0
    assert blobs(two_models) == before  # a copy costs no blob
    assert cli("cp", "--store", s, "a:1", "c:copy").returncode == 1  # exists
    assert cli("mv", "--store", s, "c:copy", "localhost/me/c:moved").returncode == 0
    names = {str(n) for n in Store(s).list()}
    assert "localhost/me/c:moved" in names and "registry.ollama.ai/library/c:copy" not in names
    assert blobs(two_models) == before
    # rm of a model whose blobs another model shares frees only what nothing else uses
    assert cli("rm", "--store", s, "a:1").returncode == 0
    assert blobs(two_models) == before  # c:moved still uses them all
    assert cli("rm", "--store", s, "localhost/me/c:moved").returncode == 0
    assert len(blobs(two_models)) < len(before)
    assert not (two_models.root / "manifests/localhost").exists()  # empty dirs go too
    out = cli("rm", "--store", s, "nothing:here")
    assert out.returncode == 3 and "not found" in out.stderr


def test_prune_removes_unreferenced_and_partials(two_models):
    s = str(two_models.root)
    b = two_models.root / "blobs"
    (b / ("sha256-" + "ab" * 32)).write_bytes(b"orphan")
    old = b / ("sha256-" + "cd" * 32 + "-partial")
    old.write_bytes(b"left")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (b / ("sha256-" + "ef" * 32 + "-partial")).write_bytes(b"a running pull's")  # written just now
    held = b / ("sha256-" + "12" * 32)
    held.write_bytes(b"unreferenced but open")
    before = blobs(two_models)
    with open(held, "rb"):  # an open handle keeps it
        out = cli("prune", "--store", s)
    assert out.returncode == 0, out.stderr
    assert before - blobs(two_models) == {"sha256-" + "ab" * 32, "sha256-" + "cd" * 32 + "-partial"}
    for record in Store(s).list().values():  # every manifest still verifies
        for layer in record.manifest.all_blobs():
            assert (two_models.root / "blobs" / layer.digest.filename).exists()


@pytest.mark.registry
def test_push_then_pull_back(two_models, registry_server, tmp_path):  # noqa: F811
    s = str(two_models.root)
    name = f"{registry_server.host}/alice/b:latest"
    assert cli("cp", "--store", s, "alice/b:latest", name).returncode == 0
    out = cli("push", "--insecure", "--store", s, name)
    assert out.returncode == 0, out.stderr
    assert "success" in out.stderr
    empty = tmp_path / "empty"
    out = cli("pull", "--insecure", "--store", str(empty), name)
    assert out.returncode == 0, out.stderr
    (pushed,) = [r for n, r in Store(s).list().items() if str(n) == name]
    (pulled,) = Store(empty).list().values()
    assert [l.digest for l in pulled.manifest.all_blobs()] == [l.digest for l in pushed.manifest.all_blobs()]
    for layer in pulled.manifest.all_blobs():
        assert (empty / "blobs" / layer.digest.filename).read_bytes() == (two_models.root / "blobs" / layer.digest.filename).read_bytes()


@pytest.mark.registry
@pytest.mark.fuse
def test_push_from_the_mount_with_setfattr(two_models, registry_server, mount, tmp_path):  # noqa: F811
    """§Pushing: setfattr -n user.ollama.push -v 1 MODEL_DIR pushes the model to its registry."""
    s = str(two_models.root)
    name = f"{registry_server.host}/alice/b:pushed"
    assert cli("cp", "--store", s, "alice/b:latest", name).returncode == 0
    m = mount(["insecure"])
    d = m.path / registry_server.host / "alice" / "b:pushed"
    out = subprocess.run(["setfattr", "-n", "user.ollama.push", "-v", "1", str(d)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pushed" in m.log()
    empty = tmp_path / "empty2"
    assert cli("pull", "--insecure", "--store", str(empty), name).returncode == 0
    (pulled,) = Store(empty).list().values()
    (pushed,) = [r for n, r in Store(s).list().items() if str(n) == name]
    assert [l.digest for l in pulled.manifest.all_blobs()] == [l.digest for l in pushed.manifest.all_blobs()]
