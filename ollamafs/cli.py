"""The ``ollamafs`` command: mount, umount.  Prints user errors without a traceback.

Exit codes: 0 success, 1 an operation failed, 2 bad usage or input, 3 not found, 4 mount
problems (mountpoint missing, busy, FUSE unavailable).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from . import __version__
from .errors import MountError, OllamaFSError
from .store import default_store_path

log = logging.getLogger("ollamafs")

READY = b"ready\n"
MOUNT_WAIT = 60.0


def default_log_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ollamafs" / "ollamafs.log"


def _setup_logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ollamafs", description="Ollama's models as files.")
    p.add_argument("--version", action="version", version=f"ollamafs {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount a store (returns once it is serving)")
    m.add_argument("mountpoint", type=Path)
    m.add_argument("--store", type=Path, default=None, help="models directory (default $OLLAMA_MODELS or ~/.ollama/models)")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, logging to stderr")
    m.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]", help="mount options")
    m.add_argument("-d", "--debug", action="store_true", help="debug logging")
    m.add_argument("--insecure", action="store_true", help="talk plain http to registries")
    m.add_argument("--offline", action="store_true", help="no registry: show only the store")
    m.add_argument("--log", type=Path, default=None, help="log file of a background mount")
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    pl = sub.add_parser("pull", help="pull a model from its registry into the store, with a progress bar")
    pl.add_argument("name", help="[scheme://][host/][namespace/]model[:tag]")
    pl.add_argument("--store", type=Path, default=None, help="models directory (default $OLLAMA_MODELS or ~/.ollama/models)")
    pl.add_argument("--insecure", action="store_true", help="talk plain http to the registry")
    pl.add_argument("-v", "--verbose", action="store_true")

    ls_ = sub.add_parser("list", aliases=["ls"], help="list the store's models as `ollama list` does")
    ls_.add_argument("--store", type=Path, default=None)

    rm = sub.add_parser("rm", help="delete models and the blobs nothing else uses")
    rm.add_argument("names", nargs="+")
    rm.add_argument("--store", type=Path, default=None)

    cp = sub.add_parser("cp", help="copy a model (the manifest; blobs are shared)")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.add_argument("--store", type=Path, default=None)

    mv = sub.add_parser("mv", help="rename a model (the manifest moves; no blob is copied)")
    mv.add_argument("source")
    mv.add_argument("destination")
    mv.add_argument("--store", type=Path, default=None)

    pr = sub.add_parser("prune", help="delete unreferenced blobs and leftover partial files")
    pr.add_argument("--store", type=Path, default=None)

    ps = sub.add_parser("push", help="push a model to its registry, with a progress bar")
    ps.add_argument("name")
    ps.add_argument("--store", type=Path, default=None)
    ps.add_argument("--insecure", action="store_true", help="talk plain http to the registry")

    u = sub.add_parser("umount", aliases=["unmount"], help="unmount")
    u.add_argument("mountpoint", type=Path)
    u.add_argument("-z", "--lazy", action="store_true", help="detach even if busy")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "mount":
            return _mount(args)
        if args.command == "pull":
            return _pull(args)
        if args.command == "push":
            return _push(args)
        if args.command in ("list", "ls", "rm", "cp", "mv", "prune"):
            return _store_command(args)
        if args.command in ("umount", "unmount"):
            from .mount import unmount

            _setup_logging(False, False)
            unmount(args.mountpoint.resolve(), lazy=args.lazy)
            return 0
    except OllamaFSError as exc:
        print(f"ollamafs: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 2


def _mount(args) -> int:
    options = [o for group in args.options for o in group.split(",") if o]
    options += [flag for flag in ("insecure", "offline") if getattr(args, flag)]
    store = (args.store or default_store_path()).expanduser().resolve()
    mountpoint = args.mountpoint.expanduser().absolute()
    if args.foreground:
        return _mount_foreground(args, mountpoint, store, options)
    return _mount_background(args, mountpoint, store, options)


def _mount_foreground(args, mountpoint: Path, store: Path, options: list[str]) -> int:
    from .mount import Daemon, MountConfig

    _setup_logging(True, args.debug)
    ready_fd = args.ready_fd

    def report(message: bytes) -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            try:
                os.write(ready_fd, message)
                os.close(ready_fd)
            except OSError:
                pass
            ready_fd = None

    try:
        config = MountConfig.from_options(mountpoint, store, options)
        config.debug = config.debug or args.debug
        Daemon(config).run(ready=lambda: report(READY))
    except OllamaFSError as exc:
        log.error("%s", exc)
        report(f"{exc}\n".encode())
        return exc.exit_code
    return 0


def _mount_background(args, mountpoint: Path, store: Path, options: list[str]) -> int:
    """Start ``mount -f`` detached and return once it serves (or report why it did not)."""
    from .mount import prepare_mountpoint

    prepare_mountpoint(mountpoint)  # clear errors before forking anything
    log_path = (args.log or default_log_path()).expanduser()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "ollamafs", "mount", "-f", "--store", str(store), "--ready-fd", str(w)]
    if options:
        cmd += ["-o", ",".join(options)]
    if args.debug:
        cmd.append("--debug")
    cmd.append(str(mountpoint))
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            cmd, pass_fds=[w], stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
        )
    os.close(w)
    deadline = time.monotonic() + MOUNT_WAIT
    answer = b""
    with os.fdopen(r, "rb") as pipe:
        answer = pipe.read()  # EOF when the daemon reports or dies
    if answer == READY:
        return 0
    if proc.poll() is None and time.monotonic() < deadline:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    message = answer.decode(errors="replace").strip() or f"the mount daemon exited ({proc.returncode}); see {log_path}"
    raise MountError(message)


def _pull(args) -> int:
    """``ollama pull`` with a progress bar: bytes, rate and ETA of the whole model."""
    import trio
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from .mount import registry_client
    from .names import parse_with_scheme
    from .pulls import PullManager
    from .registry import BlobPuller
    from .store import Store

    _setup_logging(args.verbose, False)
    name, scheme = parse_with_scheme(args.name)
    store = Store((args.store or default_store_path()).expanduser())
    console = Console(stderr=True)

    async def run() -> None:
        client = registry_client(insecure=args.insecure)
        async with client:
            client.scheme_for(name, scheme)  # an http:// name without --insecure: refuse now
            pulls = PullManager(store, client, BlobPuller(client, store.blobs_dir), scheme=scheme)
            columns = (TextColumn("pulling {task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console, transient=False) as progress:
                task = progress.add_task(name.short, total=None)

                def report(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                await pulls.pull_model(name, report)

    trio.run(run)
    console.print(f"success: {name.short} is in {store.root}")
    return 0


def _store(args):
    from .store import Store

    return Store((args.store or default_store_path()).expanduser())


def _store_command(args) -> int:
    """list, rm, cp, mv, prune: the same code the filesystem uses (store/ops.py)."""
    from .names import ModelName
    from .store import ops

    _setup_logging(False, False)
    store = _store(args)
    if args.command in ("list", "ls"):
        rows = [("NAME", "ID", "SIZE", "MODIFIED")]
        for name, rec in sorted(store.list().items(), key=lambda kv: -kv[1].mtime_ns):
            rows.append((name.short, rec.manifest.digest.short, _human(rec.manifest.total_size),
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(rec.mtime_ns / 1e9))))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("    ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0
    if args.command == "rm":
        for raw in args.names:
            name = ModelName.parse(raw)
            ops.delete_model(store, name)
            print(f"deleted '{raw}'")
        return 0
    if args.command in ("cp", "mv"):
        src, dst = ModelName.parse(args.source), ModelName.parse(args.destination)
        if args.command == "cp":
            ops.copy_model(store, src, dst)
            print(f"copied '{args.source}' to '{args.destination}'")
        else:
            ops.rename_model(store, src, dst)
            print(f"renamed '{args.source}' to '{args.destination}'")
        return 0
    removed = ops.prune(store)
    print(f"pruned {len(removed)} file(s)")
    return 0


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _push(args) -> int:
    """``ollama push`` with a progress bar: layers the registry lacks, then the manifest."""
    import trio
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from .mount import registry_client
    from .names import parse_with_scheme
    from .registry.pusher import push_model

    _setup_logging(False, False)
    name, scheme = parse_with_scheme(args.name)
    store = _store(args)
    console = Console(stderr=True)

    async def run():
        client = registry_client(insecure=args.insecure)
        async with client:
            client.scheme_for(name, scheme)
            columns = (TextColumn("pushing {task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task(name.short, total=None)

                def report(p) -> None:
                    what = f"{name.short} {p.digest.short if p.digest else 'manifest'} ({p.state})"
                    progress.update(task, description=what, completed=p.completed, total=p.total or None)

                return await push_model(client, store, name, scheme=scheme, progress=report)

    digest = trio.run(run)
    console.print(f"success: pushed {name.short} ({digest})")
    return 0
