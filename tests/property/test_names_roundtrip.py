"""Hypothesis round-trips for ollamafs.names: what we print, we parse back to the same value."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from ollamafs.errors import InvalidDigest, InvalidName
from ollamafs.names import Digest, ModelName, is_valid_part

FIRST = string.ascii_letters + string.digits + "_"
REST = {
    "host": FIRST + "-.:",
    "namespace": FIRST + "-",
    "model": FIRST + "-.",
    "tag": FIRST + "-.",
}
MAX_LEN = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
KINDS = ("host", "namespace", "model", "tag")


def part(kind: str, max_size: int | None = None) -> st.SearchStrategy[str]:
    limit = MAX_LEN[kind] if max_size is None else max_size
    return st.builds(
        lambda first, rest: first + rest,
        st.sampled_from(FIRST),
        st.text(alphabet=REST[kind], max_size=limit - 1),
    )


names = st.builds(ModelName, part("host", 60), part("namespace"), part("model"), part("tag"))
long_names = st.builds(
    ModelName,
    st.text(alphabet=REST["host"], min_size=349, max_size=349).map(lambda s: "h" + s),
    st.text(alphabet=REST["namespace"], min_size=79, max_size=79).map(lambda s: "n" + s),
    st.text(alphabet=REST["model"], min_size=79, max_size=79).map(lambda s: "m" + s),
    st.text(alphabet=REST["tag"], min_size=79, max_size=79).map(lambda s: "t" + s),
)


def flip_case(text: str, mask: list[bool]) -> str:
    return "".join(c.swapcase() if m else c for c, m in zip(text, mask + [False] * len(text)))


@given(names)
@example(ModelName("localhost:5000", "a", "b", "c"))
@example(ModelName("h:1:2", "_", "m.", "t-"))
def test_str_round_trips_exactly(name: ModelName) -> None:
    text = str(name)
    parsed = ModelName.parse(text)
    assert parsed == name
    assert parsed.parts == name.parts
    assert str(parsed) == text


@given(long_names)
def test_round_trip_at_the_length_limits(name: ModelName) -> None:
    assert ModelName.parse(str(name)).parts == name.parts


@given(names)
def test_short_parses_back_to_an_equal_name(name: ModelName) -> None:
    parsed = ModelName.parse(name.short)
    assert parsed == name
    assert (parsed.model, parsed.tag) == (name.model, name.tag)


@given(names, st.lists(st.booleans(), max_size=500))
def test_case_changes_keep_equality_and_hash(name: ModelName, mask: list[bool]) -> None:
    other = ModelName.parse(flip_case(str(name), mask))
    assert other == name
    assert hash(other) == hash(name)


@given(names, st.sampled_from(["http", "https"]))
def test_scheme_prefix_does_not_change_the_name(name: ModelName, scheme: str) -> None:
    parsed = ModelName.parse(f"{scheme}://{name}")
    assert parsed.parts == name.parts


BAD_ANYWHERE = " !\"#$%&'()*+,;<=>?@[\\]^`{|}~\t\n\r\x00\x7fé\u00a0\u2028ı"
BAD_FIRST = "-."


@given(names, st.sampled_from(KINDS), st.data())
def test_an_invalid_character_always_raises(name: ModelName, kind: str, data: st.DataObject) -> None:
    value = getattr(name, kind)
    bad = data.draw(st.sampled_from(BAD_ANYWHERE), label="bad")
    at = data.draw(st.integers(0, len(value)), label="at")
    broken = value[:at] + bad + value[at:]
    fields = dict(zip(KINDS, name.parts)) | {kind: broken}
    with pytest.raises(InvalidName):
        ModelName(**fields)
    with pytest.raises(InvalidName):
        ModelName.parse("{host}/{namespace}/{model}:{tag}".format(**fields))


@given(names, st.sampled_from(KINDS), st.sampled_from(BAD_FIRST))
def test_invalid_first_character_raises(name: ModelName, kind: str, bad: str) -> None:
    fields = dict(zip(KINDS, name.parts))
    fields[kind] = bad + fields[kind]
    assume(len(fields[kind]) <= MAX_LEN[kind])
    with pytest.raises(InvalidName):
        ModelName(**fields)
    with pytest.raises(InvalidName):
        ModelName.parse("{host}/{namespace}/{model}:{tag}".format(**fields))


@given(names, st.sampled_from(["namespace", "model", "tag"]), st.data())
def test_colon_outside_the_host_raises(name: ModelName, kind: str, data: st.DataObject) -> None:
    value = getattr(name, kind)
    at = data.draw(st.integers(1, len(value)))
    fields = dict(zip(KINDS, name.parts)) | {kind: value[:at] + ":" + value[at:]}
    with pytest.raises(InvalidName):
        ModelName(**fields)


@given(names, st.data())
def test_dot_in_namespace_raises(name: ModelName, data: st.DataObject) -> None:
    at = data.draw(st.integers(1, len(name.namespace)))
    with pytest.raises(InvalidName):
        ModelName(name.host, name.namespace[:at] + "." + name.namespace[at:], name.model, name.tag)


def _oracle(kind: str, text: str) -> bool:
    rest = {"host": r"[A-Za-z0-9_\-.:]", "namespace": r"[A-Za-z0-9_\-]", "model": r"[A-Za-z0-9_\-.]"}
    pattern = r"[A-Za-z0-9_]" + rest.get(kind, rest["model"]) + "*"
    return 1 <= len(text) <= MAX_LEN[kind] and re.fullmatch(pattern, text) is not None


@given(st.sampled_from(KINDS), st.text(alphabet=FIRST + "-.:/@+ é\n", max_size=90))
def test_is_valid_part_matches_the_rules(kind: str, text: str) -> None:
    assert is_valid_part(kind, text) is _oracle(kind, text)


hexes = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)


@given(hexes, st.sampled_from([":", "-"]))
def test_digest_round_trips(hex_: str, sep: str) -> None:
    digest = Digest.parse("sha256" + sep + hex_)
    assert digest.hex == hex_.lower()
    assert str(digest) == "sha256:" + hex_.lower()
    assert Digest.parse(str(digest)) == digest
    assert Digest.parse(digest.filename) == digest
    assert Digest.from_filename(digest.filename) == digest
    assert digest.partial_filename == digest.filename + "-partial"


@given(st.text(max_size=80))
def test_random_text_is_never_a_digest(text: str) -> None:
    assume(not re.fullmatch(r"sha256[:-][0-9a-fA-F]{64}\n?", text))
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


@given(hexes, st.integers(0, 63), st.sampled_from("gG/.: -\x00\n"))
def test_digest_with_a_bad_hex_character_raises(hex_: str, at: int, bad: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse("sha256:" + hex_[:at] + bad + hex_[at + 1 :])
