#!/usr/bin/env python3
"""The bench's baseline: a minimal pyfuse3 read-through filesystem exposing one file.

    baseline_fs.py FILE MOUNTPOINT

It does the least a pyfuse3 filesystem can: lookup/getattr from os.stat, open an fd, inline
os.pread per read request, pyfuse3's default options.  scripts/bench compares ollamafs with it.
"""

import errno
import os
import stat
import sys

import pyfuse3
import trio


class ReadThrough(pyfuse3.Operations):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.name = os.path.basename(path).encode()

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_size = 0
        else:
            st = os.stat(self.path)
            a.st_mode = stat.S_IFREG | 0o444
            a.st_size = st.st_size
        a.st_ino = ino
        a.st_nlink = 1
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        return a

    async def getattr(self, inode, ctx=None):
        return self._attr(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != self.name:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(2)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, self.name, self._attr(2), 1)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=os.open(self.path, os.O_RDONLY))

    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    async def release(self, fh):
        os.close(fh)


def main() -> None:
    path, mountpoint = sys.argv[1], sys.argv[2]
    pyfuse3.init(ReadThrough(path), mountpoint, set(pyfuse3.default_options) | {"fsname=baseline"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
