"""Tests for ollamafs.vfs: the filesystem semantics driven directly, without FUSE.

Every test builds a small Ollama store under tmp_path (real blob files, real manifests, real GGUF
headers for model layers) and calls the async FileSystem methods through ``trio.run``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import trio
from gguf import GGUFWriter

from ollamafs import modelfile
from ollamafs.errors import OllamaFSError
from ollamafs.names import Digest, ModelName
from ollamafs.store import Store
from ollamafs.store.describe import describe
from ollamafs.vfs import layout
from ollamafs.vfs.fs import ROOT_INO, XATTR_PREFIX, Attr, FileSystem

IMG = "application/vnd.ollama.image."
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MTIME_NS = 1_700_000_000_123_456_789

TOOLS_TEMPLATE = "{{ if .Tools }}[TOOLS]{{ .Tools }}[/TOOLS]{{ end }}{{ .System }}\n{{ .Prompt }}"
SUFFIX_TEMPLATE = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gguf_bytes(tmp: Path, *, pooling: bool = False, name: str = "tiny") -> bytes:
    path = tmp / f"{name}-{pooling}.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_string("general.name", name)
    writer.add_uint32("llama.context_length", 2048)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b"])
    if pooling:
        writer.add_uint32("llama.pooling_type", 1)
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    return data


@dataclass
class Model:
    name: ModelName
    manifest_path: Path
    manifest_bytes: bytes
    layers: list[tuple[str, bytes]]
    config: bytes
    mtime_ns: int
    digests: list[str] = field(default_factory=list)


class StoreBuilder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.models: dict[str, Model] = {}

    def blob(self, data: bytes) -> str:
        digest = sha(data)
        (self.blobs / f"sha256-{digest}").write_bytes(data)
        return digest

    def add(
        self,
        name: str,
        layers: list[tuple[str, bytes]],
        *,
        mtime_ns: int = MTIME_NS,
        skip: tuple[int, ...] = (),
        sizes: dict[int, int] | None = None,
        path_parts: tuple[str, ...] | None = None,
    ) -> Model:
        """Write blobs (layer indexes in ``skip`` are left out) and the manifest of a model."""
        config = json.dumps({"model_format": "gguf", "model_family": "llama", "name": name}).encode()
        entries = []
        for i, (media_type, data) in enumerate(layers):
            digest = sha(data) if i in skip else self.blob(data)
            size = (sizes or {}).get(i, len(data))
            entries.append({"mediaType": media_type, "digest": "sha256:" + digest, "size": size})
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + self.blob(config), "size": len(config)},
            "layers": entries,
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        parsed = ModelName.parse(name)
        path = self.root.joinpath("manifests", *(path_parts or parsed.parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        model = Model(parsed, path, data, layers, config, mtime_ns, [e["digest"][len("sha256:"):] for e in entries])
        self.models[name] = model
        return model


@pytest.fixture
def world(tmp_path: Path) -> tuple[FileSystem, StoreBuilder]:
    """A store with a feature-rich chat model, an embedding model, a code model and a foreign host."""
    b = StoreBuilder(tmp_path / "models")
    work = tmp_path / "work"
    work.mkdir()
    b.add(
        "llama3:latest",
        [
            (IMG + "model", gguf_bytes(work, name="llama3")),
            (IMG + "adapter", b"adapter one"),
            (IMG + "adapter", b"adapter two"),
            (IMG + "projector", b"projector"),
            (IMG + "template", TOOLS_TEMPLATE.encode()),
            (IMG + "system", b"You are helpful."),
            (IMG + "params", b'{"stop":["<|eot|>"],"temperature":0.7}'),
            (IMG + "messages", b'[{"role":"user","content":"hi"}]'),
            (IMG + "license", b"LICENSE ONE"),
            (IMG + "license", b"LICENSE TWO, longer"),
            (IMG + "embed", b"ignored embed layer"),
        ],
        mtime_ns=MTIME_NS,
    )
    b.add(
        "nomic-embed:latest",
        [(IMG + "model", gguf_bytes(work, pooling=True, name="embed")), (IMG + "template", b"{{ .Prompt }}")],
        mtime_ns=MTIME_NS + 1000,
    )
    b.add(
        "alice/coder:v1",
        [(IMG + "model", gguf_bytes(work, name="coder")), (IMG + "prompt", SUFFIX_TEMPLATE.encode())],
        mtime_ns=MTIME_NS + 2000,
    )
    b.add("example.com/Bob/Mixed:Case", [(IMG + "model", gguf_bytes(work, name="mixed"))], mtime_ns=MTIME_NS - 5)
    b.add("nomodel:latest", [(IMG + "system", b"only a system prompt")], mtime_ns=MTIME_NS - 10)
    fs = FileSystem(Store(b.root, listing_ttl=0), uid=1234, gid=5678)
    return fs, b


def run(fn, *args):
    return trio.run(fn, *args)


def lookup_path(fs: FileSystem, path: str) -> Attr:
    attr = None
    ino = ROOT_INO
    for part in path.split("/"):
        attr = run(fs.lookup, ino, part)
        ino = attr.ino
    assert attr is not None
    return attr


def listdir(fs: FileSystem, ino: int) -> list[str]:
    fh = run(fs.opendir, ino)
    try:
        return [entry.name for entry in run(fs.readdir, fh, 0)]
    finally:
        fs.releasedir(fh)


def read_all(fs: FileSystem, ino: int) -> bytes:
    opened = run(fs.open, ino, os.O_RDONLY)
    try:
        return run(fs.read, opened.fh, 0, 1 << 24)
    finally:
        fs.release(opened.fh)


LLAMA = "registry.ollama.ai/library/llama3:latest"


# --- directories ----------------------------------------------------------------------------------


def test_root_lists_hosts(world) -> None:
    fs, _ = world
    assert listdir(fs, ROOT_INO) == ["example.com", "registry.ollama.ai"]


def test_host_lists_namespaces(world) -> None:
    fs, _ = world
    assert listdir(fs, lookup_path(fs, "registry.ollama.ai").ino) == ["alice", "library"]
    assert listdir(fs, lookup_path(fs, "example.com").ino) == ["Bob"]


def test_namespace_lists_model_tag_dirs(world) -> None:
    fs, _ = world
    assert listdir(fs, lookup_path(fs, "registry.ollama.ai/library").ino) == [
        "llama3:latest",
        "nomic-embed:latest",
        "nomodel:latest",
    ]
    assert listdir(fs, lookup_path(fs, "example.com/Bob").ino) == ["Mixed:Case"]


def test_directory_attributes(world) -> None:
    fs, _ = world
    root = run(fs.getattr, ROOT_INO)
    assert stat.S_ISDIR(root.mode) and stat.S_IMODE(root.mode) == 0o555
    assert (root.uid, root.gid) == (1234, 5678)
    assert root.nlink == 2 + 2
    assert root.mtime_ns == MTIME_NS + 2000  # newest manifest below
    ns = lookup_path(fs, "registry.ollama.ai/library")
    assert ns.nlink == 2 + 3
    assert ns.mtime_ns == MTIME_NS + 1000
    model = lookup_path(fs, LLAMA)
    assert stat.S_ISDIR(model.mode)
    assert model.mtime_ns == MTIME_NS


def test_lookup_is_case_insensitive(world) -> None:
    fs, _ = world
    a = lookup_path(fs, LLAMA)
    b = lookup_path(fs, "REGISTRY.Ollama.AI/LIBRARY/Llama3:LATEST")
    assert a.ino == b.ino
    assert lookup_path(fs, "example.com/bob/mixed:case").ino == lookup_path(fs, "EXAMPLE.COM/BOB/MIXED:CASE").ino
    assert lookup_path(fs, LLAMA + "/LICENSE-1").ino == lookup_path(fs, LLAMA + "/license-1").ino
    assert lookup_path(fs, LLAMA + "/modelfile").ino == lookup_path(fs, LLAMA + "/Modelfile").ino


def test_lookup_keeps_the_stored_case_in_listings(world) -> None:
    fs, _ = world
    assert listdir(fs, lookup_path(fs, "EXAMPLE.COM/bob").ino) == ["Mixed:Case"]


@pytest.mark.parametrize(
    "path", ["nohost", "registry.ollama.ai/nons", "registry.ollama.ai/library/llama3:other", LLAMA + "/nofile"]
)
def test_lookup_of_absent_names_is_enoent(world, path: str) -> None:
    fs, _ = world
    with pytest.raises(OllamaFSError) as info:
        lookup_path(fs, path)
    assert info.value.errno == errno.ENOENT


def test_lookup_below_a_file_is_enotdir(world) -> None:
    fs, _ = world
    ino = lookup_path(fs, LLAMA + "/system").ino
    with pytest.raises(OllamaFSError) as info:
        run(fs.lookup, ino, "x")
    assert info.value.errno == errno.ENOTDIR
    with pytest.raises(OllamaFSError) as info:
        run(fs.opendir, ino)
    assert info.value.errno == errno.ENOTDIR


# --- the model directory ------------------------------------------------------------------------------


def test_model_dir_files_per_layer_kind(world) -> None:
    fs, _ = world
    assert listdir(fs, lookup_path(fs, LLAMA).ino) == [
        "model.gguf",
        "adapter.gguf",
        "adapter-1.gguf",
        "projector.gguf",
        "template",
        "system",
        "params.json",
        "messages.json",
        "license",
        "license-1",
        "config.json",
        "manifest.json",
        "Modelfile",
        "generate",
    ]


def test_minimal_model_dirs_still_have_config_manifest_and_modelfile(world) -> None:
    fs, _ = world
    assert listdir(fs, lookup_path(fs, "example.com/Bob/Mixed:Case").ino) == [
        "model.gguf",
        "config.json",
        "manifest.json",
        "Modelfile",
        "generate",
    ]
    assert listdir(fs, lookup_path(fs, "registry.ollama.ai/library/nomodel:latest").ino) == [
        "system",
        "config.json",
        "manifest.json",
        "Modelfile",
        "generate",
    ]
    # the legacy "prompt" media type is shown as the template
    assert listdir(fs, lookup_path(fs, "registry.ollama.ai/alice/coder:v1").ino) == [
        "model.gguf",
        "template",
        "config.json",
        "manifest.json",
        "Modelfile",
        "generate",
    ]


def test_layout_numbering() -> None:
    from ollamafs.store.manifest import Layer, Manifest

    def layer(kind: str, n: int) -> Layer:
        return Layer(IMG + kind, Digest(f"{n:064x}"), n)

    manifest = Manifest(
        config=layer("config", 99),
        layers=(
            layer("license", 1),
            layer("adapter", 2),
            layer("license", 3),
            layer("adapter", 4),
            layer("adapter", 5),
            layer("license", 6),
            Layer("text/plain", Digest(f"{7:064x}"), 7),
        ),
        digest=Digest("e" * 64),
    )
    names = [spec.name for spec in layout.model_files(manifest)]
    assert names == [
        "license",
        "adapter.gguf",
        "license-1",
        "adapter-1.gguf",
        "adapter-2.gguf",
        "license-2",
        "config.json",
        "manifest.json",
        "Modelfile",
        "generate",
    ]


def test_layer_files_have_blob_sizes_and_bytes_and_manifest_mtime(world) -> None:
    fs, b = world
    model = b.models["llama3:latest"]
    names = ["model.gguf", "adapter.gguf", "adapter-1.gguf", "projector.gguf", "template", "system"]
    names += ["params.json", "messages.json", "license", "license-1"]
    for name, (_, data) in zip(names, model.layers):
        attr = lookup_path(fs, f"{LLAMA}/{name}")
        assert stat.S_ISREG(attr.mode) and stat.S_IMODE(attr.mode) == 0o444, name
        assert attr.size == len(data), name
        assert attr.mtime_ns == MTIME_NS, name
        assert (attr.uid, attr.gid) == (1234, 5678)
        assert read_all(fs, attr.ino) == data, name
    config = lookup_path(fs, f"{LLAMA}/config.json")
    assert (config.size, read_all(fs, config.ino)) == (len(model.config), model.config)


def test_manifest_json_is_the_manifest_file(world) -> None:
    fs, b = world
    attr = lookup_path(fs, f"{LLAMA}/manifest.json")
    data = b.models["llama3:latest"].manifest_bytes
    assert attr.size == len(data)
    assert attr.mtime_ns == MTIME_NS
    assert read_all(fs, attr.ino) == data


def test_modelfile_is_the_rendered_description(world) -> None:
    fs, b = world
    store = Store(b.root, listing_ttl=0)
    expected = modelfile.render(describe(store, store.get(ModelName.parse("llama3")))).encode()
    attr = lookup_path(fs, f"{LLAMA}/Modelfile")
    assert attr.size == len(expected)
    assert attr.mtime_ns == MTIME_NS
    assert read_all(fs, attr.ino) == expected
    text = expected.decode()
    assert "# FROM llama3:latest\n" in text
    assert f"FROM {b.blobs}/sha256-{b.models['llama3:latest'].digests[0]}\n" in text
    assert "PARAMETER temperature 0.7\n" in text


def test_reads_at_offsets(world) -> None:
    fs, b = world
    data = b.models["llama3:latest"].layers[9][1]
    attr = lookup_path(fs, f"{LLAMA}/license-1")
    opened = run(fs.open, attr.ino, os.O_RDONLY)
    assert opened.keep_cache is True
    assert run(fs.read, opened.fh, 3, 5) == data[3:8]
    assert run(fs.read, opened.fh, len(data) - 2, 100) == data[-2:]
    assert run(fs.read, opened.fh, len(data) + 10, 100) == b""
    fs.release(opened.fh)
    modelfile_ino = lookup_path(fs, f"{LLAMA}/Modelfile").ino
    whole = read_all(fs, modelfile_ino)
    opened = run(fs.open, modelfile_ino, os.O_RDONLY)
    assert run(fs.read, opened.fh, 10, 20) == whole[10:30]
    fs.release(opened.fh)


def test_file_inodes_are_stable_and_distinct(world) -> None:
    fs, _ = world
    inos = {name: lookup_path(fs, f"{LLAMA}/{name}").ino for name in ("license", "license-1", "Modelfile")}
    assert len(set(inos.values())) == 3
    assert lookup_path(fs, f"{LLAMA}/license").ino == inos["license"]


@pytest.mark.parametrize(
    "flags",
    [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_CREAT],
)
@pytest.mark.parametrize("name", ["model.gguf", "manifest.json"])
def test_open_for_writing_is_erofs(world, flags: int, name: str) -> None:
    fs, _ = world
    ino = lookup_path(fs, f"{LLAMA}/{name}").ino
    with pytest.raises(OllamaFSError) as info:
        run(fs.open, ino, flags)
    assert info.value.errno == errno.EROFS


def test_open_a_directory_is_eisdir(world) -> None:
    fs, _ = world
    with pytest.raises(OllamaFSError) as info:
        run(fs.open, lookup_path(fs, LLAMA).ino, os.O_RDONLY)
    assert info.value.errno == errno.EISDIR


def test_missing_blob_is_eio_naming_the_digest(world) -> None:
    fs, b = world
    model = b.add("broken:latest", [(IMG + "model", b"weights not here"), (IMG + "license", b"L")], skip=(0,))
    attr = lookup_path(fs, "registry.ollama.ai/library/broken:latest/model.gguf")
    assert attr.size == len(b"weights not here")  # the manifest's size while the blob is absent
    with pytest.raises(OllamaFSError) as info:
        run(fs.open, attr.ino, os.O_RDONLY)
    assert info.value.errno == errno.EIO
    assert model.digests[0] in str(info.value)


def test_blob_of_the_wrong_size_is_eio(world) -> None:
    fs, b = world
    b.add("short:latest", [(IMG + "model", b"12345")], sizes={0: 9})
    attr = lookup_path(fs, "registry.ollama.ai/library/short:latest/model.gguf")
    assert attr.size == 5  # what is on disk
    with pytest.raises(OllamaFSError) as info:
        run(fs.open, attr.ino, os.O_RDONLY)
    assert info.value.errno == errno.EIO
    assert sha(b"12345") in str(info.value)


def test_readdir_of_a_model_with_a_missing_blob_still_lists_it(world) -> None:
    fs, b = world
    b.add("gone:latest", [(IMG + "model", b"absent weights"), (IMG + "system", b"sys")], skip=(0,))
    ino = lookup_path(fs, "registry.ollama.ai/library/gone:latest").ino
    fh = run(fs.opendir, ino)
    entries = {e.name: e.attr for e in run(fs.readdir, fh, 0)}
    fs.releasedir(fh)
    assert list(entries) == ["model.gguf", "system", "config.json", "manifest.json", "Modelfile", "generate"]
    assert entries["model.gguf"].size == len(b"absent weights")
    assert entries["system"].size == 3


# --- extended attributes ---------------------------------------------------------------------------


def xattr(fs: FileSystem, path: str, name: str) -> bytes:
    return run(fs.getxattr, lookup_path(fs, path).ino, XATTR_PREFIX + name)


def all_xattrs(fs: FileSystem, ino: int) -> dict[str, bytes]:
    return {name: run(fs.getxattr, ino, name) for name in run(fs.listxattr, ino)}


def test_model_dir_xattrs(world) -> None:
    fs, b = world
    model = b.models["llama3:latest"]
    ino = lookup_path(fs, LLAMA).ino
    total = len(model.config) + sum(len(data) for _, data in model.layers)
    assert all_xattrs(fs, ino) == {
        "user.ollama.name": b"registry.ollama.ai/library/llama3:latest",
        "user.ollama.digest": f"sha256:{sha(model.manifest_bytes)}".encode(),
        "user.ollama.size": str(total).encode(),
        "user.ollama.capabilities": b"completion,tools,vision",
    }
    assert run(fs.listxattr, ino) == [
        "user.ollama.name",
        "user.ollama.digest",
        "user.ollama.size",
        "user.ollama.capabilities",
    ]


def test_xattr_name_keeps_the_stored_case(world) -> None:
    fs, _ = world
    assert xattr(fs, "example.com/bob/mixed:case", "name") == b"example.com/Bob/Mixed:Case"


@pytest.mark.parametrize(
    ("path", "capabilities"),
    [
        (LLAMA, b"completion,tools,vision"),
        ("registry.ollama.ai/library/nomic-embed:latest", b""),
        ("registry.ollama.ai/alice/coder:v1", b"completion,insert"),
        ("example.com/Bob/Mixed:Case", b"completion"),
        ("registry.ollama.ai/library/nomodel:latest", b""),
    ],
)
def test_capabilities(world, path: str, capabilities: bytes) -> None:
    fs, _ = world
    assert xattr(fs, path, "capabilities") == capabilities


def test_layer_file_xattrs(world) -> None:
    fs, b = world
    model = b.models["llama3:latest"]
    license_ino = lookup_path(fs, f"{LLAMA}/license-1").ino
    assert all_xattrs(fs, license_ino) == {
        "user.ollama.digest": f"sha256:{model.digests[9]}".encode(),
        "user.ollama.media_type": b"application/vnd.ollama.image.license",
    }
    assert run(fs.listxattr, license_ino) == ["user.ollama.digest", "user.ollama.media_type"]
    assert xattr(fs, f"{LLAMA}/model.gguf", "media_type") == b"application/vnd.ollama.image.model"
    assert xattr(fs, f"{LLAMA}/config.json", "digest") == f"sha256:{sha(model.config)}".encode()
    assert xattr(fs, f"{LLAMA}/config.json", "media_type") == CONFIG_MEDIA_TYPE.encode()
    assert xattr(fs, f"{LLAMA}/manifest.json", "digest") == f"sha256:{sha(model.manifest_bytes)}".encode()
    assert xattr(fs, f"{LLAMA}/manifest.json", "media_type") == MANIFEST_MEDIA_TYPE.encode()
    assert xattr(fs, "registry.ollama.ai/alice/coder:v1/template", "media_type") == (
        b"application/vnd.ollama.image.prompt"
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (LLAMA, "user.ollama.nope"),
        (LLAMA, "security.selinux"),
        (LLAMA + "/license", "user.ollama.name"),
        (LLAMA + "/Modelfile", "user.ollama.digest"),
        ("registry.ollama.ai", "user.ollama.name"),
    ],
)
def test_getxattr_of_unknown_is_enodata(world, path: str, name: str) -> None:
    fs, _ = world
    with pytest.raises(OllamaFSError) as info:
        run(fs.getxattr, lookup_path(fs, path).ino, name)
    assert info.value.errno == errno.ENODATA


def test_plain_dirs_have_no_xattrs(world) -> None:
    fs, _ = world
    assert run(fs.listxattr, ROOT_INO) == []
    assert run(fs.listxattr, lookup_path(fs, LLAMA + "/Modelfile").ino) == []


# --- lookup counts and forget -------------------------------------------------------------------------


def test_forget_drops_nodes(world) -> None:
    fs, _ = world
    ino = lookup_path(fs, f"{LLAMA}/system").ino
    assert run(fs.lookup, lookup_path(fs, LLAMA).ino, "system").ino == ino  # second lookup
    fs.forget([(ino, 1)])
    assert run(fs.getattr, ino).ino == ino  # one reference left
    fs.forget([(ino, 1)])
    with pytest.raises(OllamaFSError) as info:
        run(fs.getattr, ino)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OllamaFSError):
        run(fs.open, ino, os.O_RDONLY)
    # looking it up again works (with a fresh node)
    assert read_all(fs, lookup_path(fs, f"{LLAMA}/system").ino) == b"You are helpful."


def test_forget_never_raises_and_keeps_the_root(world) -> None:
    fs, _ = world
    fs.forget([(ROOT_INO, 100), (987654, 1)])
    assert run(fs.getattr, ROOT_INO).ino == ROOT_INO
    assert listdir(fs, ROOT_INO) == ["example.com", "registry.ollama.ai"]


def test_open_handle_survives_forget(world) -> None:
    fs, _ = world
    ino = lookup_path(fs, f"{LLAMA}/system").ino
    opened = run(fs.open, ino, os.O_RDONLY)
    fs.forget([(ino, 1)])
    assert run(fs.read, opened.fh, 0, 100) == b"You are helpful."
    fs.release(opened.fh)


def test_remember_counts_a_readdir_entry(world) -> None:
    fs, _ = world
    ino = lookup_path(fs, "registry.ollama.ai").ino
    fs.remember(ino)
    fs.forget([(ino, 1)])
    assert run(fs.getattr, ino).ino == ino
    fs.forget([(ino, 1)])
    with pytest.raises(OllamaFSError):
        run(fs.getattr, ino)


# --- readdir cookies ------------------------------------------------------------------------------


def test_readdir_cookies_are_stable(world) -> None:
    fs, b = world
    ns_ino = lookup_path(fs, "registry.ollama.ai/library").ino
    fh = run(fs.opendir, ns_ino)
    full = run(fs.readdir, fh, 0)
    assert [(e.name, e.next_id) for e in full] == [
        ("llama3:latest", 1),
        ("nomic-embed:latest", 2),
        ("nomodel:latest", 3),
    ]
    # a model appearing after opendir does not shift the snapshot
    b.add("aaa-first:latest", [(IMG + "system", b"new")])
    for start in range(len(full) + 1):
        part = run(fs.readdir, fh, start)
        expected = [(e.name, e.next_id, e.attr.ino) for e in full[start:]]
        assert [(e.name, e.next_id, e.attr.ino) for e in part] == expected
    fs.releasedir(fh)
    fs.store.invalidate()  # as when the listing's one-second cache has run out (§Store listing)
    assert listdir(fs, ns_ino)[0] == "aaa-first:latest"


def test_readdir_entries_carry_lookup_attributes(world) -> None:
    fs, b = world
    model_ino = lookup_path(fs, LLAMA).ino
    fh = run(fs.opendir, model_ino)
    entries = run(fs.readdir, fh, 0)
    fs.releasedir(fh)
    for entry in entries:
        assert entry.attr.ino == lookup_path(fs, f"{LLAMA}/{entry.name}").ino
        assert entry.attr.size == run(fs.getattr, entry.attr.ino).size
    assert [e.next_id for e in entries] == list(range(1, len(entries) + 1))


def test_bad_handles_are_ebadf(world) -> None:
    fs, _ = world
    with pytest.raises(OllamaFSError) as info:
        run(fs.readdir, 4242, 0)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OllamaFSError) as info:
        run(fs.read, 4242, 0, 10)
    assert info.value.errno == errno.EBADF
    fh = run(fs.opendir, ROOT_INO)
    with pytest.raises(OllamaFSError) as info:
        run(fs.read, fh, 0, 10)  # a directory handle is not a file handle
    assert info.value.errno == errno.EBADF
    fs.releasedir(fh)
    fs.release(4242)  # unknown handles are ignored


# --- the store changing underneath -----------------------------------------------------------------


def test_new_model_is_visible_without_remount(world) -> None:
    fs, b = world
    assert "zeta:latest" not in listdir(fs, lookup_path(fs, "registry.ollama.ai/library").ino)
    b.add("zeta:latest", [(IMG + "system", b"z")])
    assert "zeta:latest" in listdir(fs, lookup_path(fs, "registry.ollama.ai/library").ino)
    assert read_all(fs, lookup_path(fs, "registry.ollama.ai/library/zeta:latest/system").ino) == b"z"


def test_moved_tag_shows_the_new_layers(world) -> None:
    fs, b = world
    old = lookup_path(fs, "registry.ollama.ai/library/nomodel:latest/system")
    b.add("nomodel:latest", [(IMG + "system", b"a different system prompt")], mtime_ns=MTIME_NS + 99)
    new = lookup_path(fs, "registry.ollama.ai/library/nomodel:latest/system")
    assert new.ino != old.ino
    assert read_all(fs, new.ino) == b"a different system prompt"
    assert new.mtime_ns == MTIME_NS + 99
    assert lookup_path(fs, "registry.ollama.ai/library/nomodel:latest").mtime_ns == MTIME_NS + 99


# --- docs/SEMANTICS.md paragraphs not covered above ----------------------------------------------


def test_host_and_namespace_exist_only_with_a_valid_model(world, caplog: pytest.LogCaptureFixture) -> None:
    """§Tree: a host or namespace directory exists only while a valid model lies under it."""
    fs, b = world
    bad = b.root / "manifests" / "bad.example" / "ns" / "m" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not json")
    invalid = b.root / "manifests" / "registry.ollama.ai" / "-bad" / "m" / "latest"
    invalid.parent.mkdir(parents=True)
    invalid.write_bytes(b.models["nomodel:latest"].manifest_bytes)
    assert listdir(fs, ROOT_INO) == ["example.com", "registry.ollama.ai"]
    assert listdir(fs, lookup_path(fs, "registry.ollama.ai").ino) == ["alice", "library"]
    with pytest.raises(OllamaFSError) as info:
        run(fs.lookup, ROOT_INO, "bad.example")
    assert info.value.errno == errno.ENOENT
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert any("bad.example" in w for w in warnings) and any("-bad" in w for w in warnings)


def test_names_differing_only_in_case_show_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """§Names: two manifests whose paths differ only by case count once (the first in sorted order)."""
    b = StoreBuilder(tmp_path)
    b.add("Llama3:latest", [(IMG + "system", b"upper")])
    b.add("llama3:latest", [(IMG + "system", b"lower")])
    fs = FileSystem(Store(tmp_path, listing_ttl=0))
    assert listdir(fs, lookup_path(fs, "registry.ollama.ai/library").ino) == ["Llama3:latest"]
    assert read_all(fs, lookup_path(fs, "registry.ollama.ai/library/llama3:latest/system").ino) == b"upper"
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1


def test_lookup_miss_rescans_a_cached_listing(tmp_path: Path) -> None:
    """§Store listing: a lookup that misses the cached listing rescans the store at once."""
    b = StoreBuilder(tmp_path)
    b.add("first:latest", [(IMG + "system", b"1")])
    fs = FileSystem(Store(tmp_path, listing_ttl=3600))
    assert listdir(fs, ROOT_INO) == ["registry.ollama.ai"]
    b.add("example.org/new/second:v2", [(IMG + "system", b"22")])
    attr = lookup_path(fs, "example.org/new/second:v2/system")
    assert read_all(fs, attr.ino) == b"22"


def test_file_and_directory_attribute_details(world) -> None:
    """§Attributes: nlink, blocks and kernel cache lifetimes."""
    fs, b = world
    model_dir = lookup_path(fs, LLAMA)
    assert (model_dir.nlink, model_dir.entry_timeout, model_dir.attr_timeout) == (2, 1.0, 1.0)
    blob = lookup_path(fs, f"{LLAMA}/license-1")
    assert (blob.nlink, blob.entry_timeout, blob.attr_timeout) == (1, 0.0, 300.0)
    assert blob.blocks == 1 and blob.size == len(b"LICENSE TWO, longer")
    b.add("big:latest", [(IMG + "license", b"x" * 1025)])
    assert lookup_path(fs, "registry.ollama.ai/library/big:latest/license").blocks == 3
    assert Attr(1, 0, 1, 1024, 0, 0, 0, 0.0, 0.0).blocks == 2
    assert Attr(1, 0, 1, 0, 0, 0, 0, 0.0, 0.0).blocks == 0
    manifest = lookup_path(fs, f"{LLAMA}/manifest.json")
    assert (manifest.entry_timeout, manifest.attr_timeout) == (0.0, 1.0)


def test_rewritten_manifest_gives_new_modelfile_and_manifest_inodes(world) -> None:
    """§Attributes: Modelfile and manifest.json inodes are keyed by the manifest digest."""
    fs, b = world
    name = "registry.ollama.ai/library/nomodel:latest"
    old = {f: lookup_path(fs, f"{name}/{f}").ino for f in ("Modelfile", "manifest.json", "config.json")}
    old_text = read_all(fs, old["Modelfile"])
    model = b.add("nomodel:latest", [(IMG + "system", b"changed system")], mtime_ns=MTIME_NS + 7)
    new = {f: lookup_path(fs, f"{name}/{f}").ino for f in ("Modelfile", "manifest.json", "config.json")}
    assert new["Modelfile"] != old["Modelfile"]
    assert new["manifest.json"] != old["manifest.json"]
    assert read_all(fs, new["manifest.json"]) == model.manifest_bytes
    new_text = read_all(fs, new["Modelfile"])
    assert b"SYSTEM changed system\n" in new_text and new_text != old_text
    # the old Modelfile inode still reads its own version's text
    assert read_all(fs, old["Modelfile"]) == old_text


def test_manifest_json_of_a_changed_manifest_is_enoent(world) -> None:
    """§Reading: if the manifest changed since the lookup, opening the old manifest.json is ENOENT."""
    fs, b = world
    ino = lookup_path(fs, "registry.ollama.ai/library/nomodel:latest/manifest.json").ino
    b.add("nomodel:latest", [(IMG + "system", b"another system prompt")])
    with pytest.raises(OllamaFSError) as info:
        run(fs.open, ino, os.O_RDONLY)
    assert info.value.errno == errno.ENOENT


def test_modelfile_needing_a_missing_blob_is_eio(world) -> None:
    """§Modelfile: a layer blob it needs that is missing makes it EIO; the rest still reads."""
    fs, b = world
    model = b.add("halfgone:latest", [(IMG + "model", b"weights"), (IMG + "system", b"sys text")], skip=(1,))
    with pytest.raises(OllamaFSError) as info:
        lookup_path(fs, "registry.ollama.ai/library/halfgone:latest/Modelfile")
    assert info.value.errno == errno.EIO
    assert model.digests[1] in str(info.value)
    assert read_all(fs, lookup_path(fs, "registry.ollama.ai/library/halfgone:latest/model.gguf").ino) == b"weights"


def test_missing_model_blob_makes_capabilities_eio(world) -> None:
    """§Extended attributes: a missing model blob makes capabilities EIO; the others still answer."""
    fs, b = world
    model = b.add("noblob:latest", [(IMG + "model", b"weights")], skip=(0,))
    path = "registry.ollama.ai/library/noblob:latest"
    with pytest.raises(OllamaFSError) as info:
        xattr(fs, path, "capabilities")
    assert info.value.errno == errno.EIO
    assert model.digests[0] in str(info.value)
    assert xattr(fs, path, "name") == b"registry.ollama.ai/library/noblob:latest"
    assert xattr(fs, path, "digest") == f"sha256:{sha(model.manifest_bytes)}".encode()


def test_thinking_capability(world, tmp_path: Path) -> None:
    """§Extended attributes: thinking when the template references .Think."""
    fs, b = world
    b.add(
        "thinker:latest",
        [
            (IMG + "model", gguf_bytes(tmp_path, name="thinker")),
            (IMG + "template", b"{{ if .Think }}T{{ end }}{{ .Prompt }}"),
        ],
    )
    assert xattr(fs, "registry.ollama.ai/library/thinker:latest", "capabilities") == b"completion,thinking"


def test_model_that_is_not_gguf_has_no_capabilities_but_eio(world) -> None:
    fs, b = world
    b.add("notgguf:latest", [(IMG + "model", b"definitely not gguf")])
    with pytest.raises(OllamaFSError) as info:
        xattr(fs, "registry.ollama.ai/library/notgguf:latest", "capabilities")
    assert info.value.errno == errno.EIO


def test_refuse_write_is_erofs(world) -> None:
    """§Read-only: every change is EROFS."""
    fs, _ = world
    ino = lookup_path(fs, LLAMA).ino
    with pytest.raises(OllamaFSError) as info:
        fs.refuse_write("unlink", ino, "model.gguf")
    assert info.value.errno == errno.EROFS
    assert "/registry.ollama.ai/library/llama3:latest/model.gguf" in str(info.value)
