#!/usr/bin/env python3
"""ollamafs benchmarks: every number is a ratio against a baseline measured in the same run.

    scripts/bench [--size-mib N] [--runs N] [--models N] [--dir DIR]

1. Cold read of a large local blob through the mount vs a minimal pyfuse3 read-through
   filesystem (scripts/baseline_fs.py) reading the same file.      target: ratio <= 1.10
2. Repeated (warm) read through the mount vs reading the blob directly.  target: ratio <= 1.50
3. `ls -lR` of a store with N models (default 1000), cold and warm mount: seconds, reported.
4. A cold `cp` of the big blob's model.gguf through the mount from a local docker-registry vs
   `curl | tee FILE | openssl dgst -sha256` of the same bytes.  target: ratio <= 1.20;
   the daemon's peak RSS during that pull.                          target: < 200 MB
   Both sides run alternately, each after a 3 s settle (see SETTLE), 5 times by default.  In a
   VM whose balloon reports free memory to the host, measured again with that reporting off
   (as root; restored after): see steady_memory.
5. Generation on Gemma 3 270M through `generate` vs llama-cpp-python in-process, same options:
   tokens/s ratio (target >= 0.95) and the added time to first token (target < 20 ms).

Cold means the page cache is dropped before each read (/proc/sys/vm/drop_caches when root,
else posix_fadvise(DONTNEED) on both files).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import mmap
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.factory import StoreBuilder, write_tiny_gguf  # noqa: E402

CHUNK = 1 << 20


def drop_caches(*paths: Path) -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return
    except OSError:
        pass
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_read(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, CHUNK):
            n += len(chunk)
    finally:
        os.close(fd)
    return time.perf_counter() - t0, n


class Mounted:
    def __init__(self, cmd: list[str], mountpoint: Path, log: Path) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=self.logf, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: mount failed: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        time.sleep(0.2)  # let post-INIT tuning (readahead) settle

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.logf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ollamafs_mount(store: Path, mp: Path, log: Path, options: str = "") -> Mounted:
    cmd = [sys.executable, "-m", "ollamafs", "mount", "-f", "--store", str(store)]
    if options:
        cmd += ["-o", options]
    return Mounted(cmd + [str(mp)], mp, log)


def make_big_store(work: Path, size_mib: int) -> tuple[Path, Path, str]:
    """A store whose model layer is size_mib MiB of random bytes (kept between runs)."""
    store = work / "big-store"
    meta = work / "big-store.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        blob = store / "blobs" / f"sha256-{info['hex']}"
        if info["size_mib"] == size_mib and blob.exists() and blob.stat().st_size == size_mib * CHUNK:
            return store, blob, info["name"]
    builder = StoreBuilder(store)
    h = hashlib.sha256()
    tmp = store / "blobs" / ".bench-tmp"
    with open(tmp, "wb") as f:
        for _ in range(size_mib):
            chunk = os.urandom(CHUNK)
            h.update(chunk)
            f.write(chunk)
    blob = store / "blobs" / f"sha256-{h.hexdigest()}"
    os.rename(tmp, blob)
    name = "registry.ollama.ai/library/big:1g"
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{h.hexdigest()}", "size": size_mib * CHUNK}
    builder.manifest(name, [layer])
    meta.write_text(json.dumps({"hex": h.hexdigest(), "size_mib": size_mib, "name": name}))
    return store, blob, name


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "MISS"


def bench_reads(work: Path, size_mib: int, runs: int) -> list[str]:
    store, blob, name = make_big_store(work, size_mib)
    host, ns, rest = name.split("/", 2)
    rel = Path(host) / ns / rest / "model.gguf"
    report = []
    base_cmd = [sys.executable, str(REPO / "scripts" / "baseline_fs.py"), str(blob)]
    variants = {"ollamafs": "", "ollamafs -o read_threads": "read_threads", "ollamafs -o readahead_kb=0": "readahead_kb="}
    cold: dict[str, list[float]] = {k: [] for k in ["baseline", *variants]}
    with Mounted(base_cmd + [str(work / "mnt-base")], work / "mnt-base", work / "base.log") as base:
        mounts = {k: ollamafs_mount(store, work / f"mnt-{i}", work / f"ollamafs-{i}.log", opt)
                  for i, (k, opt) in enumerate(variants.items())}
        try:
            paths = {"baseline": base.mountpoint / blob.name, **{k: m.mountpoint / rel for k, m in mounts.items()}}
            for r in range(runs):
                order = list(paths) if r % 2 == 0 else list(reversed(paths))
                for key in order:
                    drop_caches(blob, paths[key])
                    seconds, n = timed_read(paths[key])
                    assert n == size_mib * CHUNK, (key, n)
                    cold[key].append(seconds)
            # warm: the mount's page cache (keep_cache) against the blob read directly
            ours = paths["ollamafs"]
            timed_read(ours)
            timed_read(blob)
            warm_ours, warm_direct = [], []
            for _ in range(runs):
                warm_ours.append(timed_read(ours)[0])
                warm_direct.append(timed_read(blob)[0])
        finally:
            for m in mounts.values():
                m.close()
    med = {k: statistics.median(v) for k, v in cold.items()}
    gib = size_mib / 1024
    report.append(f"cold read of a {size_mib} MiB blob (median of {runs}):")
    for k, v in med.items():
        report.append(f"  {k:28s} {v:7.3f} s  {gib / v:6.2f} GiB/s")
    ratio = med["ollamafs"] / med["baseline"]
    report.append(f"RATIO cold read ollamafs/baseline-pyfuse3 = {ratio:.3f}  (target <= 1.10) {verdict(ratio, 1.10)}")
    w_ours, w_direct = statistics.median(warm_ours), statistics.median(warm_direct)
    report.append(f"warm read: ollamafs {w_ours:.3f} s ({gib / w_ours:.2f} GiB/s), direct {w_direct:.3f} s ({gib / w_direct:.2f} GiB/s)")
    wratio = w_ours / w_direct
    report.append(f"RATIO warm read ollamafs/direct = {wratio:.3f}  (target <= 1.50) {verdict(wratio, 1.50)}")
    return report


def bench_listing(work: Path, models: int) -> list[str]:
    store_root = work / f"list-store-{models}"
    if not (store_root / "done").exists():
        builder = StoreBuilder(store_root)
        gguf = write_tiny_gguf(work / "tiny.gguf")
        model_layer = builder.layer("model", gguf.read_bytes())
        for i in range(models):
            params = builder.layer("params", json.dumps({"seed": i}).encode())
            builder.manifest(f"registry.ollama.ai/ns{i % 10}/model{i}:latest", [model_layer, params])
        (store_root / "done").write_text("")
    report = [f"ls -lR of a store with {models} models:"]
    with ollamafs_mount(store_root, work / "mnt-list", work / "list.log") as m:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run(["ls", "-lR", str(m.mountpoint)], capture_output=True)
            times.append(time.perf_counter() - t0)
            assert out.returncode == 0, out.stderr
        lines = out.stdout.count(b"\n")
    report.append(f"  first (cold) {times[0]:.2f} s, then {times[1]:.2f} s, {times[2]:.2f} s  ({lines} lines)")
    report.append(f"  per model: {1000 * times[0] / models:.2f} ms cold, {1000 * min(times[1:]) / models:.2f} ms warm")
    return report


def _upload_file(base: str, repo: str, path: Path, digest: str) -> None:
    import httpx

    with httpx.Client(trust_env=False, timeout=600) as http:
        if http.head(f"{base}/v2/{repo}/blobs/{digest}").status_code == 200:
            return
        r = http.post(f"{base}/v2/{repo}/blobs/uploads/")
        location = str(httpx.URL(base).join(r.headers["location"]))
        sep = "&" if "?" in location else "?"

        def chunks():
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK * 8):
                    yield chunk

        r = http.put(f"{location}{sep}digest={digest}", content=chunks(),
                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)})
        assert r.status_code == 201, r.text


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Seconds to wait before each timed pull run (both sides).  In a VM whose balloon reports free
# memory back to the host (virtio_balloon free page reporting, after ~2 s), memory freed just
# before a run (the previous run's output file) is cheap to reuse and memory reported back
# costs a fault per page (here ~1.9 s per GiB): without a wait, whichever side happens to
# start right after a free wins.  With it, both start from the same state.
SETTLE = 3.0
PAGE_REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")


def page_reporting() -> str:
    try:
        return f"on (order {int(PAGE_REPORTING_ORDER.read_text())})" if PAGE_REPORTING_ORDER.exists() else "absent"
    except (OSError, ValueError):
        return "unknown"


@contextlib.contextmanager
def steady_memory(prefault_gib: int = 8):
    """Turn the VM balloon's free page reporting off (an order above the largest is never
    reported) and fault in ``prefault_gib`` of memory once, so that page-cache allocations cost
    what they cost on bare metal; restore the setting afterwards.  Yields False where that
    cannot be done (not a VM with page reporting, or not root)."""
    try:
        old = PAGE_REPORTING_ORDER.read_text().strip()
        PAGE_REPORTING_ORDER.write_text("11\n")
    except OSError:
        yield False
        return
    try:
        with mmap.mmap(-1, prefault_gib << 30) as m:
            for off in range(0, prefault_gib << 30, mmap.PAGESIZE):
                m[off] = 1
        yield True
    finally:
        PAGE_REPORTING_ORDER.write_text(old + "\n")


def bench_pull(work: Path, size_mib: int, runs: int) -> list[str]:
    """A cold cp of the big blob through the mount from a local docker-registry, against
    curl | tee FILE | openssl dgst -sha256 of the same bytes from the same registry.

    Measured twice where the machine is a VM whose balloon reports free memory to the host:
    as it is, and with that reporting off (steady memory, as on bare metal).
    """
    from tests.integration.registry_fixtures import run_registry

    store, blob, _name = make_big_store(work, size_mib)
    digest = "sha256:" + blob.name.split("-", 1)[1]
    report = [f"pull of a {size_mib} MiB model.gguf from a local docker-registry (median of {runs}, alternating; "
              f"{SETTLE:g} s settle before each run):"]
    regdir = work / "registry"
    regdir.mkdir(exist_ok=True)
    with run_registry(regdir) as server:
        _upload_file(server.url, "library/big", blob, digest)
        cfg = json.dumps({"model_format": "gguf"}).encode()
        import httpx

        from tests.integration.registry_fixtures import upload_blob

        with httpx.Client(trust_env=False, timeout=60) as http:
            cdigest = upload_blob(http, server.url, "library/big", cfg)
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cdigest,
                                   "size": len(cfg)},
                        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": digest,
                                    "size": size_mib * CHUNK}]}
            r = http.put(f"{server.url}/v2/library/big/manifests/1g", content=json.dumps(manifest),
                         headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
            assert r.status_code == 201, r.text
        url = f"{server.url}/v2/library/big/blobs/{digest}"
        conditions = [(f"as the machine is (free page reporting {page_reporting()})", contextlib.nullcontext(True))]
        if PAGE_REPORTING_ORDER.exists():
            conditions.append(("steady memory (free page reporting off, 8 GiB faulted in first)", steady_memory()))
        for label, condition in conditions:
            with condition as ok:
                if not ok:
                    report.append(f"  {label}: skipped (needs root)")
                    continue
                report += _pull_runs(work, server, url, blob, size_mib, runs, label)
    return report


def _pull_runs(work: Path, server, url: str, blob: Path, size_mib: int, runs: int, label: str) -> list[str]:
    out = work / "pulled.bin"
    pipe_t, mount_t, peaks = [], [], []
    for r_ in range(runs):
        for which in (("pipe", "mount") if r_ % 2 == 0 else ("mount", "pipe")):
            if out.exists():
                out.unlink()
            if which == "pipe":
                time.sleep(SETTLE)
                t0 = time.perf_counter()
                res = subprocess.run(["bash", "-o", "pipefail", "-c",
                                      f"curl -sS --fail '{url}' | tee '{out}' | openssl dgst -sha256"],
                                     capture_output=True, text=True)
                pipe_t.append(time.perf_counter() - t0)
                assert res.returncode == 0 and blob.name.split("-", 1)[1] in res.stdout, res
            else:
                pull_store = work / "pull-store"
                subprocess.run(["rm", "-rf", str(pull_store)])
                pull_store.mkdir()
                with ollamafs_mount(pull_store, work / "mnt-pull", work / "pull.log", "insecure") as m:
                    src = m.mountpoint / server.host / "library" / "big:1g" / "model.gguf"
                    time.sleep(SETTLE)
                    t0 = time.perf_counter()
                    res = subprocess.run(["cp", str(src), str(out)], capture_output=True, text=True)
                    mount_t.append(time.perf_counter() - t0)
                    assert res.returncode == 0, res.stderr
                    peaks.append(peak_rss_mb(m.proc.pid))
                assert out.stat().st_size == size_mib * CHUNK
    if out.exists():
        out.unlink()
    p, mt = statistics.median(pipe_t), statistics.median(mount_t)
    ratio = mt / p
    peak = max(peaks)
    return [
        f"  {label}:",
        "    runs: pipeline " + " ".join(f"{t:.2f}" for t in pipe_t) + " s; mount "
        + " ".join(f"{t:.2f}" for t in mount_t) + " s",
        f"    curl | tee | openssl   {p:7.3f} s  {size_mib / 1024 / p:6.2f} GiB/s",
        f"    cp through the mount   {mt:7.3f} s  {size_mib / 1024 / mt:6.2f} GiB/s",
        f"  RATIO cold pull cp-through-mount/curl-pipeline = {ratio:.3f}  (target <= 1.20) {verdict(ratio, 1.20)}",
        f"  daemon peak RSS during the pull = {peak:.0f} MB  (target < 200 MB) {'PASS' if peak < 200 else 'MISS'}",
    ]


GEN_PROMPT = "Write a short story about a lighthouse keeper."
GEN_OPTIONS = {"temperature": 0, "top_k": 1, "seed": 1, "num_predict": 128, "num_ctx": 1024}


def _in_process_run(llm, prompt: str) -> tuple[float, float, int]:
    """(seconds to first piece, tokens/s after it, tokens) of one in-process streamed completion."""
    from llama_cpp import StoppingCriteriaList

    calls = [0]

    def count(_ids, _logits) -> bool:
        calls[0] += 1
        return False

    t0 = time.perf_counter()
    first = None
    for chunk in llm.create_completion(prompt, stream=True, max_tokens=GEN_OPTIONS["num_predict"], temperature=0.0,
                                       top_k=1, top_p=0.95, min_p=0.0, typical_p=1.0, repeat_penalty=1.1, seed=1,
                                       stop=["<end_of_turn>"], stopping_criteria=StoppingCriteriaList([count])):
        if first is None and chunk["choices"][0]["text"]:
            first = time.perf_counter()
    end = time.perf_counter()
    tokens = calls[0] - 1
    return first - t0, (tokens - 1) / (end - first), tokens


def _mount_run(path: Path) -> tuple[float, float, int]:
    """The same through MOUNT/.../generate: first byte, tokens/s after it (client-side clock)."""
    req = json.dumps({"prompt": GEN_PROMPT, "options": GEN_OPTIONS}).encode()
    fd = os.open(path, os.O_RDWR)
    try:
        os.write(fd, req)
        t0 = time.perf_counter()
        first = None
        data = b""
        while chunk := os.read(fd, 65536):
            if first is None:
                first = time.perf_counter()
            data += chunk
        end = time.perf_counter()
    finally:
        os.close(fd)
    final = json.loads(data.splitlines()[-1])
    tokens = final["eval_count"]
    return first - t0, (tokens - 1) / (end - first), tokens


def bench_generate(work: Path, runs: int) -> list[str]:
    """Tokens/s and time to first token through generate vs llama-cpp-python in-process."""
    from llama_cpp import Llama

    from ollamafs.samples import GEMMA3_TEMPLATE, build_gemma_store
    from ollamafs.template import Template

    store = build_gemma_store(work / "gemma-store")
    record = next(iter(store.list().values()))
    blob = store.blob_path(record.manifest.layers[0].digest)
    prompt = Template.parse(GEMMA3_TEMPLATE).render([{"role": "user", "content": GEN_PROMPT}])
    import llama_cpp

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    llm = Llama(model_path=str(blob), n_ctx=1024, n_batch=512, last_n_tokens_size=64, n_gpu_layers=-1 if gpu else 0,
                verbose=False)
    inproc, through = [], []
    with ollamafs_mount(store.root, work / "mnt-gen", work / "gen.log", "offline") as m:
        gen = m.mountpoint / "registry.ollama.ai/library/gemma3:270m/generate"
        _mount_run(gen)  # load the model in the daemon
        _in_process_run(llm, prompt)  # and warm the in-process one
        for r in range(runs):
            for which in (("in", "mount") if r % 2 == 0 else ("mount", "in")):
                if which == "in":
                    inproc.append(_in_process_run(llm, prompt))
                else:
                    through.append(_mount_run(gen))
    llm.close()
    tps_in = statistics.median(x[1] for x in inproc)
    tps_m = statistics.median(x[1] for x in through)
    ttft_in = statistics.median(x[0] for x in inproc)
    ttft_m = statistics.median(x[0] for x in through)
    toks = {x[2] for x in inproc} | {x[2] for x in through}
    ratio = tps_m / tps_in
    added_ms = (ttft_m - ttft_in) * 1000
    return [
        f"generation on Gemma 3 270M, {sorted(toks)} tokens, {'GPU' if gpu else 'CPU'} build (median of {runs}):",
        f"  in-process llama-cpp-python  {tps_in:7.1f} tok/s  first token {ttft_in * 1000:6.1f} ms",
        f"  through generate             {tps_m:7.1f} tok/s  first token {ttft_m * 1000:6.1f} ms",
        f"RATIO tokens/s generate/in-process = {ratio:.3f}  (target >= 0.95) {'PASS' if ratio >= 0.95 else 'MISS'}",
        f"added time to first token = {added_ms:.1f} ms  (target < 20 ms) {'PASS' if added_ms < 20 else 'MISS'}",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("OLLAMAFS_BENCH_DIR", "/var/tmp/ollamafs-bench")))
    ap.add_argument("--only", choices=["reads", "listing", "pull", "generate"], default=None)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    report: list[str] = []
    if args.only in (None, "reads"):
        report += bench_reads(args.dir, args.size_mib, args.runs)
    if args.only in (None, "listing"):
        report += bench_listing(args.dir, args.models)
    if args.only in (None, "pull"):
        report += bench_pull(args.dir, args.size_mib, max(args.runs, 5))
    if args.only in (None, "generate"):
        report += bench_generate(args.dir, max(args.runs, 5))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
