"""The adapter's error policy (docs/SEMANTICS.md §Errors), driven without a mount."""

from __future__ import annotations

import errno
import logging

import pyfuse3
import pytest
import trio

from ollamafs.errors import MissingBlob, NotFound
from ollamafs.fuse_ops import Operations


class FakeFS:
    """Stands in for vfs.FileSystem: each method raises what the test asks."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.forgotten = []

    async def getattr(self, ino):
        raise self.exc

    def forget(self, items):
        self.forgotten.append(items)
        raise RuntimeError("forget must not let this escape")


def errno_of(exc: BaseException) -> int:
    ops = Operations(FakeFS(exc))  # type: ignore[arg-type]
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops.getattr, 5, None)
    return info.value.errno


def test_domain_errors_map_to_their_errno(caplog):
    caplog.set_level(logging.DEBUG, "ollamafs.fuse_ops")
    assert errno_of(NotFound("no such model")) == errno.ENOENT
    assert errno_of(MissingBlob("blob sha256:ab is missing")) == errno.EIO
    records = [r for r in caplog.records if r.name == "ollamafs.fuse_ops"]
    assert records[0].levelno == logging.DEBUG and "no such model" in records[0].getMessage()
    assert records[1].levelno == logging.ERROR and "blob sha256:ab is missing" in records[1].getMessage()


def test_unexpected_exception_is_eio_with_traceback(caplog):
    caplog.set_level(logging.ERROR, "ollamafs.fuse_ops")
    assert errno_of(ZeroDivisionError("boom")) == errno.EIO
    (record,) = [r for r in caplog.records if r.name == "ollamafs.fuse_ops"]
    assert "failed unexpectedly" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError


def test_forget_never_raises(caplog):
    fs = FakeFS(RuntimeError())
    ops = Operations(fs)  # type: ignore[arg-type]
    caplog.set_level(logging.ERROR, "ollamafs.fuse_ops")
    trio.run(ops.forget, [(5, 1)])
    assert fs.forgotten == [[(5, 1)]]
    assert "forget failed" in caplog.text
