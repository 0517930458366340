"""Fixtures that mount for real through /dev/fuse (``ollamafs mount -f`` as a subprocess)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.factory import StoreBuilder, write_tiny_gguf

MOUNT_TIMEOUT = 20.0


class Mount:
    """A running ``ollamafs mount -f``; its log is checked for unexpected warnings."""

    def __init__(self, store: Path, mountpoint: Path, log: Path, options: list[str] | None = None) -> None:
        self.store = store
        self.path = mountpoint
        self.log_path = log
        self.expected_warnings: list[str] = []
        cmd = [sys.executable, "-m", "ollamafs", "mount", "-f", "--store", str(store), str(mountpoint)]
        if options:
            cmd[4:4] = ["-o", ",".join(options)]
        self._logf = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount daemon exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount did not appear:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def expect_warning(self, pattern: str) -> None:
        self.expected_warnings.append(pattern)

    def unexpected_warnings(self) -> list[str]:
        bad = []
        for line in self.log().splitlines():
            if re.search(r" (WARNING|ERROR|CRITICAL) ", line) and not any(re.search(p, line) for p in self.expected_warnings):
                bad.append(line)
        return bad

    def stop(self) -> None:
        # unconditionally: a dead daemon's mount answers ENOTCONN and ismount() says False
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()


@pytest.fixture
def store(tmp_path) -> StoreBuilder:
    return StoreBuilder(tmp_path / "models")


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def mount(tmp_path, store):
    """Factory: ``mount()`` mounts ``store`` and returns a Mount; all are stopped afterwards."""
    mounts: list[Mount] = []

    def start(options: list[str] | None = None, store_root: Path | None = None) -> Mount:
        mp = tmp_path / f"mnt{len(mounts)}"
        mp.mkdir()
        m = Mount(store_root or store.root, mp, tmp_path / f"mount{len(mounts)}.log", options)
        mounts.append(m)
        return m

    yield start
    problems = []
    for m in mounts:
        m.stop()
        problems += m.unexpected_warnings()
    assert not problems, "unexpected warnings in the mount log:\n" + "\n".join(problems)
