"""Session-wide test set-up."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path


def _stale_test_mounts() -> list[str]:
    """ollamafs mounts left under pytest's temp root by a run that was killed."""
    root = Path(tempfile.gettempdir()) / "pytest-of-"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            mountpoint, fstype = fields[4], fields[sep + 1]
            if fstype.startswith("fuse.ollamafs") and mountpoint.startswith(str(root)):
                out.append(mountpoint.replace("\\040", " "))
    return [m for m in out if _dead(m)]  # another run's live mounts are left alone


def _dead(mountpoint: str) -> bool:
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def pytest_configure(config) -> None:
    # pytest deletes old temp directories; one holding a dead mount fails with ENOTCONN.
    for mountpoint in _stale_test_mounts():
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
