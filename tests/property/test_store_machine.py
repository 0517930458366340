"""Random sequences of pull, cp, mv, rm, create, Modelfile edits and prune through the real
mount, against a reference model of plain dicts; the store's invariants checked after every
step (docs/SEMANTICS.md §Deleting and renaming, §Creating models, §Pulling, §Pushing and pruning)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from ollamafs.store import Store
from tests.integration.conftest import Mount
from tests.integration.registry_fixtures import registry_server, seed_model  # noqa: F401 - fixture

pytestmark = [pytest.mark.fuse, pytest.mark.registry, pytest.mark.slow]

REMOTE = ["r1", "r2"]  # seeded in the registry, namespace "library"
LOCAL = ["a", "b", "c"]  # names the steps create, namespace "local" (the registry has none)


def sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class StoreMachine(RuleBasedStateMachine):
    host: str = ""
    seeded: dict = {}

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ollamafs-machine-"))
        self.store = self.tmp / "models"
        self.store.mkdir()
        (self.tmp / "mnt").mkdir()
        self.mount = Mount(self.store, self.tmp / "mnt", self.tmp / "mount.log",
                           ["insecure", "part_size=65536", "retry_backoff=0.01"])
        self.models: dict[str, str] = {}  # reference: "ns/model:tag" -> system text ("" if none)

    def path(self, ref: str) -> Path:
        return self.mount.path / self.host / ref

    def teardown(self) -> None:
        self.mount.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(name=st.sampled_from(REMOTE))
    def pull(self, name: str) -> None:
        ref = f"library/{name}:latest"
        d = self.path(ref)
        for f in sorted(os.listdir(d)):
            if f not in ("generate", "Modelfile"):
                (d / f).read_bytes()
        assert (d / "model.gguf").read_bytes() == self.seeded[name]
        self.models[ref] = ""

    @precondition(lambda self: self.models)
    @rule(data=st.data(), dst=st.sampled_from(LOCAL))
    def cp(self, data, dst: str) -> None:
        src = data.draw(st.sampled_from(sorted(self.models)))
        target = f"local/{dst}:latest"
        out = subprocess.run(["cp", "-r", str(self.path(src)), str(self.path(target))], capture_output=True, text=True)
        if target in self.models:
            assert out.returncode != 0  # into an existing model directory: refused
            return
        assert out.returncode == 0, out.stderr
        self.models[target] = self.models[src]

    @precondition(lambda self: self.models)
    @rule(data=st.data(), dst=st.sampled_from(LOCAL))
    def mv(self, data, dst: str) -> None:
        src = data.draw(st.sampled_from(sorted(self.models)))
        target = f"local/{dst}:latest"
        os.makedirs(self.mount.path / self.host / "local", exist_ok=True)
        try:
            os.rename(self.path(src), self.path(target))
        except OSError:
            assert target in self.models and target != src
            return
        if src != target:
            self.models[target] = self.models.pop(src)

    @precondition(lambda self: self.models)
    @rule(data=st.data())
    def rm(self, data) -> None:
        ref = data.draw(st.sampled_from(sorted(self.models)))
        shutil.rmtree(self.path(ref))
        del self.models[ref]

    @precondition(lambda self: self.models)
    @rule(data=st.data(), dst=st.sampled_from(LOCAL), system=st.sampled_from(["Be brief.", "You are a pirate."]))
    def create(self, data, dst: str, system: str) -> None:
        base = data.draw(st.sampled_from(sorted(self.models)))
        target = f"local/{dst}:latest"
        d = self.path(target)
        if target not in self.models:
            os.makedirs(d)
        base_name = f"{self.host}/{base}"
        (d / "Modelfile").write_text(f'FROM {base_name}\nSYSTEM "{system}"\n')
        self.models[target] = system

    @precondition(lambda self: self.models)
    @rule(data=st.data(), value=st.sampled_from([0.1, 0.5]))
    def edit(self, data, value: float) -> None:
        ref = data.draw(st.sampled_from(sorted(self.models)))
        with open(self.path(ref) / "Modelfile", "a") as f:
            f.write(f"PARAMETER temperature {value}\n")
        params = json.loads((self.path(ref) / "params.json").read_text())
        assert params["temperature"] == value

    @rule()
    def prune(self) -> None:
        out = subprocess.run([sys.executable, "-m", "ollamafs", "prune", "--store", str(self.store)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        referenced = {layer.digest.filename for rec in Store(self.store).list().values()
                      for layer in rec.manifest.all_blobs()}
        blobs = self.store / "blobs"
        left = {n for n in os.listdir(blobs) if "partial" not in n} if blobs.exists() else set()
        assert left == referenced  # no unreferenced blob survives a prune

    @invariant()
    def tree_equals_reference(self) -> None:
        listed = set()
        for ns in ("library", "local"):
            d = self.mount.path / self.host / ns
            if d.is_dir():
                listed |= {f"{ns}/{m}" for m in os.listdir(d)}
        assert listed == set(self.models)

    @invariant()
    def store_is_consistent(self) -> None:
        records = Store(self.store).list()
        assert {f"{n.namespace}/{n.model}:{n.tag}" for n in records} == set(self.models)
        for name, rec in records.items():
            # Ollama's layout: manifests/<host>/<ns>/<model>/<tag>, 0644, parses, blobs verify
            assert rec.path == self.store / "manifests" / name.host / name.namespace / name.model / name.tag
            assert rec.path.stat().st_mode & 0o777 == 0o644
            for layer in rec.manifest.all_blobs():
                blob = self.store / "blobs" / layer.digest.filename
                assert blob.stat().st_size == layer.size and sha_file(blob) == layer.digest.hex
            system = [layer for layer in rec.manifest.layers if layer.kind == "system"]
            want = self.models[f"{name.namespace}/{name.model}:{name.tag}"]
            assert (self.store / "blobs" / system[0].digest.filename).read_text() == want if want else not system
        assert self.mount.proc.poll() is None  # the daemon is alive


def test_random_model_operations(registry_server):  # noqa: F811
    seeded = {}
    for name in REMOTE:
        model = os.urandom(150_000)
        seed_model(registry_server.url, f"library/{name}", "latest", model=model,
                   extra_layers=[("application/vnd.ollama.image.template", b"{{ .Prompt }}")])
        seeded[name] = model
    StoreMachine.host = registry_server.host
    StoreMachine.seeded = seeded
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(max_examples=int(os.environ.get("MACHINE_EXAMPLES", "12")), stateful_step_count=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
