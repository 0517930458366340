"""Tests for ollamafs.names: Ollama's model-name and digest rules (../shared/docs/OLLAMA.md)."""

from __future__ import annotations

import errno

import pytest

from ollamafs.errors import InvalidDigest, InvalidName
from ollamafs.names import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    Digest,
    ModelName,
    is_valid_part,
    parse_with_scheme,
)

HEX = "0123456789abcdef" * 4  # 64 lower-case hex digits
MIXED_HEX = "0123456789ABCDEF" * 2 + "0123456789abcdef" * 2


def parts(text: str) -> tuple[str, str, str, str]:
    return ModelName.parse(text).parts


# --- parsing: defaults and splitting -----------------------------------------------------------


def test_defaults_are_ollamas() -> None:
    assert (DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG) == ("registry.ollama.ai", "library", "latest")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
        ("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b")),
        ("alice/mymodel", ("registry.ollama.ai", "alice", "mymodel", "latest")),
        ("alice/mymodel:v2", ("registry.ollama.ai", "alice", "mymodel", "v2")),
        ("example.com/alice/mymodel:v2", ("example.com", "alice", "mymodel", "v2")),
        ("example.com/alice/mymodel", ("example.com", "alice", "mymodel", "latest")),
        # the ':' of a port comes before the last '/', so it is not a tag separator
        ("localhost:5000/alice/mymodel", ("localhost:5000", "alice", "mymodel", "latest")),
        ("localhost:5000/alice/mymodel:q4_K_M", ("localhost:5000", "alice", "mymodel", "q4_K_M")),
        ("_m", ("registry.ollama.ai", "library", "_m", "latest")),
        ("9b/_x-y:_t.1-2", ("registry.ollama.ai", "9b", "_x-y", "_t.1-2")),
        ("a.b-c_d.e/ns_1/m.v-1_2:T.1", ("a.b-c_d.e", "ns_1", "m.v-1_2", "T.1")),
    ],
)
def test_parse_fills_defaults_and_splits_from_the_right(text: str, expected: tuple[str, str, str, str]) -> None:
    assert parts(text) == expected


def test_parse_keeps_case() -> None:
    assert parts("Example.COM/Alice/MyModel:Q4") == ("Example.COM", "Alice", "MyModel", "Q4")


@pytest.mark.parametrize(
    ("text", "expected", "scheme"),
    [
        ("https://example.com/alice/m:v1", ("example.com", "alice", "m", "v1"), "https"),
        ("http://localhost:5000/alice/m", ("localhost:5000", "alice", "m", "latest"), "http"),
        ("http://localhost:5000/alice/m:t", ("localhost:5000", "alice", "m", "t"), "http"),
        ("example.com/alice/m:v1", ("example.com", "alice", "m", "v1"), None),
        ("m", ("registry.ollama.ai", "library", "m", "latest"), None),
    ],
)
def test_scheme_prefix_is_dropped_from_the_host(
    text: str, expected: tuple[str, str, str, str], scheme: str | None
) -> None:
    name, got_scheme = parse_with_scheme(text)
    assert (name.parts, got_scheme) == (expected, scheme)
    assert ModelName.parse(text).parts == expected


@pytest.mark.parametrize("text", ["http://alice/m", "https://m:v1", "http://m"])
def test_scheme_without_host_is_invalid(text: str) -> None:
    with pytest.raises(InvalidName):
        ModelName.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "a/b/c/d",  # four parts: "a/b" would be the host
        "a/b/c/d:t",
        "https://a/b/c/d",
        "h//m",
        "/m",
        "/ns/m",
        "ns/",
        "h/ns/",
        "m:",
        ":t",
        ":",
        "",
        "/",
        "m:t:u",  # the model would be "m:t"
    ],
)
def test_malformed_names_are_invalid(text: str) -> None:
    with pytest.raises(InvalidName) as info:
        ModelName.parse(text)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("value", [None, 42, b"llama3"])
def test_non_strings_are_invalid(value: object) -> None:
    with pytest.raises(InvalidName):
        ModelName.parse(value)  # type: ignore[arg-type]


