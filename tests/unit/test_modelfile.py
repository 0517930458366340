"""Tests for ollamafs.modelfile (golden files) and ollamafs.store.describe over a real tmp store.

Each ``golden/<case>.json`` describes a model (contents of its layers); ``golden/<case>.modelfile``
is the text ``ollama show --modelfile`` prints for it, with the blobs directory written ``BLOBS``.
The same golden text is checked twice: rendering a hand-built ModelDescription, and rendering
what ``describe()`` reads from a store holding the model's blobs and manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from ollamafs.errors import ManifestError, MissingBlob
from ollamafs.modelfile import DEFAULT_TEMPLATE, ModelDescription, go_float, go_value, quote, render
from ollamafs.names import ModelName
from ollamafs.store import Store
from ollamafs.store.describe import describe

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
IMG = "application/vnd.ollama.image."
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
PLACEHOLDER = "BLOBS"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_case(case: str) -> tuple[dict, str]:
    spec = json.loads((GOLDEN / f"{case}.json").read_bytes())
    expected = (GOLDEN / f"{case}.modelfile").read_bytes().decode()
    return spec, expected


def layer_contents(spec: dict) -> list[tuple[str, bytes]]:
    """(media type, bytes) of every layer the case describes, in Ollama's usual order."""
    layers = [(IMG + "model", spec["model"].encode())]
    layers += [(IMG + "adapter", a.encode()) for a in spec.get("adapters", [])]
    layers += [(IMG + "projector", p.encode()) for p in spec.get("projectors", [])]
    if "template" in spec:
        layers.append((spec.get("template_media_type", IMG + "template"), spec["template"].encode()))
    if "system" in spec:
        layers.append((IMG + "system", spec["system"].encode()))
    if "params" in spec:
        layers.append((IMG + "params", json.dumps(spec["params"]).encode()))
    if "messages" in spec:
        layers.append((IMG + "messages", json.dumps(spec["messages"]).encode()))
    layers += [(IMG + "license", text.encode()) for text in spec.get("licenses", [])]
    return layers


def description_of(spec: dict) -> ModelDescription:
    def path(text: str) -> str:
        return f"{PLACEHOLDER}/sha256-{sha(text.encode())}"

    return ModelDescription(
        short_name=ModelName.parse(spec["name"]).short,
        model_path=path(spec["model"]),
        adapter_paths=tuple(path(a) for a in spec.get("adapters", [])),
        projector_paths=tuple(path(p) for p in spec.get("projectors", [])),
        template=spec.get("template", DEFAULT_TEMPLATE),
        system=spec.get("system", ""),
        options=spec.get("params", {}),
        licenses=tuple(spec.get("licenses", [])),
        messages=tuple((m["role"], m["content"]) for m in spec.get("messages", [])),
    )


def write_blob(root: Path, data: bytes) -> str:
    digest = sha(data)
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / f"sha256-{digest}").write_bytes(data)
    return digest


def write_model(root: Path, name: str, layers: list[tuple[str, bytes]], *, skip_blobs: tuple[str, ...] = ()) -> None:
    """Write the layers' blobs (except those whose media type is in skip_blobs) and the manifest."""
    config = b'{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}'
    entries = []
    for media_type, data in layers:
        digest = write_blob(root, data) if media_type not in skip_blobs else sha(data)
        entries.append({"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + write_blob(root, config), "size": len(config)},
        "layers": entries,
    }
    path = root.joinpath("manifests", *ModelName.parse(name).parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(manifest, separators=(",", ":")).encode())


def describe_name(root: Path, name: str) -> ModelDescription:
    store = Store(root, listing_ttl=0)
    return describe(store, store.get(ModelName.parse(name)))


# --- golden files -------------------------------------------------------------------------------


def test_golden_cases_are_present() -> None:
    assert CASES == ["chat", "coder", "numbers", "plain"]
    for case in CASES:
        assert (GOLDEN / f"{case}.modelfile").is_file()


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case: str) -> None:
    spec, expected = load_case(case)
    assert render(description_of(spec)) == expected


