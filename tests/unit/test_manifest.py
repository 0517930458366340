"""Tests for ollamafs.store.manifest: Ollama's manifest JSON as plain values."""

from __future__ import annotations

import errno
import hashlib
import json

import pytest

from ollamafs.errors import ManifestError
from ollamafs.names import Digest
from ollamafs.store.manifest import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    Layer,
    Manifest,
    parse_manifest,
)

H1, H2, H3, H4, H5 = (c * 64 for c in "12345")
IMG = "application/vnd.ollama.image."

# The bytes Ollama writes for a pulled model (compact, Go's field order).
OLLAMA_BYTES = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
    b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:' + H1.encode()
    + b'","size":485},'
    b'"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:' + H2.encode()
    + b'","size":1321082688,"from":"/root/.ollama/models/blobs/sha256-' + H2.encode() + b'"},'
    b'{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:' + H3.encode() + b'","size":1429},'
    b'{"mediaType":"application/vnd.ollama.image.license","digest":"sha256:' + H4.encode() + b'","size":7711},'
    b'{"mediaType":"application/vnd.ollama.image.params","digest":"sha256:' + H5.encode() + b'","size":96}]}'
)


def doc(**overrides: object) -> bytes:
    base: dict = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": 10},
        "layers": [{"mediaType": IMG + "model", "digest": "sha256:" + H2, "size": 20}],
    }
    base.update(overrides)
    return json.dumps(base).encode()


def test_parse_ollama_manifest() -> None:
    m = parse_manifest(OLLAMA_BYTES)
    assert m.schema_version == 2
    assert m.media_type == MANIFEST_MEDIA_TYPE
    assert m.config == Layer(CONFIG_MEDIA_TYPE, Digest(H1), 485, None)
    assert m.layers == (
        Layer(IMG + "model", Digest(H2), 1321082688, "/root/.ollama/models/blobs/sha256-" + H2),
        Layer(IMG + "template", Digest(H3), 1429, None),
        Layer(IMG + "license", Digest(H4), 7711, None),
        Layer(IMG + "params", Digest(H5), 96, None),
    )
    assert m.digest == Digest(hashlib.sha256(OLLAMA_BYTES).hexdigest())
    assert m.total_size == 485 + 1321082688 + 1429 + 7711 + 96
    assert [layer.kind for layer in m.layers] == ["model", "template", "license", "params"]
    assert m.layers_of("license") == [m.layers[2]]
    assert m.layers_of("adapter") == []
    assert m.all_blobs() == [m.config, *m.layers]


def test_to_json_bytes_reproduces_ollamas_bytes() -> None:
    assert parse_manifest(OLLAMA_BYTES).to_json_bytes() == OLLAMA_BYTES


def test_digest_is_sha256_of_the_exact_bytes() -> None:
    pretty = json.dumps(json.loads(OLLAMA_BYTES), indent=2).encode()
    a, b = parse_manifest(OLLAMA_BYTES), parse_manifest(pretty)
    assert a.layers == b.layers and a.config == b.config
    assert b.digest == Digest(hashlib.sha256(pretty).hexdigest())
    assert a.digest != b.digest
    assert parse_manifest(OLLAMA_BYTES + b"\n").digest == Digest(hashlib.sha256(OLLAMA_BYTES + b"\n").hexdigest())


def test_to_json_bytes_field_order_and_compactness() -> None:
    # keys in a different order, whitespace, unknown keys, upper-case hex, empty "from"
    data = json.dumps(
        {
            "layers": [
                {"size": 3, "from": "", "digest": "sha256-" + H2.upper(), "mediaType": IMG + "model", "x": 1},
                {"from": "alice/base", "size": 4, "mediaType": IMG + "system", "digest": "sha256:" + H3},
            ],
            "extra": True,
            "config": {"size": 7, "digest": "sha256:" + H1, "mediaType": CONFIG_MEDIA_TYPE},
            "mediaType": MANIFEST_MEDIA_TYPE,
            "schemaVersion": 2,
        },
        indent=4,
    ).encode()
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        '"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:' + H1 + '","size":7},'
        '"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:' + H2 + '","size":3},'
        '{"mediaType":"application/vnd.ollama.image.system","digest":"sha256:' + H3 + '","size":4,'
        '"from":"alice/base"}]}'
    ).encode()
    assert parse_manifest(data).to_json_bytes() == expected


def test_to_json_bytes_of_a_built_manifest() -> None:
    m = Manifest(
        config=Layer(CONFIG_MEDIA_TYPE, Digest(H1), 2),
        layers=(),
        digest=Digest(H5),
    )
    assert m.to_json_bytes() == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:'
        + H1.encode()
        + b'","size":2},"layers":[]}'
    )