# --- parsing: character and length rules --------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "alice.b/m",  # '.' not in the namespace
        "h.com/a.b/m:t",
        "-m",  # first character of each part
        ".m",
        "m:-t",
        "m:.t",
        "-ns/m",
        "-h/ns/m",
        ".h/ns/m",
        ":5000/ns/m",
        "llama 3",
        " llama3",
        "llama3 ",
        "llama3: latest",
        "llamä",
        "m+Q4_0",
        "m@sha256:" + HEX,
        "m:t@x",
        "ns!/m",
        "h/ns/m#",
        "h$/ns/m",
        "m\n",
        "m\t:t",
        "m/../x",
    ],
)
def test_invalid_characters(text: str) -> None:
    with pytest.raises(InvalidName):
        ModelName.parse(text)


def test_colon_only_in_the_host() -> None:
    assert ModelName("h:1", "ns", "m", "t").host == "h:1"
    for kind in ("namespace", "model", "tag"):
        fields = {"host": "h", "namespace": "ns", "model": "m", "tag": "t", kind: "a:b"}
        with pytest.raises(InvalidName):
            ModelName(**fields)


def test_dot_allowed_everywhere_but_the_namespace() -> None:
    assert ModelName("a.b", "ns", "m.1", "v1.0").parts == ("a.b", "ns", "m.1", "v1.0")
    with pytest.raises(InvalidName):
        ModelName("a.b", "n.s", "m", "t")


@pytest.mark.parametrize(
    ("kind", "limit"), [("host", 350), ("namespace", 80), ("model", 80), ("tag", 80)]
)
def test_length_limits(kind: str, limit: int) -> None:
    base = {"host": "h", "namespace": "ns", "model": "m", "tag": "t"}
    ok = ModelName(**{**base, kind: "a" * limit})
    assert len(getattr(ok, kind)) == limit
    assert is_valid_part(kind, "a" * limit)
    assert not is_valid_part(kind, "a" * (limit + 1))
    assert not is_valid_part(kind, "")
    with pytest.raises(InvalidName):
        ModelName(**{**base, kind: "a" * (limit + 1)})
    with pytest.raises(InvalidName):
        ModelName(**{**base, kind: ""})


def test_length_limits_through_parse() -> None:
    assert parts("h" * 350 + "/" + "n" * 80 + "/" + "m" * 80 + ":" + "t" * 80) == (
        "h" * 350,
        "n" * 80,
        "m" * 80,
        "t" * 80,
    )
    for text in (
        "h" * 351 + "/ns/m:t",
        "h/" + "n" * 81 + "/m:t",
        "h/ns/" + "m" * 81 + ":t",
        "h/ns/m:" + "t" * 81,
    ):
        with pytest.raises(InvalidName):
            ModelName.parse(text)


@pytest.mark.parametrize(
    ("kind", "text", "valid"),
    [
        ("host", "_h", True),
        ("host", "9h", True),
        ("host", "h-", True),
        ("host", "h:80", True),
        ("host", "h.:.", True),
        ("namespace", "_", True),
        ("namespace", "a-b_c", True),
        ("namespace", "a.b", False),
        ("model", "m.", True),
        ("model", "m:1", False),
        ("tag", "T-1.0_x", True),
        ("tag", "t/1", False),
        ("tag", "-t", False),
        ("model", "é", False),
        ("model", "m\u00e9", False),
    ],
)
def test_is_valid_part(kind: str, text: str, valid: bool) -> None:
    assert is_valid_part(kind, text) is valid


# --- equality and display -----------------------------------------------------------------------


def test_equality_and_hash_ignore_case() -> None:
    a = ModelName.parse("Example.com/Alice/Llama3:Q4_K_M")
    b = ModelName.parse("example.COM/alice/LLAMA3:q4_k_m")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1
    assert a.parts != b.parts  # case is kept for display


def test_inequality() -> None:
    base = ModelName.parse("h/ns/m:t")
    assert base != ModelName.parse("h/ns/m:u")
    assert base != ModelName.parse("h/ns/n:t")
    assert base != ModelName.parse("h/nt/m:t")
    assert base != ModelName.parse("g/ns/m:t")
    assert base != "h/ns/m:t"
    assert (base == "h/ns/m:t") is False