@pytest.mark.parametrize("case", CASES)
def test_store_describe_then_render_matches_golden(case: str, tmp_path: Path) -> None:
    spec, expected = load_case(case)
    write_model(tmp_path, spec["name"], layer_contents(spec))
    store = Store(tmp_path, listing_ttl=0)
    record = store.get(ModelName.parse(spec["name"]))
    text = render(describe(store, record))
    assert str(store.blobs_dir) + "/" in text
    assert text.replace(str(store.blobs_dir), PLACEHOLDER) == expected


@pytest.mark.parametrize("case", CASES)
def test_describe_reads_every_field(case: str, tmp_path: Path) -> None:
    spec, _ = load_case(case)
    write_model(tmp_path, spec["name"], layer_contents(spec))
    got = describe_name(tmp_path, spec["name"])
    blobs = str(tmp_path / "blobs")
    expected = description_of(spec)
    assert got == ModelDescription(
        short_name=expected.short_name,
        model_path=expected.model_path.replace(PLACEHOLDER, blobs),
        adapter_paths=tuple(p.replace(PLACEHOLDER, blobs) for p in expected.adapter_paths),
        projector_paths=tuple(p.replace(PLACEHOLDER, blobs) for p in expected.projector_paths),
        template=expected.template,
        system=expected.system,
        options=expected.options,
        licenses=expected.licenses,
        messages=expected.messages,
    )


# --- rendering details --------------------------------------------------------------------------


def test_every_line_ends_with_a_newline() -> None:
    text = render(ModelDescription(short_name="m:latest", model_path="/b/m"))
    assert text == (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        "# FROM m:latest\n"
        "\n"
        "FROM /b/m\n"
        "TEMPLATE {{ .Prompt }}\n"
    )


def test_adapter_paths_are_quoted_when_needed_projectors_never() -> None:
    text = render(
        ModelDescription(
            short_name="m:latest",
            model_path="/b/m",
            adapter_paths=("/b/a b", "/b/lora ", " /b/lora"),
            projector_paths=("/b/p ",),
        )
    )
    assert text.splitlines()[5:] == [
        "ADAPTER /b/a b",
        'ADAPTER "/b/lora "',
        'ADAPTER " /b/lora"',
        "FROM /b/p ",
        "TEMPLATE {{ .Prompt }}",
    ]


def test_empty_system_is_not_shown_and_empty_template_is() -> None:
    text = render(ModelDescription(short_name="m:latest", model_path="/b/m", template="", system=""))
    assert text.endswith("FROM /b/m\nTEMPLATE \n")


def test_order_of_sections() -> None:
    text = render(
        ModelDescription(
            short_name="s",
            model_path="/m",
            adapter_paths=("/a",),
            projector_paths=("/p",),
            template="T",
            system="S",
            options={"b": 1, "a": [2, "x"]},
            licenses=("L1", "L2"),
            messages=(("system", "hi"),),
        )
    )
    assert text.splitlines()[4:] == [
        "FROM /m",
        "ADAPTER /a",
        "FROM /p",
        "TEMPLATE T",
        "SYSTEM S",
        "PARAMETER a 2",
        "PARAMETER a x",
        "PARAMETER b 1",
        "LICENSE L1",
        "LICENSE L2",
        "MESSAGE system hi",
    ]


def test_parameter_values_are_quoted_like_other_values() -> None:
    text = render(ModelDescription(short_name="s", options={"stop": ["a b", " x", "y\n", 'say "q"\n']}))
    assert text.split("TEMPLATE {{ .Prompt }}\n")[1] == (
        "PARAMETER stop a b\n" 'PARAMETER stop " x"\n' 'PARAMETER stop "y\n"\n' 'PARAMETER stop """say "q"\n"""\n'
    )


def test_message_content_with_colon_space_and_role_cut() -> None:
    # Ollama joins "role: content" and cuts at the first ": " again.
    text = render(ModelDescription(short_name="s", messages=(("user", "a: b"), ("", "x"))))
    assert text.splitlines()[-2:] == ["MESSAGE user a: b", "MESSAGE  x"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("", ""),
        ("inner space", "inner space"),
        ('has "quotes"', 'has "quotes"'),
        (" lead", '" lead"'),
        ("trail ", '"trail "'),
        (" ", '" "'),
        ("a\nb", '"a\nb"'),
        ("\n", '"\n"'),
        ('a\n"b"', '"""a\n"b""""'),
        (' "x"', '""" "x""""'),
        ("\tx\t", "\tx\t"),  # only spaces and newlines count
        ("a\r\nb", '"a\r\nb"'),
    ],
)
def test_quote(value: str, expected: str) -> None:
    assert quote(value) == expected


