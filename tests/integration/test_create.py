"""Creating and editing models by writing a Modelfile (§Creating models)."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from ollamafs.names import ModelName
from ollamafs.store import Store

pytestmark = pytest.mark.fuse

BASE = "registry.ollama.ai/library/base:1b"


@pytest.fixture
def base(store, tiny_gguf):
    store.model(BASE, tiny_gguf, template="{{ .Prompt }}", params={"top_k": 5})
    return store


def layers_of(store, name: str) -> dict:
    record = Store(store.root).get(ModelName.parse(name))
    out = {}
    for layer in record.manifest.layers:
        out.setdefault(layer.kind, []).append(store.root / "blobs" / layer.digest.filename)
    return out


def test_mkdir_then_modelfile_creates_a_model(base, mount):
    m = mount(["offline"])
    d = m.path / "localhost/me/pirate:latest"
    os.makedirs(d)
    assert os.listdir(d) == []
    blobs_before = set(os.listdir(base.root / "blobs"))
    out = subprocess.run(["sh", "-c", f"printf 'FROM base:1b\\nSYSTEM \"You are a pirate.\"\\nPARAMETER temperature 0.2\\n' > '{d}/Modelfile'"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    layers = layers_of(base, "localhost/me/pirate:latest")
    assert layers["system"][0].read_text() == "You are a pirate."
    assert json.loads(layers["params"][0].read_text()) == {"top_k": 5, "temperature": 0.2}
    assert layers["model"] == layers_of(base, BASE)["model"]  # the weights are shared, not copied
    new_blobs = set(os.listdir(base.root / "blobs")) - blobs_before
    assert len(new_blobs) == 3  # system, params, config: no copy of the model
    text = (d / "Modelfile").read_text()
    assert "SYSTEM You are a pirate." in text and "PARAMETER temperature 0.2" in text
    assert "pirate:latest" in os.listdir(m.path / "localhost/me")


def test_from_a_gguf_path_and_append(base, mount, tmp_path):
    m = mount(["offline"])
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes((base.root / "blobs").joinpath(next(iter(layers_of(base, BASE)["model"])).name).read_bytes() + b"\0" * 8)
    d = m.path / "registry.ollama.ai/library/fresh:1"
    os.mkdir(d)
    (d / "Modelfile").write_text(f"FROM {gguf}\nTEMPLATE \"\"\"Q: {{{{ .Prompt }}}}\nA:\"\"\"\n")
    layers = layers_of(base, "registry.ollama.ai/library/fresh:1")
    assert layers["model"][0].read_bytes() == gguf.read_bytes()
    assert layers["template"][0].read_text() == "Q: {{ .Prompt }}\nA:"
    # appending to an existing model's Modelfile changes it the same way
    with open(d / "Modelfile", "a") as f:
        f.write("PARAMETER num_ctx 512\n")
    layers = layers_of(base, "registry.ollama.ai/library/fresh:1")
    assert json.loads(layers["params"][0].read_text()) == {"num_ctx": 512}
    assert layers["template"][0].read_text() == "Q: {{ .Prompt }}\nA:"


def test_malformed_modelfile_is_einval_and_changes_nothing(base, mount):
    m = mount(["offline"])
    d = m.path / "registry.ollama.ai/library/base:1b"
    before = (base.root / "manifests/registry.ollama.ai/library/base/1b").read_bytes()
    fd = os.open(d / "Modelfile", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"FROM base:1b\nPARAMETER temperature hot\n")
    with pytest.raises(OSError) as info:
        os.close(fd)
    assert info.value.errno == errno.EINVAL
    assert "line 2" in m.log()
    assert (base.root / "manifests/registry.ollama.ai/library/base/1b").read_bytes() == before


def test_invalid_names_and_other_files_are_refused(base, mount):
    m = mount(["offline"])
    with pytest.raises(OSError) as info:
        os.mkdir(m.path / "registry.ollama.ai/library/-bad:1")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.mkdir(m.path / "registry.ollama.ai/library/base:1b")
    assert info.value.errno == errno.EEXIST
    os.mkdir(m.path / "registry.ollama.ai/library/new:1")
    with pytest.raises(OSError) as info:
        open(m.path / "registry.ollama.ai/library/new:1/notes.txt", "wb")
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        open(m.path / "registry.ollama.ai/library/base:1b/template", "w")
    assert info.value.errno == errno.EROFS


def test_cp_r_copies_a_model_without_storing_twice(base, mount):
    """§Creating models: cp -r of a model directory makes an identical model; no blob twice."""
    m = mount(["offline"])
    lib = m.path / "registry.ollama.ai/library"
    blobs_before = set(os.listdir(base.root / "blobs"))
    out = subprocess.run(["cp", "-r", str(lib / "base:1b"), str(lib / "twin:1b")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    src = Store(base.root).get(ModelName.parse(BASE))
    dst = Store(base.root).get(ModelName.parse("twin:1b"))
    assert [l.digest for l in dst.manifest.layers] == [l.digest for l in src.manifest.layers]
    assert dst.manifest.config.digest == src.manifest.config.digest
    assert set(os.listdir(base.root / "blobs")) == blobs_before  # nothing stored twice, no leftovers
    assert sorted(os.listdir(lib)) == ["base:1b", "twin:1b"]
    assert (lib / "twin:1b/model.gguf").read_bytes() == (lib / "base:1b/model.gguf").read_bytes()


def test_model_gguf_alone_creates_a_model(base, mount, tmp_path):
    """§Creating models: copying a GGUF into model.gguf of a new directory creates a model."""
    m = mount(["offline"])
    d = m.path / "registry.ollama.ai/library/solo:1"
    os.mkdir(d)
    gguf = tmp_path / "solo.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(5000))
    subprocess.run(["cp", str(gguf), str(d / "model.gguf")], check=True)
    layers = layers_of(base, "registry.ollama.ai/library/solo:1")
    assert layers["model"][0].read_bytes() == gguf.read_bytes()
    assert not [n for n in os.listdir(base.root / "blobs") if n.startswith(".")]


def test_template_comes_from_the_gguf_chat_template(store, mount, tmp_path):
    """§Creating models: a GGUF alone gets Ollama's template for its chat template."""
    from ollamafs.chat_templates import named
    from tests.factory import write_tiny_gguf

    jinja = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    gguf = write_tiny_gguf(tmp_path / "chat.gguf", chat_template=jinja)
    store.root.mkdir(parents=True, exist_ok=True)
    m = mount(["offline"])
    d = m.path / "registry.ollama.ai/library/chatty:1"
    os.makedirs(d)
    subprocess.run(["cp", str(gguf), str(d / "model.gguf")], check=True)
    assert layers_of(store, "registry.ollama.ai/library/chatty:1")["template"][0].read_text() == named("chatml")
    e = m.path / "registry.ollama.ai/library/chatty:2"
    os.makedirs(e)
    (e / "Modelfile").write_text(f"FROM {gguf}\n")
    assert layers_of(store, "registry.ollama.ai/library/chatty:2")["template"][0].read_text() == named("chatml")
    # no recognisable chat template: none (Ollama's default {{ .Prompt }} applies)
    plain = write_tiny_gguf(tmp_path / "plain.gguf")
    f = m.path / "registry.ollama.ai/library/plain:1"
    os.makedirs(f)
    (f / "Modelfile").write_text(f"FROM {plain}\n")
    assert "template" not in layers_of(store, "registry.ollama.ai/library/plain:1")
