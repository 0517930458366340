"""§Reading: a blob read through the mount is cached once, on the mount's side."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from tests.factory import write_tiny_gguf

pytestmark = pytest.mark.fuse

NAME = "registry.ollama.ai/library/big:1b"
SIZE = 16 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident_fraction(path) -> float:
    """The share of a file's pages in the page cache (mincore(2) on a mapping of it)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            pages = -(-size // mmap.PAGESIZE)
            vec = ctypes.create_string_buffer(pages)
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw) / pages
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_blob_read_through_the_mount_is_not_cached_twice(store, mount, tmp_path):
    gguf = write_tiny_gguf(tmp_path / "t.gguf")
    with open(gguf, "ab") as f:
        f.write(os.urandom(SIZE))
    store.model(NAME, gguf)
    blob = next(p for p in (store.root / "blobs").iterdir() if p.stat().st_size > SIZE)
    m = mount()
    evict(blob)
    assert resident_fraction(blob) < 0.05
    data = (m.path / NAME).joinpath("model.gguf").read_bytes()
    assert data == gguf.read_bytes()
    # the store's copy was dropped as it was served; the mount's copy serves a second read
    assert resident_fraction(blob) < 0.1
    assert (m.path / NAME).joinpath("model.gguf").read_bytes() == data
    assert resident_fraction(blob) < 0.1
    # the control: reading the blob directly caches it
    blob.read_bytes()
    assert resident_fraction(blob) > 0.9