# --- Go's %v of float64 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.7, "0.7"),
        (4096, "4096"),
        (4096.0, "4096"),
        (1e6, "1e+06"),
        (1234567, "1.234567e+06"),
        (0.0001, "0.0001"),
        (1e-05, "1e-05"),
        (0.00012, "0.00012"),
        (0.0000123, "1.23e-05"),
        (123456, "123456"),
        (999999, "999999"),
        (100000, "100000"),
        (999999.5, "999999.5"),
        (12345678, "1.2345678e+07"),
        (1.0, "1"),
        (100.0, "100"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1 / 3, "0.3333333333333333"),
        (2.5, "2.5"),
        (-2.5, "-2.5"),
        (-1e6, "-1e+06"),
        (-0.0001, "-0.0001"),
        (0.0, "0"),
        (-0.0, "-0"),
        (1e21, "1e+21"),
        (1e100, "1e+100"),
        (1.5e300, "1.5e+300"),
        (2**53, "9.007199254740992e+15"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (2.2250738585072014e-308, "2.2250738585072014e-308"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_go_float(value: float, expected: str) -> None:
    assert go_float(float(value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (None, "<nil>"),
        (0, "0"),
        (40, "40"),
        (10**7, "1e+07"),
        ("text", "text"),
        ([1, "a", True], "[1 a true]"),
        ({"b": 2.5, "a": "x"}, "map[a:x b:2.5]"),
    ],
)
def test_go_value(value: object, expected: str) -> None:
    assert go_value(value) == expected


# --- describe() over a store ------------------------------------------------------------------------


def test_no_template_layer_gives_the_default_template(tmp_path: Path) -> None:
    write_model(tmp_path, "m", [(IMG + "model", b"weights")])
    got = describe_name(tmp_path, "m")
    assert got.template == "{{ .Prompt }}" == DEFAULT_TEMPLATE
    assert (got.system, got.options, got.licenses, got.messages) == ("", {}, (), ())


def test_last_model_layer_wins_and_embed_and_foreign_layers_are_ignored(tmp_path: Path) -> None:
    write_model(
        tmp_path,
        "m",
        [
            (IMG + "model", b"first"),
            (IMG + "embed", b"embeddings"),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", b"tar"),
            (IMG + "model", b"second"),
        ],
    )
    got = describe_name(tmp_path, "m")
    assert got.model_path == str(tmp_path / "blobs" / f"sha256-{sha(b'second')}")
    assert got == ModelDescription(short_name="m:latest", model_path=got.model_path)


def test_describe_uses_the_short_name_as_stored(tmp_path: Path) -> None:
    write_model(tmp_path, "Alice/MyModel:V1", [(IMG + "model", b"w")])
    store = Store(tmp_path, listing_ttl=0)
    assert describe(store, store.get(ModelName.parse("alice/mymodel:v1"))).short_name == "Alice/MyModel:V1"


def test_missing_text_layer_raises_missing_blob(tmp_path: Path) -> None:
    write_model(tmp_path, "m", [(IMG + "model", b"w"), (IMG + "system", b"sys")], skip_blobs=(IMG + "system",))
    with pytest.raises(MissingBlob, match=sha(b"sys")):
        describe_name(tmp_path, "m")


def test_missing_model_blob_is_fine_for_describe(tmp_path: Path) -> None:
    write_model(tmp_path, "m", [(IMG + "model", b"w")], skip_blobs=(IMG + "model",))
    assert describe_name(tmp_path, "m").model_path == str(tmp_path / "blobs" / f"sha256-{sha(b'w')}")


@pytest.mark.parametrize(
    ("media", "data"),
    [
        ("params", b"not json"),
        ("params", b"[1, 2]"),
        ("params", b'"text"'),
        ("messages", b"{not json"),
        ("messages", b'{"role": "user"}'),
        ("messages", b'["hello"]'),
    ],
)
def test_bad_params_or_messages_raise_manifest_error(tmp_path: Path, media: str, data: bytes) -> None:
    write_model(tmp_path, "m", [(IMG + "model", b"w"), (IMG + media, data)])
    with pytest.raises(ManifestError):
        describe_name(tmp_path, "m")
