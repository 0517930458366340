"""RegistryClient and BlobPuller against a real docker-registry, through a fault-injecting proxy.

Run with ``-o markers=registry`` until the marker is registered in pyproject.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

from ollamafs.errors import NotFound
from ollamafs.names import Digest, ModelName
from ollamafs.registry import (
    BlobPuller,
    BlobWriteError,
    DigestMismatch,
    DownloadFailed,
    PartState,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
    RegistryUnreachable,
)
from ollamafs.registry.puller import INITIAL_CONNECTIONS
from tests.integration.registry_fixtures import (  # noqa: F401 - fixtures
    Fault,
    FaultProxy,
    RegistryServer,
    RequestRecord,
    SeededModel,
    fault_proxy,
    free_port,
    log_allow,
    registry_server,
    seed_model,
)

pytestmark = pytest.mark.registry

KiB = 1024
MODEL_SIZE = 3 * 1024 * KiB + 123  # 3 MiB and a bit: 7 parts of 512 KiB
PART = 512 * KiB
NPARTS = -(-MODEL_SIZE // PART)
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seeded(registry_server: RegistryServer) -> SeededModel:
    return seed_model(
        registry_server.url,
        "library/tiny",
        "latest",
        model=os.urandom(MODEL_SIZE),
        extra_layers=[("application/vnd.ollama.image.template", b"{{ .Prompt }}")],
    )


@pytest.fixture(autouse=True)
def _check_logs(log_allow: list[str]) -> list[str]:
    """Every test here fails on an unexpected WARNING or worse (registry_fixtures.log_allow)."""
    return log_allow


def client(**kw: object) -> RegistryClient:
    return RegistryClient(insecure=True, key_path=None, trust_env=False, **kw)  # type: ignore[arg-type]


def puller(c: RegistryClient, blobs: Path, **kw: object) -> BlobPuller:
    opts: dict = dict(
        parts=16,
        min_part_size=PART,
        max_part_size=PART,
        backoff_base=0.01,
        backoff_max=0.05,
        stall_timeout=2.0,
        write_size=64 * KiB,
    )
    opts.update(kw)
    return BlobPuller(c, blobs, **opts)


def name_at(host: str, seeded: SeededModel) -> ModelName:
    return ModelName.parse(f"{host}/{seeded.repo}:{seeded.tag}")


def model_digest(seeded: SeededModel) -> Digest:
    return Digest.parse(seeded.model_digest)


def pull(host: str, seeded: SeededModel, blobs: Path, *, client_kw: dict | None = None, **kw: object) -> Path:
    digest = model_digest(seeded)

    async def main() -> Path:
        async with client(**(client_kw or {})) as c:
            return await puller(c, blobs, **kw).pull(name_at(host, seeded), digest, size=MODEL_SIZE)

    return trio.run(main)


def assert_nothing_unverified(blobs: Path, seeded: SeededModel) -> None:
    """Whatever holds a final blob name holds exactly the right bytes."""
    for entry in os.listdir(blobs) if blobs.exists() else []:
        if re.fullmatch(r"sha256-[0-9a-f]{64}", entry):
            data = (blobs / entry).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry[7:], f"{entry} holds other bytes"
            assert data == seeded.blobs["sha256:" + entry[7:]]


def part_files(blobs: Path, digest: Digest) -> list[str]:
    return sorted(e for e in os.listdir(blobs) if e.startswith(digest.partial_filename))


def _asked(records: Iterable[RequestRecord]) -> int:
    """Bytes asked for by ranged GETs (not the one-byte redirect probe)."""
    total = 0
    for r in records:
        if r.range and r.range != "bytes=0-0":
            a, _, b = r.range.removeprefix("bytes=").partition("-")
            total += int(b) - int(a) + 1
    return total


def requested_bytes(proxy: FaultProxy, listener: str | None = None) -> int:
    """Bytes asked for by ranged part GETs that were answered (206)."""
    return _asked(r for r in proxy.blob_requests(listener) if r.status == 206)


def requested_bytes_since(proxy: FaultProxy, first: int) -> int:
    """Bytes asked for by ranged blob GETs after the first ``first`` requests."""
    return _asked(r for r in proxy.requests[first:] if "/blobs/" in r.path)


# -- the client against the real registry ------------------------------------------------------


def test_manifest_fetch(registry_server: RegistryServer, seeded: SeededModel) -> None:
    async def main() -> tuple[bytes, dict]:
        async with client() as c:
            return await c.get_manifest(name_at(registry_server.host, seeded))

    body, doc = trio.run(main)
    assert body == seeded.manifest
    assert doc["layers"][0]["digest"] == seeded.model_digest
    assert doc["layers"][0]["size"] == MODEL_SIZE


def test_unknown_tag_and_blob_are_notfound(registry_server: RegistryServer, seeded: SeededModel) -> None:
    async def main() -> None:
        async with client() as c:
            with pytest.raises(RegistryNotFound) as info:
                await c.get_manifest(name_at(registry_server.host, seeded).with_tag("nope"))
            assert isinstance(info.value, NotFound) and "MANIFEST_UNKNOWN" in str(info.value)
            with pytest.raises(NotFound):
                await c.blob_size(name_at(registry_server.host, seeded), Digest("e" * 64))
            assert await c.blob_size(name_at(registry_server.host, seeded), model_digest(seeded)) == MODEL_SIZE

    trio.run(main)


def test_unreachable_port(seeded: SeededModel) -> None:
    port = free_port()  # nothing listens there

    async def main() -> None:
        async with client() as c:
            with pytest.raises(RegistryUnreachable) as info:
                await c.get_manifest(ModelName.parse(f"127.0.0.1:{port}/library/tiny:latest"))
            assert f"127.0.0.1:{port}" in str(info.value)
            assert "ConnectError" in str(info.value)

    trio.run(main)


def test_full_pull_in_small_parts(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert path == tmp_path / model_digest(seeded).filename
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    assert os.listdir(tmp_path) == [path.name]  # no partial or part files left
    ranged = [r for r in fault_proxy.blob_requests() if r.range != "bytes=0-0"]
    assert len(ranged) == NPARTS
    assert requested_bytes(fault_proxy) == MODEL_SIZE


def test_single_flight_against_registry(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    digest = model_digest(seeded)

    async def main() -> list[Path]:
        out: list[Path] = []
        async with client() as c:
            p = puller(c, tmp_path)

            async def one() -> None:
                out.append(await p.pull(name_at(fault_proxy.host, seeded), digest, size=MODEL_SIZE))

            async with trio.open_nursery() as n:
                for _ in range(4):
                    n.start_soon(one)
        return out

    paths = trio.run(main)
    assert len(paths) == 4 and len(set(paths)) == 1
    assert requested_bytes(fault_proxy) == MODEL_SIZE


# -- faults --------------------------------------------------------------------------------------


def test_corrupt_body_never_gets_final_name(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path, log_allow: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    log_allow.append("digest mismatch")
    digest = model_digest(seeded)
    fault = fault_proxy.add(Fault("corrupt", after=1000, times=1))
    with pytest.raises(DigestMismatch) as info:
        pull(fault_proxy.host, seeded, tmp_path)
    assert fault.fired == 1 and digest.hex in str(info.value)
    assert os.listdir(tmp_path) == []  # data and part files deleted, nothing renamed
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and digest.hex in errors[0].getMessage()
    # the fault is spent: a fresh pull succeeds
    assert pull(fault_proxy.host, seeded, tmp_path).read_bytes() == seeded.blobs[seeded.model_digest]


def test_truncated_bodies_are_retried(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    fault = fault_proxy.add(Fault("truncate", after=100 * KiB, times=3))
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert fault.fired == 3
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    # retries continue where the broken bodies stopped: little is fetched twice
    assert requested_bytes(fault_proxy) <= MODEL_SIZE + 3 * PART


def test_persistent_truncation_fails_cleanly_then_resumes(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path
) -> None:
    digest = model_digest(seeded)
    fault_proxy.add(Fault("truncate", after=100 * KiB, times=None))
    with pytest.raises(DownloadFailed, match="failed 2 times"):
        pull(fault_proxy.host, seeded, tmp_path, max_retries=2)
    assert_nothing_unverified(tmp_path, seeded)
    assert digest.filename not in os.listdir(tmp_path)
    parts = [PartState.from_json((tmp_path / f"{digest.partial_filename}-{n}").read_bytes()) for n in range(NPARTS)]
    done_before = sum(p.completed for p in parts)
    # the JSON recorded what arrived (the puller starts with INITIAL_CONNECTIONS parts at once)
    assert done_before >= INITIAL_CONNECTIONS * 100 * KiB

    fault_proxy.clear()
    first = len(fault_proxy.requests)
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    assert requested_bytes_since(fault_proxy, first) == MODEL_SIZE - done_before  # only the rest


def test_connection_reset_mid_body_is_retried(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    fault = fault_proxy.add(Fault("reset", after=200 * KiB, times=2))
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert fault.fired == 2
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]


def test_5xx_then_pass(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    blob_fault = fault_proxy.add(Fault("status", status=503, times=3, skip=1))  # skip the redirect probe
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert blob_fault.fired == 3
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]

    fault_proxy.add(Fault("status", path=r"/manifests/", status=500, times=1))

    async def main() -> None:
        async with client() as c:
            with pytest.raises(RegistryError) as info:
                await c.get_manifest(name_at(fault_proxy.host, seeded))
            assert info.value.status == 500 and b"injected 500" in info.value.body
            assert "injected 500" in str(info.value)
            body, _ = await c.get_manifest(name_at(fault_proxy.host, seeded))
            assert body == seeded.manifest

    trio.run(main)


def test_persistent_5xx_fails_cleanly_then_succeeds(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path
) -> None:
    fault_proxy.add(Fault("status", status=503, times=None, skip=1))
    with pytest.raises(DownloadFailed, match="503"):
        pull(fault_proxy.host, seeded, tmp_path, max_retries=2)
    assert_nothing_unverified(tmp_path, seeded)
    assert model_digest(seeded).filename not in os.listdir(tmp_path)
    fault_proxy.clear()
    assert pull(fault_proxy.host, seeded, tmp_path).read_bytes() == seeded.blobs[seeded.model_digest]


def test_5xx_on_redirect_probe_is_retried(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    fault = fault_proxy.add(Fault("status", status=502, times=2))
    assert pull(fault_proxy.host, seeded, tmp_path).read_bytes() == seeded.blobs[seeded.model_digest]
    assert fault.fired == 2


def test_stalled_part_is_restarted(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fault = fault_proxy.add(Fault("stall", after=64 * KiB, seconds=8.0, times=1))
    t0 = time.monotonic()
    path = pull(fault_proxy.host, seeded, tmp_path, stall_timeout=0.5)
    elapsed = time.monotonic() - t0
    assert fault.fired == 1
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    assert elapsed < 5.0  # restarted, not waited out
    assert any("stalled" in r.getMessage() for r in caplog.get_records("call"))


def test_stall_before_headers_is_restarted(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    fault = fault_proxy.add(Fault("stall_headers", seconds=8.0, times=1, skip=1))
    t0 = time.monotonic()
    path = pull(fault_proxy.host, seeded, tmp_path, stall_timeout=0.5)
    assert fault.fired == 1 and time.monotonic() - t0 < 5.0
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]


def test_redirect_is_resolved_once(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    fault_proxy.add(Fault("redirect", times=None))
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    main = fault_proxy.blob_requests("main")
    alt = fault_proxy.blob_requests("alt")
    assert len(main) == 1 and main[0].status == 307  # one resolution
    assert len(alt) == NPARTS and all(r.range != "bytes=0-0" for r in alt)  # every part from the "CDN"
    assert requested_bytes(fault_proxy, "alt") == MODEL_SIZE


@pytest.mark.parametrize("token_key", ["token", "access_token"])
def test_bearer_challenge(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path, token_key: str) -> None:
    fault_proxy.require_bearer("tok-123", token_key=token_key)
    digest = model_digest(seeded)

    async def main() -> Path:
        async with client() as c:
            body, _ = await c.get_manifest(name_at(fault_proxy.host, seeded))
            assert body == seeded.manifest
            return await puller(c, tmp_path).pull(name_at(fault_proxy.host, seeded), digest, size=MODEL_SIZE)

    path = trio.run(main)
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    assert len(fault_proxy.token_requests) == 1  # one token per scope, cached
    query, _, _ = fault_proxy.token_requests[0]
    assert query == {"scope": [f"repository:{seeded.repo}:pull"], "service": ["fault-proxy"]}
    unauth = [r for r in fault_proxy.requests if r.status == 401]
    assert len(unauth) == 1  # only the very first request went without the token
    assert all(r.authorization == "Bearer tok-123" for r in fault_proxy.blob_requests())


def test_resume_from_prewritten_partial(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    data = seeded.blobs[seeded.model_digest]
    digest = model_digest(seeded)
    # As an interrupted pull leaves it: parts 0-2 done, part 3 a third done.  The data file also
    # holds junk past what the JSON covers (written before a SIGKILL, never recorded).
    blob = bytearray(b"\xaa" * MODEL_SIZE)
    blob[: 3 * PART + PART // 3] = data[: 3 * PART + PART // 3]
    (tmp_path / digest.partial_filename).write_bytes(bytes(blob))
    for n in range(NPARTS):
        size = min(PART, MODEL_SIZE - n * PART)
        completed = size if n < 3 else (PART // 3 if n == 3 else 0)
        (tmp_path / f"{digest.partial_filename}-{n}").write_bytes(PartState(n, n * PART, size, completed).to_json())

    path = pull(fault_proxy.host, seeded, tmp_path)
    assert path.read_bytes() == data
    assert requested_bytes(fault_proxy) == MODEL_SIZE - (3 * PART + PART // 3)
    starts = sorted(int(r.range.removeprefix("bytes=").partition("-")[0])
                    for r in fault_proxy.blob_requests() if r.range != "bytes=0-0")
    assert starts == [3 * PART + PART // 3] + [n * PART for n in range(4, NPARTS)]


_CHILD = """
import sys, trio
from ollamafs.names import Digest, ModelName
from ollamafs.registry import BlobPuller, RegistryClient
host, digest, size, blobs = sys.argv[1], Digest.parse(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
async def main():
    async with RegistryClient(insecure=True, key_path=None, trust_env=False) as c:
        p = BlobPuller(c, blobs, parts=16, min_part_size={part}, max_part_size={part}, write_size=16384,
                       checkpoint_interval=0.0, stall_timeout=60.0)
        await p.pull(ModelName.parse(host + "/library/tiny:latest"), digest, size=size)
trio.run(main)
"""


def test_resume_after_sigkill(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    digest = model_digest(seeded)
    # Every part stalls after 128 KiB: the child gets stuck mid-download and is killed there.
    fault_proxy.add(Fault("stall", after=128 * KiB, seconds=10.0, times=None))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(part=PART), fault_proxy.host, str(digest), str(MODEL_SIZE), str(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        done = 0
        while time.monotonic() < deadline and child.poll() is None:
            try:
                parts = [PartState.from_json((tmp_path / f"{digest.partial_filename}-{n}").read_bytes())
                         for n in range(NPARTS)]
                done = sum(p.completed for p in parts)
            except (OSError, ValueError):
                done = 0
            if done >= NPARTS * 100 * KiB:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        assert done >= NPARTS * 100 * KiB, f"child made too little progress: {done}"
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stderr:
            child.stderr.close()
    assert digest.filename not in os.listdir(tmp_path)
    parts = [PartState.from_json((tmp_path / f"{digest.partial_filename}-{n}").read_bytes()) for n in range(NPARTS)]
    recorded = sum(p.completed for p in parts)

    fault_proxy.clear()
    first = len(fault_proxy.requests)
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    resumed = [r for r in fault_proxy.requests[first:] if r.range and r.range != "bytes=0-0"]
    fetched = sum(int(r.range.removeprefix("bytes=").partition("-")[2]) - int(r.range[6:].partition("-")[0]) + 1
                  for r in resumed)
    assert fetched == MODEL_SIZE - recorded  # at most what the JSON did not cover
    assert recorded > 0


def test_part_json_files_are_ollamas(fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path) -> None:
    """Mid-download part files parse as Ollama's blobDownloadPart JSON."""
    digest = model_digest(seeded)
    fault_proxy.add(Fault("truncate", after=10 * KiB, times=None))
    with pytest.raises(DownloadFailed):
        pull(fault_proxy.host, seeded, tmp_path, max_retries=1)
    completed = []
    for n in range(NPARTS):
        raw = (tmp_path / f"{digest.partial_filename}-{n}").read_bytes()
        doc = json.loads(raw)
        assert list(doc) == ["N", "Offset", "Size", "Completed"] and raw.endswith(b"}\n")
        assert doc["N"] == n and doc["Offset"] == n * PART and doc["Size"] == min(PART, MODEL_SIZE - n * PART)
        completed.append(doc["Completed"])
    # The first part to give up cancels the others, which may not have received anything yet;
    # the last part (123 bytes) is too short for the fault.
    assert set(completed[:-1]) <= {0, 10 * KiB} and 10 * KiB in completed
    assert completed[-1] in (0, MODEL_SIZE % PART)
    assert (tmp_path / digest.partial_filename).stat().st_size == MODEL_SIZE


# -- the two body paths, part order, keep-alive (registry/bodies.py) ----------------------------


@pytest.mark.parametrize("raw_bodies", [True, False], ids=["stdlib-bodies", "httpx-bodies"])
@pytest.mark.parametrize(
    "fault",
    [
        Fault("truncate", after=100 * KiB, times=2),
        Fault("reset", after=200 * KiB, times=2),
        Fault("stall", after=64 * KiB, seconds=8.0, times=1),
        Fault("status", status=503, times=2, skip=1),
    ],
    ids=lambda f: f.kind,
)
def test_body_faults_on_either_body_path(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path, raw_bodies: bool, fault: Fault
) -> None:
    """Part bodies come through http.client's readinto when the registry is reached directly,
    through httpx when a proxy is configured: both recover from the same faults."""
    fault = fault_proxy.add(Fault(fault.kind, after=fault.after, times=fault.times, skip=fault.skip,
                                  status=fault.status, seconds=fault.seconds))
    path = pull(fault_proxy.host, seeded, tmp_path, raw_bodies=raw_bodies, stall_timeout=0.5)
    assert fault.fired == fault.times
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    assert_nothing_unverified(tmp_path, seeded)


@pytest.mark.parametrize("raw_bodies", [True, False], ids=["stdlib-bodies", "httpx-bodies"])
def test_corrupt_body_on_either_body_path(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path, raw_bodies: bool, log_allow: list[str]
) -> None:
    log_allow.append("digest mismatch")
    fault_proxy.add(Fault("corrupt", after=5000, times=1))
    with pytest.raises(DigestMismatch):
        pull(fault_proxy.host, seeded, tmp_path, raw_bodies=raw_bodies)
    assert os.listdir(tmp_path) == []
    assert pull(fault_proxy.host, seeded, tmp_path, raw_bodies=raw_bodies).read_bytes() == \
        seeded.blobs[seeded.model_digest]


def test_parts_are_fetched_in_offset_order_on_kept_alive_connections(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path
) -> None:
    """Connections take parts from one queue in offset order (the prefix hasher follows the
    first part, not whichever part trio happened to start first), and reuse their connection."""
    for _ in range(3):
        fault_proxy.requests.clear()
        shutil.rmtree(tmp_path, ignore_errors=True)
        pull(fault_proxy.host, seeded, tmp_path)
        parts = [r for r in fault_proxy.blob_requests() if r.range and r.range != "bytes=0-0"]
        starts = [int(r.range.removeprefix("bytes=").partition("-")[0]) for r in parts]
        assert len(starts) == NPARTS
        assert sorted(starts[:INITIAL_CONNECTIONS]) == [n * PART for n in range(INITIAL_CONNECTIONS)]
        # each connection asks in offset order; the connections interleave
        assert all(abs(starts.index(n * PART) - n) < INITIAL_CONNECTIONS for n in range(NPARTS))
        assert len({r.conn for r in parts}) <= INITIAL_CONNECTIONS + 1  # (the probe's may be reused too)


def test_redirected_part_drops_credentials_for_another_origin(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path
) -> None:
    """A part GET answered with a redirect is followed by the body pool itself; the registry's
    token does not go to the other origin."""
    fault_proxy.require_bearer("tok-9")
    fault = fault_proxy.add(Fault("redirect", times=None, skip=1))  # the probe is not redirected
    path = pull(fault_proxy.host, seeded, tmp_path)
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    assert fault.fired == NPARTS
    alt = fault_proxy.blob_requests("alt")
    assert len(alt) == NPARTS and all(r.authorization is None for r in alt)
    main = [r for r in fault_proxy.blob_requests("main") if r.status == 307]
    assert all(r.authorization == "Bearer tok-9" for r in main)


def test_body_pool_is_used_only_without_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from ollamafs.registry.bodies import BodyPool

    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    pool = BodyPool(user_agent="t")
    assert pool.direct("https://registry.example/v2/x/blobs/sha256:00")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert not pool.direct("https://registry.example/v2/x")
    assert pool.direct("http://registry.example/v2/x")  # only https goes through that proxy
    monkeypatch.setenv("no_proxy", "registry.example")
    assert pool.direct("https://registry.example/v2/x")
    assert not pool.direct("https://cdn.example/blob")
    assert BodyPool(user_agent="t", trust_env=False).direct("https://cdn.example/blob")


# -- serving verified bytes while the blob is being stored (pulls.open_verified) ----------------


def _slow_commit_pull(fault_proxy, seeded, tmp_path, commit_error: OSError | None = None):
    """Pull the model layer through a PullManager whose puller's commit waits for a go (and
    then fails with ``commit_error``, if given); returns what was seen at each step."""
    from ollamafs.pulls import PullManager
    from ollamafs.store import Store

    store = Store(tmp_path)
    digest = model_digest(seeded)
    name = name_at(fault_proxy.host, seeded)
    release = threading.Event()
    seen: dict[str, object] = {"store": store}

    async def main() -> None:
        async with client() as c:
            p = puller(c, store.blobs_dir)
            commit = p._commit

            def slow_commit(d: Digest, fd: int, nparts: int) -> None:
                if d == digest:
                    assert release.wait(30)
                    if commit_error is not None:
                        raise commit_error
                commit(d, fd, nparts)

            p._commit = slow_commit  # type: ignore[method-assign]
            pulls = PullManager(store, c, p)
            async with trio.open_nursery() as nursery:
                pulls.attach(nursery)
                record = await pulls.remote(name)
                for layer in record.manifest.all_blobs():  # the other layers first (config, template)
                    if layer.digest != digest:
                        await pulls.ensure_blob(name, layer.digest, layer.size)
                early = await pulls.open_verified(record, digest, MODEL_SIZE)
                assert early is not None
                fd, job = early
                try:
                    seen["bytes"] = os.pread(fd, MODEL_SIZE + 1, 0)
                finally:
                    os.close(fd)
                seen["final_before"] = store.blob_path(digest).exists()
                seen["manifest_before"] = store.manifest_path(name).exists()
                seen["partial_before"] = (store.blobs_dir / digest.partial_filename).exists()
                release.set()
                try:
                    await pulls.stored(job)  # no record: whatever commits, the job did
                except Exception as exc:
                    seen["error"] = exc
                seen["manifest_after"] = store.manifest_path(name).exists()
                nursery.cancel_scope.cancel()

    async def bounded() -> None:
        with trio.fail_after(60):
            await main()

    trio.run(bounded)
    return seen


def test_verified_bytes_are_readable_before_the_blob_is_stored(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path
) -> None:
    """open_verified hands out a descriptor once the sha256 matched, while fsync and rename
    still run; the blob and then the manifest reach the store afterwards, in that order, by the
    pull job itself."""
    seen = _slow_commit_pull(fault_proxy, seeded, tmp_path)
    store = seen["store"]
    digest = model_digest(seeded)
    assert seen["bytes"] == seeded.blobs[seeded.model_digest]
    assert seen["final_before"] is False and seen["manifest_before"] is False and seen["partial_before"] is True
    assert "error" not in seen and seen["manifest_after"] is True
    assert store.blob_path(digest).read_bytes() == seeded.blobs[seeded.model_digest]
    assert_nothing_unverified(store.blobs_dir, seeded)


def test_a_store_failure_after_verification_reaches_the_closer(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path, log_allow: list[str]
) -> None:
    """§Pulling: a failure to store (disk full) fails the reader's close; nothing unverified or
    half-stored gets a final name, and the next pull finishes the job from the partial file."""
    log_allow.append("pull of blob")
    seen = _slow_commit_pull(fault_proxy, seeded, tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    store = seen["store"]
    digest = model_digest(seeded)
    err = seen["error"]
    assert isinstance(err, BlobWriteError) and err.errno == errno.ENOSPC
    assert seen["manifest_after"] is False and not store.blob_path(digest).exists()
    assert (store.blobs_dir / digest.partial_filename).exists()
    first = len(fault_proxy.requests)
    path = pull(fault_proxy.host, seeded, store.blobs_dir)
    assert path.read_bytes() == seeded.blobs[seeded.model_digest]
    assert requested_bytes_since(fault_proxy, first) == 0  # resumed: everything was on disk


def test_a_failing_part_ends_the_pull_while_connections_are_added(
    fault_proxy: FaultProxy, seeded: SeededModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part that fails for good cancels the pull; connections the scaler would add meanwhile
    (the pull is slow) are not started into the cancelled pull, which used to hang for ever."""
    orig = BlobPuller._fetch_part

    def fetch(self, url, auth, digest, fd, part, dl, stop, token):
        if part.n == 1:
            raise RegistryNotFound(f"blob {digest} not found (injected)", url=url)
        if part.n == 0:
            time.sleep(3.0)  # a read that blocks: the scaler sees < 64 MB/s per connection at 1 s
            return None
        return orig(self, url, auth, digest, fd, part, dl, stop, token)

    monkeypatch.setattr(BlobPuller, "_fetch_part", fetch)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            pull(fault_proxy.host, seeded, tmp_path, concurrency=16, stall_timeout=30.0)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)  # a hang must fail the test, not block it
    t.start()
    t.join(15)
    assert not t.is_alive(), "the pull hung after its part failed"
    assert len(outcome) == 1 and isinstance(outcome[0], RegistryNotFound)
    assert_nothing_unverified(tmp_path, seeded)


def test_prefix_hasher_holds_downloads_back(tmp_path: Path) -> None:
    """Downloads wait while more than hash_lead bytes of the finished prefix are unhashed."""
    import threading as th

    from ollamafs.registry.puller import PartState, _PrefixHasher

    data = os.urandom(4 * 1024 * KiB)
    f = tmp_path / "d"
    f.write_bytes(data)
    fd = os.open(f, os.O_RDONLY)
    try:
        # a resumed pull: what was on disk before does not hold downloads back while hashed
        resumed = [PartState(0, 0, len(data), completed=3 * 1024 * KiB), PartState(1, len(data), 0)]
        assert _PrefixHasher(fd, resumed).wait_room(1024 * KiB, th.Event())
        # a fresh pull that downloaded 3 MiB in this session
        parts = [PartState(0, 0, len(data)), PartState(1, len(data), 0)]
        h = _PrefixHasher(fd, parts)
        parts[0].completed = 3 * 1024 * KiB
        stop = th.Event()
        released = th.Event()

        def download() -> None:
            if h.wait_room(1024 * KiB, stop):
                released.set()

        t = th.Thread(target=download)
        t.start()
        assert not released.wait(0.3)  # 3 MiB unhashed > 1 MiB lead
        h.advance(1024 * KiB)
        assert not released.wait(0.3)  # still 2 MiB
        h.advance(1024 * KiB)
        assert released.wait(5)  # 1 MiB left: room again
        t.join()
        assert h.pos == 2 * 1024 * KiB
        # hashing ahead that gave up (a read error) holds nobody back
        parts[0].completed = len(data)
        h.unpace()
        assert h.wait_room(0, stop)
        h._unpaced = False
        # a stop request ends a wait too
        stopped = th.Thread(target=lambda: seen.append(h.wait_room(0, stop)))
        seen: list[bool] = []
        stopped.start()
        stop.set()
        stopped.join(5)
        assert seen == [False]
    finally:
        os.close(fd)
