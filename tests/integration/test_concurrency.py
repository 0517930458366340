"""Two shells deleting and copying the same models at once leave a consistent store
(§Deleting and renaming: one lock per store)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading

import pytest

from ollamafs.store import Store

pytestmark = pytest.mark.fuse


def test_concurrent_rm_and_cp_leave_a_consistent_store(store, tiny_gguf, mount, tmp_path):
    for i in range(4):
        other = tmp_path / f"m{i}.gguf"
        other.write_bytes(tiny_gguf.read_bytes() + bytes([i]) * 32)
        store.model(f"registry.ollama.ai/library/m{i}:1", other, system=f"model {i}")
    m = mount(["offline"])
    lib = m.path / "registry.ollama.ai/library"

    def shell(script: str) -> None:
        subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)

    deleter = "; ".join(f"rm -rf '{lib}/m{i}:1'" for i in range(4))
    copier = "; ".join(f"cp -r '{lib}/m{i}:1' '{lib}/c{i}:1'" for i in range(4))
    copier2 = "; ".join(f"cp -r '{lib}/m{i}:1' '{lib}/d{i}:1'" for i in range(4))
    threads = [threading.Thread(target=shell, args=(s,)) for s in (deleter, copier, copier2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)

    records = Store(store.root).list()
    for name, rec in records.items():  # every manifest's blobs exist and verify
        for layer in rec.manifest.all_blobs():
            blob = store.root / "blobs" / layer.digest.filename
            assert blob.exists(), (name, layer.digest)
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer.digest.hex
    # a copy whose source vanished mid-way leaves only its empty directory (made by mkdir)
    listed = {n for n in os.listdir(lib) if os.listdir(lib / n)} if lib.exists() else set()
    assert listed == {r.name.dirname for r in records.values()}
    assert not any(f"m{i}:1" in listed for i in range(4))  # the deletions all happened
    assert not [n for n in os.listdir(store.root / "blobs") if n.startswith(".")]  # no stray temporaries
