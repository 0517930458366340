"""Filesystem semantics, with no pyfuse3 import: inodes, lookups, listings, handles, xattrs.

Driven directly by unit tests and, in a mount, by :mod:`ollamafs.fuse_ops`.  Every method is
async; blocking work (walking the store, reading small layers, parsing GGUF headers) runs in
worker threads behind one limiter.  What each operation does is written in docs/SEMANTICS.md.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import trio

from .. import modelfile
from ..errors import (
    IntegrityError,
    InvalidName,
    MissingBlob,
    NoAttribute,
    NotFound,
    NotSupported,
    OllamaFSError,
    ReadOnly,
    Refused,
)
from ..inference.sessions import session_of
from ..gguf_meta import GGUFError, is_embedding_model, read_metadata
from ..names import HOST, NAMESPACE, Digest, ModelName, is_valid_part
from ..store import ModelRecord, Store
from ..store import manifest as mf
from ..store.describe import describe
from ..store.prune import remove_unreferenced
from . import layout

if TYPE_CHECKING:
    from ..inference.sessions import Generator
    from ..pulls import PullManager

log = logging.getLogger(__name__)

FOLIO_MAX = 2 << 20  # the largest page-cache folio on x86-64 and arm64 (4 KiB pages): PMD size

ROOT_INO = 1
DIR, MODEL_DIR, FILE = "dir", "model", "file"

# Kernel cache lifetimes (seconds).  Names can change at any time (tags move, Ollama writes
# manifests), so entries are revalidated often; a blob file's inode is keyed by its digest and
# never changes content, so its attributes and pages may be cached long.
DIR_TIMEOUT = 1.0
FILE_ENTRY_TIMEOUT = 0.0
BLOB_ATTR_TIMEOUT = 300.0
XATTR_PREFIX = "user.ollama."
MISS_MAX_AGE = 0.0
UNLINK_GRACE = 10.0
COPY_GRACE = 10.0  # seconds after its last file a model being copied into lists only what was copied  # seconds unlinked files of a model stay hidden waiting for its rmdir


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    size: int
    mtime_ns: int
    uid: int
    gid: int
    entry_timeout: float
    attr_timeout: float

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


@dataclass(frozen=True, slots=True)
class Opened:
    fh: int
    keep_cache: bool
    direct_io: bool = False
    nonseekable: bool = False


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    attr: Attr
    next_id: int


@dataclass(eq=False, slots=True)
class Node:
    ino: int
    kind: str
    key: tuple
    name: str
    parent: int
    model: ModelName | None = None
    spec: layout.FileSpec | None = None
    record: ModelRecord | None = None  # the manifest the node was found under
    nlookup: int = 0
    size: int | None = None  # cached size of a blob file (immutable per inode)


@dataclass(slots=True)
class _Tree:
    """The store's listing as nested directories, keys case-folded."""

    hosts: dict[str, tuple[str, dict[str, tuple[str, dict[str, ModelRecord]]]]] = field(default_factory=dict)
    mtime_ns: dict[tuple, int] = field(default_factory=dict)

    @classmethod
    def build(cls, listing: dict[ModelName, ModelRecord], remotes: list[ModelRecord] = ()) -> _Tree:
        tree = cls()
        records = dict(listing)
        for record in remotes:
            records.setdefault(record.name, record)
        for name, record in records.items():
            h, n, d = name.host.lower(), name.namespace.lower(), name.dirname.lower()
            host = tree.hosts.setdefault(h, (name.host, {}))
            ns = host[1].setdefault(n, (name.namespace, {}))
            ns[1][d] = record
            for key in ((), (h,), (h, n)):
                tree.mtime_ns[key] = max(tree.mtime_ns.get(key, 0), record.mtime_ns)
        return tree

    def children(self, key: tuple) -> list[tuple[str, tuple, ModelRecord | None]]:
        """(display name, child key, record for model dirs) of a directory key, sorted."""
        if key == ():
            out = [(disp, (h,), None) for h, (disp, _) in self.hosts.items()]
        elif len(key) == 1:
            entry = self.hosts.get(key[0])
            out = [(disp, (*key, n), None) for n, (disp, _) in entry[1].items()] if entry else []
        elif len(key) == 2:
            host = self.hosts.get(key[0])
            ns = host[1].get(key[1]) if host else None
            out = [(r.name.dirname, (*key, d), r) for d, r in ns[1].items()] if ns else []
        else:
            out = []
        return sorted(out, key=lambda e: e[0])

    def record(self, key: tuple) -> ModelRecord | None:
        host = self.hosts.get(key[0])
        ns = host[1].get(key[1]) if host else None
        return ns[1].get(key[2]) if ns else None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request (from the FUSE request context)."""

    uid: int = 0
    pid: int = 0


@dataclass(slots=True)
class _Handle:
    node: Node
    fd: int = -1
    data: bytes | None = None
    # generate: the prompt being written, and the exchange whose answer this handle reads
    flags: int = 0
    key: tuple = ()
    prompt: bytearray | None = None
    exchange: object | None = None
    # a Modelfile being written: its text, and whether it changed since the last flush
    draft: bytearray | None = None
    dirty: bool = False
    pid: int = 0
    # a file copied into a new model directory (cp -r): a temporary file in blobs/
    upload: Path | None = None
    sink: bool = False  # generate copied by cp -r: written bytes are dropped
    copying: bool = False  # a Modelfile created as one of the files of a copy
    storing: object | None = None  # the pull job of a blob read while still being stored


@dataclass(slots=True)
class _DirHandle:
    node: Node
    entries: list[tuple[str, tuple, ModelRecord | None, layout.FileSpec | None]]
    pid: int = 0


class FileSystem:
    """The semantics of one mount over one store."""

    def __init__(
        self,
        store: Store,
        *,
        pulls: PullManager | None = None,
        generator: Generator | None = None,
        uid: int | None = None,
        gid: int | None = None,
        read_in_thread: bool = False,
        max_threads: int = 8,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pulls = pulls
        self.generator = generator
        self.started_ns = time.time_ns()
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.read_in_thread = read_in_thread
        self.limiter = trio.CapacityLimiter(max_threads)
        self._clock = clock
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple, int] = {}
        self._next_ino = ROOT_INO + 1
        self._handles: dict[int, _Handle | _DirHandle] = {}
        self._next_fh = 1
        self._tree: _Tree | None = None
        self._tree_src: object = None
        self._rendered: OrderedDict[tuple, bytes] = OrderedDict()
        self._made: dict[tuple, str] = {}
        self._staged: dict[tuple, ModelName] = {}
        self._copies: dict[tuple, dict[str, mf.Layer | None]] = {}  # model key -> files cp -r wrote
        self._copy_touched: dict[tuple, float] = {}
        self._copy_owner: dict[tuple, int] = {}  # the pid filling it: only it sees the filtered view
        self._interim: dict[tuple, list[Digest]] = {}  # configs of manifests written mid-copy  # model dirs made by mkdir, until their Modelfile  # host/namespace dirs made by mkdir, until used
        self._unlinked: dict[tuple, list] = {}  # model key -> [when, names rm -r unlinked]
        self._gguf: OrderedDict[Digest, dict] = OrderedDict()
        root = Node(ROOT_INO, DIR, (), "", ROOT_INO, nlookup=1)
        self._nodes[ROOT_INO] = root
        self._by_key[()] = ROOT_INO

    # ---- helpers ---------------------------------------------------------------------
    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def tree(self, max_age: float | None = None) -> _Tree:
        listing = self.store.cached_listing(max_age)
        if listing is None:
            listing = await self._run(self.store.list, max_age)
        # A listing's id() can be reused by a later one once it is freed: compare generations.
        src = (self.store.generation, self.pulls.version if self.pulls else 0)
        if src != self._tree_src:
            self._tree = _Tree.build(listing, self.pulls.remotes() if self.pulls else [])
            self._tree_src = src
        assert self._tree is not None
        return self._tree

    def node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise NotFound(f"inode {ino} is not known (forgotten or never looked up)") from None

    def _intern(self, key: tuple, **fields) -> Node:
        ino = self._by_key.get(key)
        if ino is not None:
            node = self._nodes[ino]
            if fields.get("record") is not None:
                node.record = fields["record"]
            return node
        ino = self._next_ino
        self._next_ino += 1
        node = Node(ino=ino, key=key, **fields)
        self._nodes[ino] = node
        self._by_key[key] = ino
        return node

    async def _record(self, node: Node) -> ModelRecord:
        """The model's current manifest (fresh), for a model directory node or a file in one."""
        assert node.model is not None
        record = self.store.peek(node.model)
        if record is None:
            try:
                record = await self._run(self.store.get, node.model)
            except NotFound:
                if self.pulls is None:
                    raise
                record = await self.pulls.remote(node.model)
        node.record = record
        return record

    def _dir_attr(self, ino: int, mtime_ns: int, subdirs: int, writable: bool = False) -> Attr:
        mode = stat.S_IFDIR | (0o755 if writable else 0o555)
        return Attr(ino, mode, 2 + subdirs, 4096, mtime_ns, self.uid, self.gid, DIR_TIMEOUT, DIR_TIMEOUT)

    async def _file_size(self, node: Node) -> int:
        spec = node.spec
        assert spec is not None and node.record is not None
        if spec.kind == layout.BLOB:
            if node.size is None:
                size = self.store.blob_size(spec.digest)  # one stat: inline
                if size is None:
                    return spec.size  # not local: the manifest's size
                node.size = size
            return node.size
        if spec.kind == layout.MANIFEST:
            if node.size is None:
                node.size = len(await self._run(self.store.read_manifest_bytes, node.record))
            return node.size
        if not self._renderable(node.record):
            return 0  # a remote model's text layers are not here yet: unknown until opened
        return len(await self.render_modelfile(node.record))

    def _renderable(self, record: ModelRecord) -> bool:
        """Whether the Modelfile can be rendered without pulling anything."""
        if record.remote is None or (record.name, record.manifest.digest) in self._rendered:
            return True
        text_kinds = (mf.TEMPLATE, mf.SYSTEM, mf.PARAMS, mf.MESSAGES, mf.LICENSE)
        return all(self.store.blob_size(layer.digest) == layer.size
                   for layer in record.manifest.layers if layer.kind in text_kinds)

    # ---- attributes ------------------------------------------------------------------
    async def getattr(self, ino: int) -> Attr:
        node = self.node(ino)
        if node.kind == DIR:
            tree = await self.tree()
            return self._dir_attr(ino, tree.mtime_ns.get(node.key, self.started_ns), len(tree.children(node.key)))
        if node.kind == MODEL_DIR:
            record = node.record
            try:
                record = await self._record(node)
            except NotFound:
                if node.key in self._staged:
                    return self._dir_attr(ino, self.started_ns, 0, writable=True)
                if record is None:
                    raise
            assert record is not None
            return self._dir_attr(ino, record.mtime_ns, 0)
        if node.spec is not None and node.spec.kind == layout.STATUS:
            return Attr(ino, stat.S_IFREG | 0o444, 1, 0, time.time_ns(), self.uid, self.gid, 0.0, 0.0)
        if node.spec is not None and node.spec.kind == layout.DRAFT:
            return Attr(ino, stat.S_IFREG | 0o644, 1, 0, time.time_ns(), self.uid, self.gid, 0.0, 0.0)
        if node.spec is not None and node.spec.kind == layout.GENERATE:
            assert node.record is not None
            return Attr(ino, stat.S_IFREG | 0o666, 1, 0, node.record.mtime_ns, self.uid, self.gid, 0.0, 0.0)
        assert node.spec is not None and node.record is not None
        size = await self._file_size(node)
        timeout = BLOB_ATTR_TIMEOUT if node.spec.kind != layout.MANIFEST else 1.0
        perm = 0o644 if node.spec.kind == layout.MODELFILE else 0o444  # a Modelfile can be rewritten
        return Attr(
            ino, stat.S_IFREG | perm, 1, size, node.record.mtime_ns, self.uid, self.gid, FILE_ENTRY_TIMEOUT, timeout
        )

    async def render_modelfile(self, record: ModelRecord) -> bytes:
        """The Modelfile text of a model version (cached per manifest digest)."""
        key = (record.name, record.manifest.digest)
        hit = self._rendered.get(key)
        if hit is not None:
            self._rendered.move_to_end(key)
            return hit
        if record.remote is not None and self.pulls is not None:
            await self.pulls.ensure_text_layers(record)
        description = await self._run(describe, self.store, record)
        text = modelfile.render(description).encode()
        self._rendered[key] = text
        while len(self._rendered) > 4096:
            self._rendered.popitem(last=False)
        return text

    # ---- lookup and listing -----------------------------------------------------------
    async def _children(
        self, node: Node, max_age: float | None = None, viewer: int | None = None
    ) -> list[tuple[str, tuple, ModelRecord | None, layout.FileSpec | None]]:
        if node.kind == DIR:
            tree = await self.tree(max_age)
            out = [(name, key, rec, None) for name, key, rec in tree.children(node.key)]
            have = {key for _, key, _, _ in out}
            out += [(name, key, None, None) for key, name in self._made.items()
                    if key[:-1] == node.key and key not in have]
            out += [(name.dirname, key, None, None) for key, name in self._staged.items()
                    if key[:-1] == node.key and key not in have]
            return sorted(out, key=lambda e: e[0])
        if node.kind == MODEL_DIR:
            if node.key in self._staged and node.record is None:
                try:
                    await self._record(node)
                except NotFound:
                    return []  # made by mkdir; no Modelfile written yet
                self._staged.pop(node.key, None)
            record = await self._record(node)
            hidden = self._unlinked_in(node.key)
            copying = self._copying(node.key) if viewer == self._copy_owner.get(node.key) else None
            return [
                (spec.name, (*node.key, spec.name.lower(), spec.digest.hex), record, spec)
                for spec in layout.model_files(record.manifest)
                if spec.name not in hidden and (copying is None or spec.name in copying)
            ]
        raise OllamaFSError(f"{node.name} is not a directory", err=errno.ENOTDIR)

    def _child_node(self, parent: Node, name: str, key: tuple, record: ModelRecord | None, spec) -> Node:
        if spec is None and record is None and key in self._staged:
            return self._intern(key, kind=MODEL_DIR, name=name, parent=parent.ino, model=self._staged[key])
        if spec is not None:
            return self._intern(key, kind=FILE, name=name, parent=parent.ino, model=parent.model, spec=spec, record=record)
        if record is not None:
            return self._intern(key, kind=MODEL_DIR, name=name, parent=parent.ino, model=record.name, record=record)
        return self._intern(key, kind=DIR, name=name, parent=parent.ino)

    async def lookup(self, parent_ino: int, name: str, caller: Caller = Caller()) -> Attr:
        """Find ``name`` in a directory (case-insensitively) and count one lookup of it."""
        parent = self.node(parent_ino)
        folded = name.lower()
        if parent_ino == ROOT_INO and name == layout.STATUS_NAME and self.pulls is not None:
            # not listed, so that find and cp -r of the mount leave it alone
            node = self._child_node(parent, name, (name,), None, layout.STATUS_SPEC)
            node.nlookup += 1
            return await self.getattr(node.ino)
        # A miss in the cached listing rescans the store (in a worker thread), so a
        # model written a moment ago (by Ollama, say) is found as soon as it is looked up.
        for max_age in (None, MISS_MAX_AGE) if parent.kind == DIR else (None,):
            for child_name, key, record, spec in await self._children(parent, max_age, caller.pid):
                if child_name.lower() == folded:
                    node = self._child_node(parent, child_name, key, record, spec)
                    attr = await self.getattr(node.ino)
                    node.nlookup += 1
                    return attr
        if self.pulls is not None and parent.kind == DIR:
            node = await self._remote_child(parent, name)
            if node is not None:
                attr = await self.getattr(node.ino)
                node.nlookup += 1
                return attr
        raise NotFound(f"{name!r} not found in {self._path(parent)}")

    async def _remote_child(self, parent: Node, name: str) -> Node | None:
        """A host, namespace or model:tag that is not local, as the registry knows it."""
        assert self.pulls is not None
        depth = len(parent.key)
        key = (*parent.key, name.lower())
        if depth == 0 and is_valid_part(HOST, name) and ("." in name or ":" in name or name.lower() == "localhost"):
            return self._intern(key, kind=DIR, name=name, parent=parent.ino)
        if depth == 1 and is_valid_part(NAMESPACE, name):
            return self._intern(key, kind=DIR, name=name, parent=parent.ino)
        if depth == 2 and ":" in name:
            model, _, tag = name.rpartition(":")
            try:
                wanted = ModelName(self.node(parent.parent).name, parent.name, model, tag)
            except OllamaFSError:
                return None
            record = await self.pulls.remote(wanted)
            return self._intern(key, kind=MODEL_DIR, name=record.name.dirname, parent=parent.ino,
                                model=record.name, record=record)
        return None

    def forget(self, items: list[tuple[int, int]]) -> None:
        """Drop kernel references; a node nobody references is freed (never raises)."""
        for ino, count in items:
            node = self._nodes.get(ino)
            if node is None or ino == ROOT_INO:
                continue
            node.nlookup -= count
            if node.nlookup <= 0:
                del self._nodes[ino]
                if self._by_key.get(node.key) == ino:
                    del self._by_key[node.key]

    def remember(self, ino: int) -> None:
        """A readdir entry the kernel accepted counts as one lookup."""
        node = self._nodes.get(ino)
        if node is not None:
            node.nlookup += 1

    async def opendir(self, ino: int, caller: Caller = Caller()) -> int:
        node = self.node(ino)
        entries = await self._children(node, viewer=caller.pid)
        return self._new_handle(_DirHandle(node, entries, caller.pid))

    async def readdir(self, fh: int, start: int) -> list[DirEntry]:
        """Entries of the listing snapshotted at opendir, from cookie ``start`` on."""
        handle = self._handles.get(fh)
        if not isinstance(handle, _DirHandle):
            raise OllamaFSError(f"bad directory handle {fh}", err=errno.EBADF)
        out = []
        for index in range(start, len(handle.entries)):
            name, key, record, spec = handle.entries[index]
            node = self._child_node(handle.node, name, key, record, spec)
            try:
                attr = await self.getattr(node.ino)
            except OllamaFSError as exc:
                log.log(exc.level, "listing %s/%s: %s", self._path(handle.node), name, exc)
                attr = await self._fallback_attr(node)
            out.append(DirEntry(name, attr, index + 1))
        return out

    async def _fallback_attr(self, node: Node) -> Attr:
        """Attributes from the manifest alone, for an entry whose content cannot be read."""
        size = node.spec.size if node.spec is not None else 0
        mtime = node.record.mtime_ns if node.record is not None else 0
        return Attr(node.ino, stat.S_IFREG | 0o444, 1, size, mtime, self.uid, self.gid, 0.0, 0.0)

    def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # ---- files -----------------------------------------------------------------------
    def _new_handle(self, handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    async def open(self, ino: int, flags: int, caller: Caller = Caller()) -> Opened:
        node = self.node(ino)
        if node.kind != FILE:
            raise OllamaFSError(f"{self._path(node)} is a directory", err=errno.EISDIR)
        if node.spec is not None and node.spec.kind == layout.GENERATE:
            return await self._open_generate(node, flags, caller)
        if node.spec is not None and node.spec.kind in (layout.MODELFILE, layout.DRAFT) and flags & (os.O_WRONLY | os.O_RDWR):
            return await self._open_draft(node, flags, caller)
        parent = self._nodes.get(node.parent)
        if flags & (os.O_WRONLY | os.O_RDWR) and parent is not None and parent.key in self._copies:
            return (await self._create_upload(parent, node.name, flags, caller))[0]  # cp -r overwriting
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise ReadOnly(f"{self._path(node)} is read-only (layer files cannot be written)")
        spec, record = node.spec, node.record
        assert spec is not None
        if spec.kind == layout.STATUS:
            data = self.status_text().encode()
            return Opened(self._new_handle(_Handle(node, data=data)), keep_cache=False, direct_io=True)
        assert record is not None
        if spec.kind == layout.BLOB:
            fd: int | None = None
            storing = None
            if record.remote is not None and self.pulls is not None:
                # Served once verified; a close waits until the store has it (§Pulling).
                early = await self.pulls.open_verified(record, spec.digest, spec.size)
                if early is None:
                    await self.pulls.commit_if_complete(record)
                else:
                    fd, storing = early
            if fd is None:
                fd = await self._run(self.store.open_blob, spec.digest)
            size = os.fstat(fd).st_size
            if size != spec.size:
                os.close(fd)
                raise IntegrityError(
                    f"blob {spec.digest} is {size} bytes but the manifest of {record.name} says {spec.size}"
                )
            node.size = size
            handle = _Handle(node, fd=fd, storing=storing)
            return Opened(self._new_handle(handle), keep_cache=True)
        if spec.kind == layout.MANIFEST:
            data = await self._run(self.store.read_manifest_bytes, record)
            return Opened(self._new_handle(_Handle(node, data=data)), keep_cache=True)
        # A remote model's Modelfile was listed with size 0: read it with direct_io so the
        # kernel reads to EOF instead of trusting that size.
        direct = not self._renderable(record)
        data = await self.render_modelfile(record)
        return Opened(self._new_handle(_Handle(node, data=data)), keep_cache=not direct, direct_io=direct)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if not isinstance(handle, _Handle):
            raise OllamaFSError(f"bad file handle {fh}", err=errno.EBADF)
        if handle.node.spec is not None and handle.node.spec.kind == layout.GENERATE:
            return await self._read_generate(handle, size)
        if handle.data is not None:
            return handle.data[offset : offset + size]
        if self.read_in_thread:
            data = await trio.to_thread.run_sync(os.pread, handle.fd, size, offset, limiter=self.limiter)
        else:
            data = os.pread(handle.fd, size, offset)
        if handle.node.spec is not None and handle.node.spec.kind == layout.BLOB:
            # The kernel caches these bytes on the mount's side now (keep_cache): drop the
            # store's copy, so a model read through the mount is held in memory once, not
            # twice, and the pages go straight back to the allocator while a big file is read.
            # The kernel only drops whole folios (up to 2 MiB, aligned) inside the range, so
            # the range reaches back over the folio the previous read may have straddled.
            # (Pages a pull is still writing back stay; see flush.)
            start = max(0, (offset // FOLIO_MAX - 1) * FOLIO_MAX)
            end = offset + len(data)
            os.posix_fadvise(handle.fd, start, 0 if end >= handle.node.size else end - start, os.POSIX_FADV_DONTNEED)
        return data

    def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, _Handle) and handle.fd >= 0:
            os.close(handle.fd)
        if isinstance(handle, _Handle) and handle.upload is not None:
            handle.upload.unlink(missing_ok=True)  # never flushed: nothing is adopted
        if isinstance(handle, _Handle) and handle.exchange is not None:
            handle.exchange.cancel()  # a reader that leaves early stops its generation

    # ---- rm -r and mv of models (docs/SEMANTICS.md §Deleting and renaming) -----------
    def _unlinked_in(self, key: tuple) -> set[str]:
        entry = self._unlinked.get(key)
        if entry is None:
            return set()
        if time.monotonic() - entry[0] > UNLINK_GRACE:
            del self._unlinked[key]  # no rmdir followed: the files were never really gone
            log.info("model %s was not removed after its files were; they are listed again", "/".join(key))
            return set()
        return entry[1]

    async def unlink(self, parent_ino: int, name: str, caller: Caller) -> None:
        """A file of a model may be unlinked only as part of removing the whole model."""
        parent = self.node(parent_ino)
        where = f"{self._path(parent)}/{name}"
        if parent.kind != MODEL_DIR:
            raise ReadOnly(f"unlink {where}: only model directories can be removed (rm -r)")
        children = {child[0] for child in await self._children(parent)}
        if name not in children:
            raise NotFound(f"{where} not found")
        if not any(isinstance(h, _DirHandle) and h.node is parent and h.pid == caller.pid for h in self._handles.values()):
            raise Refused(
                f"unlink {where}: a layer cannot be removed alone; remove the model with rm -r", err=errno.EPERM
            )
        entry = self._unlinked.setdefault(parent.key, [time.monotonic(), set()])
        entry[0] = time.monotonic()
        entry[1].add(name)

    async def rmdir(self, parent_ino: int, name: str, caller: Caller = Caller()) -> None:
        """Remove a model (its files unlinked first, as rm -r does) or an empty directory."""
        from ..store import ops

        parent = self.node(parent_ino)
        folded = name.lower()
        match = [c for c in await self._children(parent) if c[0].lower() == folded]
        if not match:
            raise NotFound(f"{self._path(parent)}/{name} not found")
        child_name, key, record, spec = match[0]
        if spec is not None:
            raise Refused(f"{self._path(parent)}/{name} is not a directory", err=errno.ENOTDIR)
        if record is None:  # a host or namespace directory
            node = self._child_node(parent, child_name, key, None, None)
            if await self._children(node):
                raise Refused(f"{self._path(parent)}/{name} is not empty", err=errno.ENOTEMPTY)
            self._made.pop(key, None)
            return
        node = self._child_node(parent, child_name, key, record, None)
        left = await self._children(node, viewer=caller.pid)  # what the remover sees (rm -r of a copy)
        if left:
            raise Refused(f"{self._path(node)} is not empty ({len(left)} files left)", err=errno.ENOTEMPTY)
        if record.remote is not None:
            raise NotFound(f"{record.name} is not in the store")
        await self._run(ops.delete_model, self.store, record.name, self._in_use())
        self._unlinked.pop(key, None)
        self._forget_copy(key)
        self._tree_src = None
        log.info("removed model %s", record.name)

    def _in_use(self) -> set[Digest]:
        used = {h.node.spec.digest for h in self._handles.values()
                if isinstance(h, _Handle) and h.fd >= 0 and h.node.spec is not None}
        return used | (self.pulls.in_use() if self.pulls is not None else set())

    async def mkdir(self, parent_ino: int, name: str) -> Attr:
        """mkdir of a host or a namespace: an empty directory (kept in memory) to move models into."""
        parent = self.node(parent_ino)
        depth = len(parent.key)
        if parent.kind != DIR or depth > 2:
            raise Refused(f"mkdir {self._path(parent)}/{name}: no directories inside a model")
        if depth == 2:
            model, sep, tag = name.rpartition(":")
            try:
                if not sep:
                    raise InvalidName(f"{name!r} is not model:tag")
                wanted = ModelName(self.node(parent.parent).name, parent.name, model, tag)
            except InvalidName as exc:
                raise Refused(f"mkdir {self._path(parent)}/{name}: {exc}", err=errno.EINVAL) from None
            key = (*parent.key, name.lower())
            if any(c[1] == key for c in await self._children(parent)):
                raise Refused(f"mkdir {self._path(parent)}/{name}: exists", err=errno.EEXIST)
            self._staged[key] = wanted
            self._forget_copy(key)
            node = self._child_node(parent, name, key, None, None)
            node.nlookup += 1
            return await self.getattr(node.ino)
        kind = HOST if depth == 0 else NAMESPACE
        if not is_valid_part(kind, name):
            raise Refused(f"mkdir {self._path(parent)}/{name}: not a valid {kind} name", err=errno.EINVAL)
        key = (*parent.key, name.lower())
        if any(c[1] == key for c in await self._children(parent)):
            raise Refused(f"mkdir {self._path(parent)}/{name}: exists", err=errno.EEXIST)
        self._made[key] = name
        node = self._intern(key, kind=DIR, name=name, parent=parent.ino)
        node.nlookup += 1
        return await self.getattr(node.ino)

    async def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str) -> None:
        """mv of a model directory into a namespace directory: the manifest moves."""
        from ..store import ops

        src_parent, dst_parent = self.node(old_parent), self.node(new_parent)
        where = f"{self._path(src_parent)}/{old_name}"
        match = [c for c in await self._children(src_parent) if c[0].lower() == old_name.lower()]
        if not match:
            raise NotFound(f"{where} not found")
        _, _, record, spec = match[0]
        if spec is not None or record is None:
            raise Refused(f"rename {where}: only model directories can be renamed", err=errno.EPERM)
        if dst_parent.kind != DIR or len(dst_parent.key) != 2:
            raise Refused(f"rename {where}: the destination must be a namespace directory", err=errno.EPERM)
        model, sep, tag = new_name.rpartition(":")
        if not sep:
            raise Refused(f"rename {where}: {new_name!r} is not model:tag", err=errno.EINVAL)
        host = self.node(dst_parent.parent).name
        dst = ModelName(host, dst_parent.name, model, tag)  # InvalidName: EINVAL
        if record.remote is not None:
            raise NotFound(f"{record.name} is not in the store")
        await self._run(ops.rename_model, self.store, record.name, dst)
        self._forget_copy(match[0][1])
        self._forget_copy((*dst_parent.key, new_name.lower()))
        self._tree_src = None
        log.info("renamed model %s to %s", record.name, dst)

    # ---- generate --------------------------------------------------------------------
    async def _open_generate(self, node: Node, flags: int, caller: Caller) -> Opened:
        if self.generator is None:
            raise NotSupported(f"{self._path(node)}: inference is not available (llama-cpp-python is not installed)")
        record = await self._record(node)
        key = (caller.uid, session_of(caller.pid), node.key[:3])
        handle = _Handle(node, flags=flags, key=key)
        if flags & (os.O_WRONLY | os.O_RDWR):
            if "completion" not in await self.capabilities(record):
                raise NotSupported(f"{record.name} is an embedding model (no completion capability); it cannot generate")
            handle.prompt = bytearray()
        else:
            handle.exchange = self.generator.take(key)
        return Opened(self._new_handle(handle), keep_cache=False, direct_io=True, nonseekable=True)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handles.get(fh)
        if isinstance(handle, _Handle) and handle.sink:
            return len(data)
        if isinstance(handle, _Handle) and handle.upload is not None:
            return os.pwrite(handle.fd, data, offset)  # one bounded write: inline, like pread
        if isinstance(handle, _Handle) and handle.draft is not None:
            if offset > len(handle.draft):
                handle.draft += b"\0" * (offset - len(handle.draft))
            handle.draft[offset : offset + len(data)] = data
            handle.dirty = True
            return len(data)
        if not isinstance(handle, _Handle) or handle.prompt is None:
            raise OllamaFSError("write to a handle not open for writing", err=errno.EBADF)
        if handle.exchange is not None:
            raise OllamaFSError("one prompt per handle: its answer is being read", err=errno.EINVAL)
        handle.prompt += data
        return len(data)

    async def flush(self, fh: int) -> None:
        """close(2) of a handle (or of a duplicate): submit a written prompt, apply a written
        Modelfile, or wait for a pulled blob read before it was stored to be stored."""
        handle = self._handles.get(fh)
        if isinstance(handle, _Handle) and handle.storing is not None and self.pulls is not None:
            job, handle.storing = handle.storing, None
            await self.pulls.stored(job, handle.node.record)  # cp ends with the model stored
            # Pages that were still dirty when read were not dropped then (see read): the
            # reader that pulled the blob is done, so drop the store's copy now.
            await self._run(os.posix_fadvise, handle.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return
        if isinstance(handle, _Handle) and handle.upload is not None:
            os.close(handle.fd)
            handle.fd = -1
            await self._adopt_upload(handle)
            return
        if isinstance(handle, _Handle) and handle.draft is not None and handle.dirty:
            await self._apply_draft(handle)
            return
        if isinstance(handle, _Handle) and handle.prompt:
            await self._submit(handle, board=not (handle.flags & os.O_RDWR))

    async def _submit(self, handle: _Handle, *, board: bool) -> None:
        assert self.generator is not None and handle.prompt is not None
        record = await self._record(handle.node)
        data, handle.prompt = bytes(handle.prompt), bytearray()
        exchange = self.generator.submit(handle.key, record, data, board=board)
        if not board:
            handle.exchange = exchange

    async def _read_generate(self, handle: _Handle, size: int) -> bytes:
        if handle.exchange is None and handle.prompt and handle.flags & os.O_RDWR:
            await self._submit(handle, board=False)
        if handle.exchange is None:
            return b""
        return await handle.exchange.read(size)

    def truncate_ok(self, ino: int) -> bool:
        """``> generate`` and ``> Modelfile`` truncate first: allowed (the write decides)."""
        node = self._nodes.get(ino)
        if node is None or node.spec is None:
            return False
        parent = self._nodes.get(node.parent)
        return node.spec.kind in (layout.GENERATE, layout.MODELFILE, layout.DRAFT) or (
            parent is not None and parent.key in self._copies)

    # ---- creating and editing models with a Modelfile ----------------------------------
    def _model_dir_of(self, node: Node) -> Node:
        parent = self._nodes.get(node.parent)
        if parent is None or parent.kind != MODEL_DIR:
            raise Refused(f"{self._path(node)}: not in a model directory")
        return parent

    async def _open_draft(self, node: Node, flags: int, caller: Caller) -> Opened:
        """A Modelfile opened for writing: its text replaces (or, with O_APPEND, extends) the
        model's; applied when the handle is closed."""
        handle = _Handle(node, flags=flags, draft=bytearray(), pid=caller.pid)
        if node.spec is not None and node.spec.kind == layout.MODELFILE and not flags & os.O_TRUNC:
            assert node.record is not None
            handle.draft += await self.render_modelfile(node.record)
        return Opened(self._new_handle(handle), keep_cache=False, direct_io=True)

    async def create(self, parent_ino: int, name: str, flags: int, caller: Caller) -> tuple[Opened, Attr]:
        """Only a Modelfile can be created, in a model directory (new or existing)."""
        parent = self.node(parent_ino)
        if parent.kind != MODEL_DIR:
            raise ReadOnly(f"create {self._path(parent)}/{name}: files can only be made in a model directory")
        if name != layout.MODELFILE_NAME:
            return await self._create_upload(parent, name, flags, caller)
        copying = parent.key in self._copies or parent.key in self._staged
        if copying:  # a new directory being filled: its filler (cp -r) sees only what it wrote so far
            self._copies.setdefault(parent.key, {}).setdefault(name, None)
            self._copy_touched[parent.key] = time.monotonic()
            self._copy_owner.setdefault(parent.key, caller.pid)
        node = self._intern((*parent.key, "modelfile", "draft"), kind=FILE, name=name, parent=parent.ino,
                            model=parent.model, spec=layout.DRAFT_SPEC)
        node.nlookup += 1
        opened = await self._open_draft(node, flags | os.O_TRUNC, caller)
        handle = self._handles[opened.fh]
        assert isinstance(handle, _Handle)
        handle.copying = copying
        return opened, await self.getattr(node.ino)

    def _copying(self, key: tuple) -> dict | None:
        """The files written so far into a model directory being filled (cp -r), which alone are
        listed while it is (so cp's O_EXCL creates find nothing in the way); None otherwise."""
        files = self._copies.get(key)
        if files is None:
            return None
        if time.monotonic() - self._copy_touched.get(key, 0.0) > COPY_GRACE:
            self._forget_copy(key)
            return None
        return files

    def _forget_copy(self, key: tuple) -> None:
        """The directory is no longer being filled by a copy (removed, renamed, re-made, edited)."""
        self._copies.pop(key, None)
        self._copy_touched.pop(key, None)
        self._copy_owner.pop(key, None)
        self._interim.pop(key, None)

    async def _create_upload(self, parent: Node, name: str, flags: int, caller: Caller) -> tuple[Opened, Attr]:
        """A file copied into a new model directory (cp -r, or model.gguf alone): its bytes go to
        a temporary blob, adopted at close (stored once per digest)."""
        from ..store.ingest import new_upload

        where = f"{self._path(parent)}/{name}"
        fresh = parent.key in self._staged or parent.key in self._copies
        known = layout.kind_of(name) is not None or name in (
            layout.CONFIG_NAME, layout.MANIFEST_NAME, layout.GENERATE_NAME)
        if not fresh:
            raise ReadOnly(f"create {where}: the layers of an existing model cannot be written")
        if not known:
            raise ReadOnly(f"create {where}: not a file a model directory holds")
        node = self._intern((*parent.key, name.lower(), "upload"), kind=FILE, name=name, parent=parent.ino,
                            model=parent.model, spec=layout.FileSpec(name, layout.DRAFT, Digest("0" * 64), 0))
        node.nlookup += 1
        self._copies.setdefault(parent.key, {}).setdefault(name, None)
        self._copy_touched[parent.key] = time.monotonic()
        self._copy_owner.setdefault(parent.key, caller.pid)
        handle = _Handle(node, flags=flags, pid=caller.pid)
        if name == layout.GENERATE_NAME:
            handle.sink = True
        else:
            fd, tmp = await self._run(new_upload, self.store)
            handle.fd, handle.upload = fd, tmp
        return Opened(self._new_handle(handle), keep_cache=False, direct_io=True), await self.getattr(node.ino)

    async def _adopt_upload(self, handle: _Handle) -> None:
        """Close of a copied file: adopt its bytes, then (re)write the new model's manifest."""
        assert handle.upload is not None
        model_dir = self._model_dir_of(handle.node)
        assert model_dir.model is not None
        tmp, handle.upload = handle.upload, None
        key = model_dir.key
        files = self._copies.setdefault(key, {})
        interim = list(self._interim.get(key, []))
        outcome = await self._run(self._adopt_locked, tmp, handle.node.name, model_dir.model, files, interim,
                                  self._in_use())
        if outcome == "exact":
            self._interim.pop(key, None)
        elif isinstance(outcome, Digest):
            self._interim.setdefault(key, []).append(outcome)
        self._staged.pop(key, None)
        self._tree_src = None
        self.store.invalidate()

    def _adopt_locked(self, tmp: Path, name: str, model: ModelName, files: dict, interim: list, in_use: set):
        """Worker thread, under the store's lock (so a concurrent rm cannot prune a blob between
        its adoption and the manifest that references it): adopt a copied file; return "exact"
        when a copied manifest.json became the manifest, the interim config's digest when a
        manifest was built from the copied layers, else None."""
        from ..store import ingest, ops

        with ops.store_lock(self.store):
            if name == layout.MANIFEST_NAME:
                data = tmp.read_bytes()
                tmp.unlink()
                try:
                    ingest.write_manifest(self.store, model, data)
                except OllamaFSError as exc:
                    log.info("copied manifest.json of %s not used (%s); keeping the one built from the copied "
                             "files", model, exc)
                    return None
                files["\0exact"] = None
                remove_unreferenced(self.store, interim, in_use)  # the configs written on the way
                return "exact"
            digest, size = ingest.adopt_upload(self.store, tmp)
            if name == layout.CONFIG_NAME:
                return None
            files[name] = mf.Layer(mf.OLLAMA_PREFIX + layout.kind_of(name), digest, size)
            if "\0exact" in files or not any(lay is not None and lay.kind == mf.MODEL for lay in files.values()):
                return None
            return self._write_copied(model, dict(files))

    async def _same_model_text(self, model_dir: Node, text: str) -> bool:
        from ..modelfile_parse import ModelfileError, parse

        try:
            record = await self._record(model_dir)
            current = (await self.render_modelfile(record)).decode()
            strip = lambda cmds: [(c.name, c.args) for c in cmds]  # noqa: E731 - line numbers differ
            return strip(parse(text)) == strip(parse(current))
        except (NotFound, ModelfileError):
            return False

    def _write_copied(self, name: ModelName, files: dict[str, mf.Layer | None]) -> Digest:
        from ..store.create import write_model

        return write_model(self.store, name, [lay for n, lay in files.items() if lay is not None and not n.startswith("\0")])

    async def _apply_draft(self, handle: _Handle) -> None:
        from ..store.create import caller_cwd, create_from_modelfile

        model_dir = self._model_dir_of(handle.node)
        assert model_dir.model is not None and handle.draft is not None
        text = handle.draft.decode("utf-8", errors="replace")
        handle.dirty = False
        if model_dir.key in self._copies and await self._same_model_text(model_dir, text):
            return  # cp -r copies the Modelfile too: it describes what the copy already is
        create = functools.partial(create_from_modelfile, cwd=caller_cwd(handle.pid))
        await self._run(create, self.store, model_dir.model, text)
        if not handle.copying:
            self._forget_copy(model_dir.key)  # an edit: the directory is the model's own again
        self._staged.pop(model_dir.key, None)
        self._tree_src = None
        self.store.invalidate()

    # ---- extended attributes -----------------------------------------------------------
    def _xattr_names(self, node: Node) -> list[str]:
        if node.kind == MODEL_DIR:
            return [XATTR_PREFIX + k for k in ("name", "digest", "size", "capabilities")]
        if node.kind == FILE and node.spec is not None and node.spec.kind in (layout.BLOB, layout.MANIFEST):
            return [XATTR_PREFIX + k for k in ("digest", "media_type")]
        return []

    async def getxattr(self, ino: int, name: str) -> bytes:
        """One extended attribute (docs/SEMANTICS.md, "Extended attributes"); ENODATA if absent."""
        node = self.node(ino)
        if name not in self._xattr_names(node):
            raise NoAttribute(f"no attribute {name} on {self._path(node)}")
        attr = name[len(XATTR_PREFIX):]
        if node.kind == MODEL_DIR:
            record = await self._record(node)
            if attr == "name":
                return str(record.name).encode()
            if attr == "digest":
                return str(record.manifest.digest).encode()
            if attr == "size":
                return str(record.manifest.total_size).encode()
            return ",".join(await self.capabilities(record)).encode()
        assert node.spec is not None
        if attr == "digest":
            return str(node.spec.digest).encode()
        return node.spec.media_type.encode()

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        """``setfattr -n user.ollama.push -v 1 MODEL_DIR`` pushes the model to its registry; the
        call returns when the push is done (errors as for ollamafs push)."""
        node = self.node(ino)
        if name != XATTR_PREFIX + "push" or node.kind != MODEL_DIR:
            raise ReadOnly(f"set attribute {name} on {self._path(node)}: only user.ollama.push on a model directory")
        if value.strip() not in (b"1", b"true", b"yes"):
            raise Refused(f"user.ollama.push takes 1, not {value!r}", err=errno.EINVAL)
        if self.pulls is None:
            raise NotSupported(f"push {self._path(node)}: this mount has no registry (--offline)")
        record = await self._record(node)
        if record.remote is not None:
            raise NotFound(f"{record.name} is not in the store")
        await self.pulls.push_model(record.name)

    async def listxattr(self, ino: int) -> list[str]:
        return self._xattr_names(self.node(ino))

    async def gguf_metadata(self, digest: Digest) -> dict:
        hit = self._gguf.get(digest)
        if hit is None:
            path = self.store.blob_path(digest)
            try:
                hit = await self._run(read_metadata, path)
            except FileNotFoundError:
                raise MissingBlob(f"blob {digest} is missing from the store ({path})") from None
            except GGUFError as exc:
                raise OllamaFSError(f"model blob {digest}: {exc}") from None
            self._gguf[digest] = hit
            while len(self._gguf) > 256:
                self._gguf.popitem(last=False)
        return hit

    async def capabilities(self, record: ModelRecord) -> list[str]:
        """Ollama's capabilities of a model: completion, tools, insert, vision, thinking."""
        from ..template import Template, TemplateError, capabilities as template_caps

        caps: list[str] = []
        models = record.manifest.layers_of(mf.MODEL)
        if models:
            layer = models[-1]
            if record.remote is not None and self.pulls is not None and self.store.blob_size(layer.digest) is None:
                meta = await self.pulls.gguf_header(record, layer)
            else:
                meta = await self.gguf_metadata(layer.digest)
            if not is_embedding_model(meta):
                caps.append("completion")
        if record.remote is not None and self.pulls is not None:
            await self.pulls.ensure_text_layers(record)
        description = await self._run(describe, self.store, record)
        try:
            found = template_caps(Template.parse(description.template))
        except TemplateError as exc:
            log.warning("model %s: template does not parse (%s); no tools/insert capability", record.name, exc)
            found = set()
        caps += [c for c in ("tools", "insert") if c in found]
        if record.manifest.layers_of(mf.PROJECTOR):
            caps.append("vision")
        if "thinking" in found:
            caps.append("thinking")
        return caps

    def status_text(self) -> str:
        """The pulls running now, one line each (docs/SEMANTICS.md, "Pull progress")."""
        lines = []
        for name, digest, progress, size in self.pulls.progress() if self.pulls else []:
            done = progress.completed if progress else 0
            total = (progress.total if progress and progress.total else size) or 0
            rate = progress.rate if progress else 0.0
            state = progress.state if progress else "starting"
            pct = 100.0 * done / total if total else 0.0
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "-"
            lines.append(f"{name} {digest} {state} {done}/{total} {pct:.1f}% {rate / 1e6:.1f}MB/s eta {eta}\n")
        return "".join(lines)

    # ---- refusals and statfs ---------------------------------------------------------
    def refuse_write(self, what: str, ino: int | None = None, name: str = "") -> None:
        where = self._path(self.node(ino)) if ino is not None and ino in self._nodes else "?"
        raise ReadOnly(f"{what} {where}/{name}: the mount is read-only".replace("//", "/"))

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.store.root if self.store.root.exists() else "/")

    def _path(self, node: Node) -> str:
        parts = []
        while node.ino != ROOT_INO:
            parts.append(node.name)
            parent = self._nodes.get(node.parent)
            if parent is None:
                break
            node = parent
        return "/" + "/".join(reversed(parts))
