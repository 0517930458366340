"""Remote models through the mount and `ollamafs pull`, against a real docker-registry behind
the fault proxy (docs/SEMANTICS.md §Remote models, §Pulling, §Pull progress)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ollamafs.store import Store
from tests.integration.conftest import Mount
from tests.integration.registry_fixtures import (  # noqa: F401 - fixtures
    Fault,
    FaultProxy,
    fault_proxy,
    free_port,
    registry_server,
    seed_model,
)

pytestmark = [pytest.mark.fuse, pytest.mark.registry]

KiB = 1024
PART = 256 * KiB
SIZE = 2 * 1024 * KiB + 77  # 9 parts
PULL_OPTIONS = ["insecure", f"part_size={PART}", "stall_timeout=1", "retry_backoff=0.01"]
_counter = iter(range(10_000))


@pytest.fixture
def seeded(registry_server):
    """A fresh repository per test (the registry is shared by the session)."""
    repo = f"library/m{os.getpid()}x{next(_counter)}"
    return seed_model(registry_server.url, repo, "latest", model=os.urandom(SIZE),
                      extra_layers=[("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
                                    ("application/vnd.ollama.image.params", b'{"temperature":0.5}')])


def model_dir(m: Mount, proxy: FaultProxy, seeded) -> Path:
    return m.path / proxy.host / f"{seeded.repo}:{seeded.tag}"


def local_blobs(store_root: Path) -> set[str]:
    return {p.name for p in (store_root / "blobs").glob("*")} if (store_root / "blobs").exists() else set()


def test_lookup_shows_a_remote_model_without_downloading(mount, fault_proxy, seeded, store):
    """§Remote models: a lookup fetches the manifest only; sizes are real."""
    m = mount(PULL_OPTIONS)
    d = model_dir(m, fault_proxy, seeded)
    names = sorted(os.listdir(d))
    assert names == sorted(["model.gguf", "template", "params.json", "config.json", "manifest.json", "Modelfile", "generate"])
    assert os.stat(d / "model.gguf").st_size == SIZE
    assert (d / "manifest.json").read_bytes() == seeded.manifest
    assert fault_proxy.blob_requests() == []
    assert not any(n.startswith("sha256-") for n in local_blobs(store.root))
    # now listed beside local models
    assert f"{seeded.repo.split('/')[1]}:latest" in os.listdir(m.path / fault_proxy.host / "library")


def test_read_pulls_verifies_and_commits(mount, fault_proxy, seeded, store):
    """§Pulling: reading a layer pulls it; the manifest is written only once every blob is local."""
    m = mount(PULL_OPTIONS)
    d = model_dir(m, fault_proxy, seeded)
    data = (d / "model.gguf").read_bytes()
    assert hashlib.sha256(data).hexdigest() == seeded.model_digest.split(":")[1]
    assert f"sha256-{seeded.model_digest.split(':')[1]}" in local_blobs(store.root)
    manifest_path = store.root / "manifests" / fault_proxy.host / seeded.repo / seeded.tag
    assert not manifest_path.exists()  # template, params and config are not local yet
    assert (d / "Modelfile").read_text().count("PARAMETER temperature 0.5") == 1  # pulls the small layers
    (d / "config.json").read_bytes()
    deadline = time.monotonic() + 5
    while not manifest_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manifest_path.exists()
    # written as Ollama writes it (re-encoded), and every blob it names verifies
    record = Store(store.root).list()
    (rec,) = [r for n, r in record.items() if n.model == seeded.repo.split("/")[1]]
    for layer in rec.manifest.all_blobs():
        blob = store.root / "blobs" / layer.digest.filename
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == layer.digest.hex
    assert not [n for n in local_blobs(store.root) if "partial" in n]


def test_close_of_a_pulled_layer_waits_for_the_store(mount, fault_proxy, seeded, store, tmp_path):
    """§Pulling: a read gets the bytes once verified, while the blob is still being stored;
    the close waits, so once cp returns the blob and (the model being complete) its manifest
    are in the store."""
    m = mount(PULL_OPTIONS)
    d = model_dir(m, fault_proxy, seeded)
    (d / "Modelfile").read_text()  # the small layers first
    (d / "config.json").read_bytes()
    manifest_path = store.root / "manifests" / fault_proxy.host / seeded.repo / seeded.tag
    assert not manifest_path.exists()
    subprocess.run(["cp", str(d / "model.gguf"), str(tmp_path / "copy")], check=True)
    assert manifest_path.exists()  # no waiting: the close did
    blob = store.root / "blobs" / f"sha256-{seeded.model_digest.split(':')[1]}"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == seeded.model_digest.split(":")[1]
    assert (tmp_path / "copy").read_bytes() == blob.read_bytes()
    assert not [n for n in local_blobs(store.root) if "partial" in n]


def test_unknown_tag_is_enoent_and_unreachable_is_eio(mount, fault_proxy, seeded):
    """§Remote models: unknown model or tag: ENOENT; unreachable registry: EIO naming host and cause."""
    m = mount(PULL_OPTIONS)
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / fault_proxy.host / f"{seeded.repo}:nope")
    dead = f"127.0.0.1:{free_port()}"
    m.expect_warning(rf"cannot reach registry 127\.0\.0\.1|{dead}")
    with pytest.raises(OSError) as info:
        os.stat(m.path / dead / "library/x:latest")
    assert info.value.errno == errno.EIO
    assert dead in m.log()


@pytest.mark.parametrize("fault", [
    Fault("reset", after=100 * KiB, times=2),
    Fault("status", status=503, times=3),
    Fault("truncate", after=10 * KiB, times=2),
    Fault("stall", after=10 * KiB, seconds=3, times=1),
    Fault("redirect", times=None),
], ids=["reset", "5xx", "truncate", "stall", "redirect"])
def test_transient_faults_are_retried(mount, fault_proxy, seeded, store, fault):
    """§Pulling: resets, 5xx, truncation, stalls and redirects end in the right bytes."""
    fault_proxy.add(fault)
    m = mount(PULL_OPTIONS)
    m.expect_warning(r"retry|retrying|stalled|failed")
    data = (model_dir(m, fault_proxy, seeded) / "model.gguf").read_bytes()
    assert hashlib.sha256(data).hexdigest() == seeded.model_digest.split(":")[1]
    assert fault.fired >= 1


def test_corrupt_bytes_are_never_served_or_stored(mount, fault_proxy, seeded, store):
    """§Pulling: a digest mismatch fails the read with EIO, keeps nothing, and the next read starts over."""
    fault_proxy.add(Fault("corrupt", after=5000, times=1))
    m = mount(PULL_OPTIONS)
    m.expect_warning(r"digest mismatch|mismatch|failed")
    f = model_dir(m, fault_proxy, seeded) / "model.gguf"
    with pytest.raises(OSError) as info:
        f.read_bytes()
    assert info.value.errno == errno.EIO
    hexd = seeded.model_digest.split(":")[1]
    assert not [n for n in local_blobs(store.root) if hexd in n]  # neither blob nor partial
    assert "mismatch" in m.log() and hexd in m.log()
    data = f.read_bytes()  # the fault fired once; a fresh read starts over and succeeds
    assert hashlib.sha256(data).hexdigest() == hexd


def test_bearer_challenge(mount, fault_proxy, seeded):
    """§Pulling: a 401 Bearer challenge is answered with a token and the pull succeeds."""
    fault_proxy.require_bearer()
    m = mount(PULL_OPTIONS)
    data = (model_dir(m, fault_proxy, seeded) / "model.gguf").read_bytes()
    assert len(data) == SIZE
    assert fault_proxy.token_requests


def test_one_download_for_many_readers(mount, fault_proxy, seeded):
    """§Pulling: concurrent readers share one download."""
    m = mount(PULL_OPTIONS)
    f = model_dir(m, fault_proxy, seeded) / "model.gguf"
    results = []
    threads = [threading.Thread(target=lambda: results.append(f.read_bytes())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(len(r) == SIZE for r in results)
    hexd = seeded.model_digest.split(":")[1]
    full = [r for r in fault_proxy.blob_requests() if hexd in r.path and r.range and r.range.endswith("-")]
    gets = [r for r in fault_proxy.blob_requests() if hexd in r.path and r.method == "GET"]
    assert len(gets) <= -(-SIZE // PART) + 1 and not full


def test_pull_progress_file_during_a_stall(mount, fault_proxy, seeded):
    """§Pull progress: MOUNT/.pulls lists a running pull with bytes, rate and ETA."""
    fault_proxy.add(Fault("stall", after=64 * KiB, seconds=4, times=1))
    m = mount(PULL_OPTIONS[:2] + ["stall_timeout=10"])
    f = model_dir(m, fault_proxy, seeded) / "model.gguf"
    reader = threading.Thread(target=f.read_bytes)
    reader.start()
    line = ""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not line:
        line = (m.path / ".pulls").read_text()
        time.sleep(0.05)
    reader.join(30)
    assert seeded.model_digest in line and "downloading" in line and f"/{SIZE} " in line
    assert (m.path / ".pulls").read_text() == ""


def test_sigkill_mid_pull_resumes(tmp_path, fault_proxy, seeded, store):
    """§Pulling: a daemon killed mid-pull leaves a consistent store; the next mount resumes."""
    fault_proxy.add(Fault("stall", after=64 * KiB, seconds=8, times=None, skip=2))
    mp = tmp_path / "mnt"
    mp.mkdir()
    first = Mount(store.root, mp, tmp_path / "first.log", PULL_OPTIONS[:2] + ["stall_timeout=30"])
    f = model_dir(first, fault_proxy, seeded) / "model.gguf"
    reader = subprocess.Popen([sys.executable, "-c", f"open({str(f)!r}, 'rb').read()"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hexd = seeded.model_digest.split(":")[1]
    partial = store.root / "blobs" / f"sha256-{hexd}-partial"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        parts = [json.loads(p.read_text()) for p in (store.root / "blobs").glob(f"sha256-{hexd}-partial-*")]
        if sum(p["Completed"] for p in parts) > 2 * PART:
            break
        time.sleep(0.05)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    reader.kill()
    reader.wait()
    first.stop()
    assert partial.exists()
    assert not (store.root / "blobs" / f"sha256-{hexd}").exists()
    assert not (store.root / "manifests" / fault_proxy.host / seeded.repo).exists()
    assert Store(store.root).list() == {}  # what Ollama would list: nothing half-pulled
    done_before = sum(json.loads(p.read_text())["Completed"] for p in (store.root / "blobs").glob(f"sha256-{hexd}-partial-*"))
    fault_proxy.clear()
    before = len(fault_proxy.requests)
    mp2 = tmp_path / "mnt2"
    mp2.mkdir()
    second = Mount(store.root, mp2, tmp_path / "second.log", PULL_OPTIONS)
    try:
        data = (model_dir(second, fault_proxy, seeded) / "model.gguf").read_bytes()
        assert hashlib.sha256(data).hexdigest() == hexd
        fetched = 0
        for r in fault_proxy.requests[before:]:
            if hexd in r.path and r.method == "GET" and r.range:
                lo, hi = r.range.split("=")[1].split("-")
                fetched += int(hi) - int(lo) + 1
        assert fetched <= SIZE - done_before + PART, (fetched, done_before)
    finally:
        second.stop()


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ollamafs", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_cli_pull_with_progress_and_prune(fault_proxy, seeded, store, registry_server, tmp_path):
    """§Pulling: `ollamafs pull` pulls the whole model; re-pulling a moved tag prunes the old blobs."""
    name = f"{fault_proxy.host}/{seeded.repo}:{seeded.tag}"
    out = run_cli("pull", "--insecure", "--store", str(store.root), name)
    assert out.returncode == 0, out.stderr
    assert "success" in out.stderr
    old = seeded.model_digest.split(":")[1]
    assert f"sha256-{old}" in local_blobs(store.root)
    # the tag moves to new bytes: the old model blob goes, unless OLLAMA_NOPRUNE
    moved = seed_model(registry_server.url, seeded.repo, seeded.tag, model=os.urandom(1000))
    out = run_cli("pull", "--insecure", "--store", str(store.root), name)
    assert out.returncode == 0, out.stderr
    assert f"sha256-{old}" not in local_blobs(store.root)
    assert f"sha256-{moved.model_digest.split(':')[1]}" in local_blobs(store.root)
    # http:// without --insecure is refused before anything is fetched
    out = run_cli("pull", "--store", str(store.root), f"http://{name}")
    assert out.returncode != 0
    assert "refusing insecure protocol http" in out.stderr
    # unknown model: not found
    out = run_cli("pull", "--insecure", "--store", str(store.root), f"{fault_proxy.host}/library/none:x")
    assert out.returncode == 3, out.stderr


def test_noprune_keeps_old_blobs(fault_proxy, seeded, store, registry_server):
    name = f"{fault_proxy.host}/{seeded.repo}:{seeded.tag}"
    assert run_cli("pull", "--insecure", "--store", str(store.root), name).returncode == 0
    seed_model(registry_server.url, seeded.repo, seeded.tag, model=os.urandom(1000))
    out = run_cli("pull", "--insecure", "--store", str(store.root), name, env=dict(os.environ, OLLAMA_NOPRUNE="1"))
    assert out.returncode == 0, out.stderr
    assert f"sha256-{seeded.model_digest.split(':')[1]}" in local_blobs(store.root)


def test_remote_capabilities_from_a_ranged_header_read(mount, fault_proxy, registry_server, tmp_path, store):
    """§Remote models: capabilities of a model not yet local come from its GGUF header alone."""
    from tests.factory import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "t.gguf", pad_to=3 * 1024 * 1024).read_bytes()
    repo = f"library/caps{os.getpid()}"
    seeded = seed_model(registry_server.url, repo, "latest", model=gguf,
                        extra_layers=[("application/vnd.ollama.image.template", b"{{ .Tools }}{{ .Prompt }}")])
    m = mount(PULL_OPTIONS)
    d = model_dir(m, fault_proxy, seeded)
    assert os.getxattr(d, "user.ollama.capabilities") == b"completion,tools"
    hexd = seeded.model_digest.split(":")[1]
    assert f"sha256-{hexd}" not in local_blobs(store.root)  # the model itself was not pulled
    ranged = [r.range for r in fault_proxy.blob_requests() if hexd in r.path]
    assert ranged and all(r and r.startswith("bytes=0-") for r in ranged)


@pytest.mark.llama
def test_generate_pulls_a_remote_model_first(mount, fault_proxy, registry_server, tmp_path, store):
    """§generate: a model not yet local is pulled (and committed) before it answers."""
    from tests.tiny_llama import write_tiny_llama

    gguf = write_tiny_llama(tmp_path / "t.gguf").read_bytes()
    repo = f"library/gen{os.getpid()}"
    seeded = seed_model(registry_server.url, repo, "latest", model=gguf,
                        extra_layers=[("application/vnd.ollama.image.params", b'{"num_predict": 4, "temperature": 0}')])
    m = mount(PULL_OPTIONS)
    g = model_dir(m, fault_proxy, seeded) / "generate"
    fd = os.open(g, os.O_RDWR)
    try:
        os.write(fd, b"sky\n")
        out = b""
        while chunk := os.read(fd, 4096):
            out += chunk
    finally:
        os.close(fd)
    assert out.strip()
    assert (store.root / "manifests" / fault_proxy.host / repo / "latest").exists()
    assert f"sha256-{seeded.model_digest.split(':')[1]}" in local_blobs(store.root)