def test_str_is_fully_qualified() -> None:
    assert str(ModelName.parse("llama3")) == "registry.ollama.ai/library/llama3:latest"
    assert str(ModelName.parse("http://localhost:5000/a/b:c")) == "localhost:5000/a/b:c"


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("llama3.2:1b", "llama3.2:1b"),
        ("registry.ollama.ai/library/llama3.2:1b", "llama3.2:1b"),
        ("Registry.Ollama.AI/LIBRARY/Llama3.2:1B", "Llama3.2:1B"),
        ("alice/mymodel", "alice/mymodel:latest"),
        ("registry.ollama.ai/alice/mymodel:latest", "alice/mymodel:latest"),
        ("example.com/alice/mymodel:v1", "example.com/alice/mymodel:v1"),
        ("example.com/library/mymodel", "example.com/library/mymodel:latest"),
        ("localhost:5000/library/m:t", "localhost:5000/library/m:t"),
    ],
)
def test_short_display(text: str, short: str) -> None:
    assert ModelName.parse(text).short == short


def test_accessors() -> None:
    name = ModelName.parse("example.com/alice/m:v1")
    assert name.dirname == "m:v1"
    assert name.manifest_relpath == ("example.com", "alice", "m", "v1")
    assert ModelName.from_parts(name.parts) == name
    assert name.with_tag("v2").parts == ("example.com", "alice", "m", "v2")
    with pytest.raises(InvalidName):
        name.with_tag("bad tag")


def test_model_name_is_frozen() -> None:
    name = ModelName.parse("m")
    with pytest.raises(AttributeError):
        name.model = "x"  # type: ignore[misc]


# --- digests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["sha256:" + HEX, "sha256-" + HEX, "sha256:" + MIXED_HEX, "sha256-" + HEX.upper()])
def test_digest_parse_accepts_both_separators_and_any_case(text: str) -> None:
    digest = Digest.parse(text)
    assert digest.hex == text[7:].lower()
    assert str(digest) == "sha256:" + text[7:].lower()


def test_digest_forms() -> None:
    digest = Digest.parse("sha256:" + MIXED_HEX)
    assert digest == Digest(MIXED_HEX.lower())
    assert digest.filename == "sha256-" + MIXED_HEX.lower()
    assert digest.partial_filename == "sha256-" + MIXED_HEX.lower() + "-partial"
    assert digest.short == MIXED_HEX.lower()[:12]
    assert Digest.parse(str(digest)) == digest
    assert Digest.parse(digest.filename) == digest
    assert Digest.from_filename(digest.filename) == digest


@pytest.mark.parametrize(
    "text",
    [
        "",
        HEX,
        "sha256:",
        "sha256-",
        "sha256:" + HEX[:63],
        "sha256:" + HEX + "0",
        "sha256:" + HEX[:63] + "g",
        "sha256_" + HEX,
        "sha256/" + HEX,
        "sha256::" + HEX,
        "SHA256:" + HEX,
        "Sha256-" + HEX,
        "sha512:" + HEX + HEX,
        "sha1:" + HEX[:40],
        "md5:" + HEX[:32],
        " sha256:" + HEX,
        "sha256:" + HEX + " ",
        "sha256: " + HEX,
        "sha256-../../etc/passwd",
        "sha256-../" + HEX[:61],
        "sha256-" + HEX[:60] + "/../",
        "../sha256-" + HEX,
        "blobs/sha256-" + HEX,
        "sha256-" + HEX + "/..",
        "sha256-" + HEX + "-partial",
        "sha256-" + HEX + "-partial-0",
        "sha256:" + HEX + "\x00",
    ],
)
def test_digest_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidDigest) as info:
        Digest.parse(text)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("text", ["sha256:" + HEX + "\n", "sha256-" + HEX + "\n"])
def test_digest_parse_rejects_trailing_newline(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


def test_from_filename_rejects_trailing_newline() -> None:
    with pytest.raises(InvalidDigest):
        Digest.from_filename("sha256-" + HEX + "\n")


@pytest.mark.parametrize("value", [None, 5, b"sha256:" + HEX.encode()])
def test_digest_parse_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "filename", ["sha256:" + HEX, HEX, "sha256-" + HEX + "-partial", "sha256-" + HEX[:63], "x-sha256-" + HEX]
)
def test_from_filename_is_strict(filename: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.from_filename(filename)


@pytest.mark.parametrize("hex_", [HEX.upper(), HEX[:63], HEX + "a", "z" * 64, "", "sha256:" + HEX])
def test_digest_constructor_wants_64_lower_hex(hex_: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest(hex_)


def test_digest_equality_and_hash() -> None:
    a = Digest.parse("sha256:" + HEX.upper())
    b = Digest.parse("sha256-" + HEX)
    assert a == b and hash(a) == hash(b)
    assert a != Digest("f" * 64)