def test_to_json_bytes_keeps_non_ascii_raw() -> None:
    m = parse_manifest(doc(layers=[{"mediaType": IMG + "model", "digest": "sha256:" + H2, "size": 1, "from": "é"}]))
    assert b'"from":"\xc3\xa9"' in m.to_json_bytes()


def test_to_json_bytes_escapes_html_like_go() -> None:
    layer = {"mediaType": IMG + "model", "digest": "sha256:" + H2, "size": 1, "from": "a<b>&c"}
    m = parse_manifest(doc(layers=[layer]))
    assert b'"from":"a\\u003cb\\u003e\\u0026c"' in m.to_json_bytes()


def test_oci_media_type_and_schema_are_kept() -> None:
    m = parse_manifest(doc(mediaType=OCI_MANIFEST_MEDIA_TYPE, schemaVersion=3))
    assert (m.media_type, m.schema_version) == (OCI_MANIFEST_MEDIA_TYPE, 3)
    assert m.to_json_bytes().startswith(
        b'{"schemaVersion":3,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    )


def test_missing_top_level_media_type_and_schema_default() -> None:
    data = json.dumps({"config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": 1}}).encode()
    m = parse_manifest(data)
    assert (m.media_type, m.schema_version, m.layers) == (MANIFEST_MEDIA_TYPE, 2, ())


def test_null_layers_is_empty() -> None:
    assert parse_manifest(doc(layers=None)).layers == ()


@pytest.mark.parametrize(
    ("media_type", "kind"),
    [
        (IMG + "model", "model"),
        (IMG + "adapter", "adapter"),
        (IMG + "projector", "projector"),
        (IMG + "template", "template"),
        (IMG + "prompt", "template"),  # the old name of the template layer
        (IMG + "system", "system"),
        (IMG + "params", "params"),
        (IMG + "messages", "messages"),
        (IMG + "license", "license"),
        (IMG + "embed", "embed"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", None),
        (CONFIG_MEDIA_TYPE, None),
    ],
)
def test_layer_kind(media_type: str, kind: str | None) -> None:
    assert Layer(media_type, Digest(H1), 1).kind == kind


def test_prompt_layer_counts_as_template() -> None:
    m = parse_manifest(doc(layers=[{"mediaType": IMG + "prompt", "digest": "sha256:" + H3, "size": 5}]))
    assert m.layers_of("template") == [Layer(IMG + "prompt", Digest(H3), 5)]
    assert m.layers_of("prompt") == []
    # the stored media type is kept as it was
    assert b'"mediaType":"application/vnd.ollama.image.prompt"' in m.to_json_bytes()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b'{"config":',
        b"\xff\xfe\x00garbage",
        b"[]",
        b"null",
        b'"manifest"',
        b"42",
        b"{}",
        b'{"layers": []}',
    ],
)
def test_not_a_manifest(data: bytes) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    assert info.value.errno == errno.EIO


@pytest.mark.parametrize(
    "config",
    [
        None,
        [],
        "sha256:" + H1,
        {"digest": "sha256:" + H1, "size": 1},  # no mediaType
        {"mediaType": 5, "digest": "sha256:" + H1, "size": 1},
        {"mediaType": CONFIG_MEDIA_TYPE, "size": 1},  # no digest
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1},  # no size
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": -1},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": "1"},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": 1.5},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": 1.0},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": True},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1, "size": None},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + H1[:63], "size": 1},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha512:" + H1, "size": 1},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256-../../../etc/passwd", "size": 1},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": H1, "size": 1},
        {"mediaType": CONFIG_MEDIA_TYPE, "digest": 12, "size": 1},
    ],
)
def test_bad_config(config: object) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(doc(config=config))


@pytest.mark.parametrize(
    "layers",
    [
        {"mediaType": IMG + "model"},
        "layers",
        [None],
        [["x"]],
        [{"mediaType": IMG + "model", "digest": "sha256:" + H2}],
        [{"mediaType": IMG + "model", "digest": "sha256:" + H2, "size": -5}],
        [{"mediaType": IMG + "model", "digest": "sha256:../" + H2[:61], "size": 5}],
        [{"mediaType": IMG + "model", "digest": "sha256:" + H2, "size": 5}, {"digest": "sha256:" + H3, "size": 1}],
    ],
)
def test_bad_layers(layers: object) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(doc(layers=layers))


def test_invalid_digest_error_names_the_layer() -> None:
    bad = [
        {"mediaType": IMG + "model", "digest": "sha256:" + H2, "size": 1},
        {"mediaType": IMG + "system", "digest": "sha256:zz", "size": 1},
    ]
    with pytest.raises(ManifestError, match="layer 1"):
        parse_manifest(doc(layers=bad))
