"""Composition root: build the store and the filesystem, mount, serve, unmount cleanly."""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from .errors import MountError
from .fuse_ops import Operations
from .inference.engine import Engine
from .inference.sessions import Generator
from .pulls import PullManager
from .registry import BlobPuller, RegistryClient
from .store import Store
from .vfs.fs import FileSystem

log = logging.getLogger(__name__)


@dataclass
class MountConfig:
    mountpoint: Path
    store: Path
    fuse_options: list[str] = field(default_factory=list)
    read_in_thread: bool = False
    readahead_kb: int | None = 1024
    debug: bool = False
    insecure: bool = False  # plain http to registries
    offline: bool = False  # no registry: only what the store has
    puller: dict = field(default_factory=dict)  # BlobPuller tuning (part size, stall timeout...)

    @classmethod
    def from_options(cls, mountpoint: Path, store: Path, options: list[str]) -> MountConfig:
        config = cls(mountpoint=mountpoint, store=store)
        for opt in options:
            key, _, value = opt.partition("=")
            if key == "read_threads":
                config.read_in_thread = value.lower() not in ("0", "no", "false")
            elif key == "readahead_kb":
                try:
                    config.readahead_kb = int(value) if value else None
                except ValueError:
                    raise MountError(f"-o readahead_kb needs a number, not {value!r}") from None
            elif key == "insecure":
                config.insecure = True
            elif key == "offline":
                config.offline = True
            elif key in ("part_size", "stall_timeout", "retry_backoff"):
                try:
                    number = float(value)
                except ValueError:
                    raise MountError(f"-o {key} needs a number, not {value!r}") from None
                if number <= 0:
                    raise MountError(f"-o {key} must be positive")
                if key == "part_size":
                    config.puller.update(min_part_size=int(number), max_part_size=int(number))
                elif key == "stall_timeout":
                    config.puller["stall_timeout"] = number
                else:
                    config.puller.update(backoff_base=number, backoff_max=max(number * 8, number))
            elif key == "debug":
                config.debug = True
                config.fuse_options.append(opt)
            elif opt:
                config.fuse_options.append(opt)
        return config


def _llama_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def registry_client(*, insecure: bool) -> RegistryClient:
    """The one registry client; Basic credentials from OLLAMAFS_REGISTRY_USER/_PASSWORD."""
    return RegistryClient(
        insecure=insecure,
        username=os.environ.get("OLLAMAFS_REGISTRY_USER") or None,
        password=os.environ.get("OLLAMAFS_REGISTRY_PASSWORD") or None,
    )


def prepare_mountpoint(path: Path) -> None:
    """Check the mountpoint; recover a stale one (a daemon that died); refuse a busy one."""
    if _is_stale(path):
        log.warning("mountpoint %s is stale (its daemon died); unmounting it first", path)
        unmount(path, lazy=True)
        if _is_stale(path):
            raise MountError(f"mountpoint {path} is stale and could not be recovered")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"mountpoint {path} is busy: something is already mounted there", err=errno.EBUSY)


def _is_stale(path: Path) -> bool:
    """A FUSE mount whose daemon is gone answers ENOTCONN (statfs always asks the daemon;
    stat may be answered from the kernel's cache)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def unmount(path: Path, *, lazy: bool = False) -> None:
    """``fusermount3 -u``; MountError with fusermount's own reason when it fails."""
    cmd = ["fusermount3", "-u", "-q"] + (["-z"] if lazy else []) + [str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip() or f"fusermount3 exited with {proc.returncode}"
        err = errno.EBUSY if "busy" in reason.lower() else errno.EINVAL
        raise MountError(f"cannot unmount {path}: {reason}", err=err)


def _set_readahead(mountpoint: Path, kb: int) -> None:
    """Raise the FUSE bdi's readahead so sequential reads arrive as large requests."""
    # Not os.stat(mountpoint): that would wait for this very daemon to answer.
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == str(mountpoint):
                device = fields[2]
    if device is None:
        log.info("cannot find %s in /proc/self/mountinfo; readahead left as is", mountpoint)
        return
    knob = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    try:
        knob.write_text(str(kb))
        log.debug("readahead of %s set to %d KiB", mountpoint, kb)
    except OSError as exc:
        log.info("cannot set readahead of %s (%s); using the kernel's default", mountpoint, exc.strerror)


class Daemon:
    """One mounted filesystem, served until unmounted or signalled."""

    def __init__(self, config: MountConfig) -> None:
        self.config = config
        self.store = Store(config.store)
        self.client: RegistryClient | None = None
        self.pulls: PullManager | None = None
        if not config.offline:
            self.client = registry_client(insecure=config.insecure)
            self.pulls = PullManager(self.store, self.client, BlobPuller(self.client, self.store.blobs_dir, **config.puller))
        self.engine: Engine | None = None
        self.generator: Generator | None = None
        if _llama_available():
            self.engine = Engine()
            self.generator = Generator(self.store, self.engine, self.pulls)
        else:
            log.warning("llama-cpp-python is not installed: generate answers EOPNOTSUPP")
        self.fs = FileSystem(self.store, pulls=self.pulls, generator=self.generator, read_in_thread=config.read_in_thread)
        self.initialized = trio.Event()
        self.ops = Operations(self.fs, on_init=self.initialized.set)

    def run(self, ready=None) -> None:
        """Mount, call ``ready()`` once serving, serve, and always unmount on the way out."""
        prepare_mountpoint(self.config.mountpoint)
        if not self.config.store.is_dir():
            log.warning("store %s does not exist yet; the mount shows it empty", self.config.store)
        options = set(self.config.fuse_options) | {"fsname=ollamafs", "subtype=ollamafs"}
        try:
            pyfuse3.init(self.ops, str(self.config.mountpoint), options)
        except RuntimeError as exc:
            raise MountError(f"cannot mount {self.config.mountpoint}: {exc}") from None
        unmount_needed = True
        try:
            trio.run(self._serve, ready)
        finally:
            try:
                pyfuse3.close(unmount=unmount_needed)
            except Exception:  # already unmounted from outside
                log.debug("close after unmount", exc_info=True)
            log.info("unmounted %s", self.config.mountpoint)

    async def _serve(self, ready) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, nursery.cancel_scope)
            if self.pulls is not None:
                self.pulls.attach(nursery)
            if self.generator is not None and self.engine is not None:
                self.generator.attach(nursery)
                nursery.start_soon(self.engine.run_reaper)
            if self.config.readahead_kb:
                nursery.start_soon(self._tune_readahead)
            if ready is not None:
                ready()
            log.info("serving %s on %s", self.store.root, self.config.mountpoint)
            try:
                await pyfuse3.main()
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    if self.client is not None:
                        await self.client.aclose()
                    if self.engine is not None:
                        await self.engine.close()

    async def _tune_readahead(self) -> None:
        # The kernel applies FUSE's INIT reply (which caps readahead) right after init() runs.
        await self.initialized.wait()
        await trio.sleep(0.05)
        await trio.to_thread.run_sync(_set_readahead, self.config.mountpoint, self.config.readahead_kb)

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s; unmounting", signal.Signals(signum).name)
                scope.cancel()
                return
