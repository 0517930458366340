"""`ollamafs mount` / `umount`: background start, signals, stale and busy mountpoints (§Mounting)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import Mount

pytestmark = pytest.mark.fuse

OLLAMAFS = [sys.executable, "-m", "ollamafs"]


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*OLLAMAFS, *args], capture_output=True, text=True, timeout=60, **kw)


def wait_unmounted(path, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.ismount(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_background_mount_serves_on_return_and_umount(store, tiny_gguf, tmp_path):
    """§Mounting: `mount` returns once serving; `umount` unmounts; the daemon exits."""
    store.model("registry.ollama.ai/library/tiny:latest", tiny_gguf)
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    try:
        out = cli("mount", "--store", str(store.root), "--log", str(log), str(mp))
        assert out.returncode == 0, out.stderr
        # usable on the very next line
        assert os.listdir(mp / "registry.ollama.ai/library") == ["tiny:latest"]
        out = cli("umount", str(mp))
        assert out.returncode == 0, out.stderr
        assert wait_unmounted(mp)
        assert "unmounted" in log.read_text()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def test_store_defaults_to_ollama_models_env(store, tiny_gguf, tmp_path):
    """§Mounting: --store defaults to $OLLAMA_MODELS."""
    store.model("registry.ollama.ai/library/tiny:latest", tiny_gguf)
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = dict(os.environ, OLLAMA_MODELS=str(store.root))
    try:
        out = cli("mount", "--log", str(tmp_path / "d.log"), str(mp), env=env)
        assert out.returncode == 0, out.stderr
        assert os.listdir(mp) == ["registry.ollama.ai"]
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        wait_unmounted(mp)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_unmount_cleanly(store, tiny_gguf, tmp_path, sig):
    """§Mounting: SIGINT and SIGTERM unmount and exit 0."""
    store.model("registry.ollama.ai/library/tiny:latest", tiny_gguf)
    mp = tmp_path / "mnt"
    mp.mkdir()
    m = Mount(store.root, mp, tmp_path / "log")
    try:
        m.proc.send_signal(sig)
        assert m.proc.wait(timeout=15) == 0
        assert not os.path.ismount(mp)
        assert "unmounting" in m.log()
    finally:
        m.stop()


def test_missing_mountpoint_is_a_clear_error(store, tmp_path):
    """§Mounting: a mountpoint that does not exist: one line, non-zero exit."""
    out = cli("mount", "--store", str(store.root), str(tmp_path / "nope"))
    assert out.returncode == 4
    assert out.stderr.strip().splitlines() == [f"ollamafs: mountpoint {tmp_path / 'nope'} does not exist"]


def test_busy_mountpoint_is_a_clear_error(store, tiny_gguf, mount):
    """§Mounting: mounting over a live mount is refused."""
    m = mount()
    out = cli("mount", "--store", str(store.root), str(m.path))
    assert out.returncode == 4
    assert "is busy" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_stale_mountpoint_is_recovered(store, tiny_gguf, tmp_path):
    """§Mounting: a daemon that died leaves ENOTCONN; the next mount recovers it."""
    store.model("registry.ollama.ai/library/tiny:latest", tiny_gguf)
    mp = tmp_path / "mnt"
    mp.mkdir()
    dead = Mount(store.root, mp, tmp_path / "dead.log")
    dead.proc.kill()
    dead.proc.wait()
    with pytest.raises(OSError):
        os.listdir(mp)  # Transport endpoint is not connected
    log = tmp_path / "d.log"
    try:
        out = cli("mount", "--store", str(store.root), "--log", str(log), str(mp))
        assert out.returncode == 0, out.stderr
        assert os.listdir(mp) == ["registry.ollama.ai"]
        assert "stale" in log.read_text()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        wait_unmounted(mp)
        dead._logf.close()


def test_umount_of_something_not_mounted_fails(tmp_path):
    out = cli("umount", str(tmp_path))
    assert out.returncode == 4
    assert "cannot unmount" in out.stderr
