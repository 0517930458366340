"""The pyfuse3 adapter: translate arguments, call :mod:`ollamafs.vfs`, translate results.

Every handler has the same three steps, and this is the only module that builds
``pyfuse3.FUSEError``.  Policy for failures: an :class:`OllamaFSError` becomes its errno and
one log line at its level; anything else is a bug, logged with its traceback, and answered EIO
so that the mount survives it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os

import pyfuse3

from .errors import OllamaFSError
from .vfs.fs import XATTR_PREFIX, Attr, Caller, FileSystem

XATTR_PREFIX_B = XATTR_PREFIX.encode()

log = logging.getLogger(__name__)


def _handler(fn):
    """Run one FUSE handler with the error policy above."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OllamaFSError as exc:
            log.log(exc.level, "%s: %s (%s)", fn.__name__, exc, errno.errorcode.get(exc.errno, exc.errno))
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s%r failed unexpectedly; answering EIO", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _entry(attr: Attr) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = attr.ino
    out.generation = 0
    out.entry_timeout = attr.entry_timeout
    out.attr_timeout = attr.attr_timeout
    out.st_mode = attr.mode
    out.st_nlink = attr.nlink
    out.st_uid = attr.uid
    out.st_gid = attr.gid
    out.st_rdev = 0
    out.st_size = attr.size
    out.st_blksize = 128 * 1024
    out.st_blocks = attr.blocks
    out.st_atime_ns = attr.mtime_ns
    out.st_mtime_ns = attr.mtime_ns
    out.st_ctime_ns = attr.mtime_ns
    return out


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


class Operations(pyfuse3.Operations):
    """pyfuse3 callbacks over one :class:`FileSystem`."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem, on_init=None) -> None:
        super().__init__()
        self.fs = fs
        self.on_init = on_init

    def init(self) -> None:
        log.info("mounted store %s", self.fs.store.root)
        if self.on_init is not None:
            try:
                self.on_init()
            except Exception:  # init must never raise
                log.exception("init hook failed")

    async def forget(self, inode_list) -> None:
        try:
            self.fs.forget(list(inode_list))
        except Exception:  # forget must never raise
            log.exception("forget failed")

    @_handler
    async def lookup(self, parent_inode, name, ctx=None):
        return _entry(await self.fs.lookup(parent_inode, _name(name), Caller(ctx.uid, ctx.pid) if ctx else Caller()))

    @_handler
    async def getattr(self, inode, ctx=None):
        return _entry(await self.fs.getattr(inode))

    @_handler
    async def setattr(self, inode, attr, fields, fh, ctx):
        only_size = fields.update_size and not (fields.update_mode or fields.update_uid or fields.update_gid)
        if only_size and attr.st_size == 0 and self.fs.truncate_ok(inode):
            return _entry(await self.fs.getattr(inode))  # `> generate` truncates: a no-op
        self.fs.refuse_write("change attributes of", inode)

    @_handler
    async def opendir(self, inode, ctx):
        return await self.fs.opendir(inode, Caller(ctx.uid, ctx.pid))

    @_handler
    async def readdir(self, fh, start_id, token):
        for entry in await self.fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), _entry(entry.attr), entry.next_id):
                break
            self.fs.remember(entry.attr.ino)

    @_handler
    async def releasedir(self, fh):
        self.fs.releasedir(fh)

    @_handler
    async def open(self, inode, flags, ctx):
        opened = await self.fs.open(inode, flags, Caller(ctx.uid, ctx.pid))
        info = pyfuse3.FileInfo(fh=opened.fh)
        info.keep_cache = opened.keep_cache
        info.direct_io = opened.direct_io
        info.nonseekable = opened.nonseekable
        return info

    @_handler
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_handler
    async def release(self, fh):
        self.fs.release(fh)

    @_handler
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK and not self.fs.truncate_ok(inode):
            self.fs.refuse_write("write access to", inode)
        self.fs.node(inode)
        return True

    async def getxattr(self, inode, name, ctx):
        # ls -l asks every file for security.selinux and system.posix_acl_access: answer those
        # at once, without the error machinery (a tenth of the requests of an ls -lR).
        if not name.startswith(XATTR_PREFIX_B):
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await self._getxattr(inode, name)

    @_handler
    async def _getxattr(self, inode, name):
        return await self.fs.getxattr(inode, _name(name))

    @_handler
    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in await self.fs.listxattr(inode)]

    @_handler
    async def statfs(self, ctx):
        st = self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = st.f_files
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = 255
        return out

    # Everything that would change the tree is refused until the mutation issue lands.
    @_handler
    async def setxattr(self, inode, name, value, ctx):
        await self.fs.setxattr(inode, _name(name), value)

    @_handler
    async def removexattr(self, inode, name, ctx):
        self.fs.refuse_write("remove an attribute from", inode)

    @_handler
    async def mkdir(self, parent_inode, name, mode, ctx):
        return _entry(await self.fs.mkdir(parent_inode, _name(name)))

    @_handler
    async def rmdir(self, parent_inode, name, ctx):
        await self.fs.rmdir(parent_inode, _name(name), Caller(ctx.uid, ctx.pid))

    @_handler
    async def unlink(self, parent_inode, name, ctx):
        await self.fs.unlink(parent_inode, _name(name), Caller(ctx.uid, ctx.pid))

    @_handler
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise OllamaFSError("rename: exchanging two models is not supported", err=errno.EINVAL)
        await self.fs.rename(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new))

    @_handler
    async def create(self, parent_inode, name, mode, flags, ctx):
        opened, attr = await self.fs.create(parent_inode, _name(name), flags, Caller(ctx.uid, ctx.pid))
        info = pyfuse3.FileInfo(fh=opened.fh)
        info.keep_cache = opened.keep_cache
        info.direct_io = opened.direct_io
        return info, _entry(attr)

    @_handler
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self.fs.refuse_write("mknod", parent_inode, _name(name))

    @_handler
    async def symlink(self, parent_inode, name, target, ctx):
        self.fs.refuse_write("symlink", parent_inode, _name(name))

    @_handler
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.fs.refuse_write("link", new_parent_inode, _name(new_name))

    @_handler
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    @_handler
    async def flush(self, fh):
        await self.fs.flush(fh)
