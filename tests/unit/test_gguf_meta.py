"""Tests for ollamafs.gguf_meta against files written by the gguf package's GGUFWriter."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from ollamafs.errors import OllamaFSError
from ollamafs.gguf_meta import ArrayInfo, GGUFError, is_embedding_model, read_metadata


def write_gguf(path: Path, *, pooling: bool = False, arch: str = "llama") -> Path:
    writer = GGUFWriter(str(path), arch)
    writer.add_string("general.name", "tiny-llamä")
    writer.add_uint32(f"{arch}.context_length", 4096)
    writer.add_uint8("test.u8", 255)
    writer.add_int8("test.i8", -128)
    writer.add_uint16("test.u16", 65535)
    writer.add_int16("test.i16", -32768)
    writer.add_int32("test.i32", -2147483648)
    writer.add_uint64("test.u64", 2**64 - 1)
    writer.add_int64("test.i64", -(2**63))
    writer.add_float32(f"{arch}.rope.freq_base", 500000.0)
    writer.add_float32("test.f32", 0.1)
    writer.add_float64("test.f64", 0.1)
    writer.add_bool("test.true", True)
    writer.add_bool("test.false", False)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "wörld", ""])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25])
    writer.add_array("test.ints", [1, 2, 3, 4])
    if pooling:
        writer.add_uint32(f"{arch}.pooling_type", 1)
    writer.add_string("tokenizer.chat_template", "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "model.gguf")


def plain(meta: dict[str, object]) -> dict[str, object]:
    """Metadata with ArrayInfo turned into comparable tuples."""
    return {k: (v.item_type, v.count) if isinstance(v, ArrayInfo) else v for k, v in meta.items()}


def kv_end(path: Path) -> int:
    """Offset just past the key/value section, from gguf's own reader."""
    reader = GGUFReader(str(path))
    return max(field.offset + sum(part.nbytes for part in field.parts) for field in reader.fields.values())


def test_scalars_match_gguf_reader(gguf_file: Path) -> None:
    meta = read_metadata(gguf_file)
    reader = GGUFReader(str(gguf_file))
    compared = 0
    for key, field in reader.fields.items():
        if key in ("GGUF.tensor_count", "GGUF.kv_count"):
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            info = meta[key]
            assert isinstance(info, ArrayInfo)
            assert (info.item_type, info.count) == (field.types[1], len(field.data))
        else:
            value = field.contents()
            assert meta[key] == value, key
            assert type(meta[key]) is type(value), key
        compared += 1
    assert compared == len(meta) == 20


def test_exact_values(gguf_file: Path) -> None:
    meta = read_metadata(gguf_file)
    assert meta["GGUF.version"] == 3
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "tiny-llamä"
    assert meta["llama.context_length"] == 4096
    assert (meta["test.u8"], meta["test.i8"], meta["test.u16"], meta["test.i16"]) == (255, -128, 65535, -32768)
    assert (meta["test.i32"], meta["test.u64"], meta["test.i64"]) == (-(2**31), 2**64 - 1, -(2**63))
    assert meta["llama.rope.freq_base"] == 500000.0
    assert meta["test.f32"] == float(np.float32(0.1)) != 0.1
    assert meta["test.f64"] == 0.1
    assert meta["test.true"] is True and meta["test.false"] is False
    tokens = meta["tokenizer.ggml.tokens"]
    assert isinstance(tokens, ArrayInfo)
    assert (tokens.item_type, tokens.count) == (GGUFValueType.STRING, 5)
    assert repr(tokens) == "ArrayInfo(STRING, 5)"
    scores = meta["tokenizer.ggml.scores"]
    assert isinstance(scores, ArrayInfo) and (scores.item_type, scores.count) == (GGUFValueType.FLOAT32, 3)
    assert meta["tokenizer.chat_template"].startswith("{{ bos_token }}")
    assert "llama.pooling_type" not in meta


def test_keys_keep_file_order(gguf_file: Path) -> None:
    reader = GGUFReader(str(gguf_file))
    expected = ["GGUF.version"] + [k for k in reader.fields if not k.startswith("GGUF.")]
    assert list(read_metadata(gguf_file)) == expected


def test_accepts_str_path(gguf_file: Path) -> None:
    assert read_metadata(str(gguf_file))["general.architecture"] == "llama"


def test_is_embedding_model(tmp_path: Path) -> None:
    plain = read_metadata(write_gguf(tmp_path / "plain.gguf"))
    pooled = read_metadata(write_gguf(tmp_path / "pooled.gguf", pooling=True))
    assert pooled["llama.pooling_type"] == 1
    assert is_embedding_model(plain) is False
    assert is_embedding_model(pooled) is True


def test_is_embedding_model_uses_the_architecture_prefix(tmp_path: Path) -> None:
    bert = read_metadata(write_gguf(tmp_path / "bert.gguf", arch="bert", pooling=True))
    assert is_embedding_model(bert) is True
    assert is_embedding_model({"general.architecture": "bert", "llama.pooling_type": 1}) is False
    assert is_embedding_model({"llama.pooling_type": 1}) is False
    assert is_embedding_model({"general.architecture": 5, "5.pooling_type": 1}) is False
    assert is_embedding_model({}) is False


def test_every_truncation_of_the_header_raises(gguf_file: Path, tmp_path: Path) -> None:
    data = gguf_file.read_bytes()
    end = kv_end(gguf_file)
    assert 24 < end < len(data)
    cut = tmp_path / "cut.gguf"
    for size in range(end):
        cut.write_bytes(data[:size])
        with pytest.raises(GGUFError):
            read_metadata(cut)
    # cutting after the key/value section leaves the metadata readable
    cut.write_bytes(data[:end])
    assert plain(read_metadata(cut)) == plain(read_metadata(gguf_file))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GGU",
        b"GGML" + b"\x00" * 60,
        b"not a gguf file at all, just some text that is long enough",
        b"\x00" * 64,
        b"PK\x03\x04" + b"\x00" * 60,
    ],
)
def test_non_gguf_raises(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    with pytest.raises(GGUFError) as info:
        read_metadata(path)
    assert isinstance(info.value, OllamaFSError)


def test_version_1_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v1.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 1, 0, 0))
    with pytest.raises(GGUFError, match="version 1"):
        read_metadata(path)


def test_implausible_key_count_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40))
    with pytest.raises(GGUFError):
        read_metadata(path)


def _kv_file(tmp_path: Path, body: bytes, count: int = 1) -> Path:
    path = tmp_path / "kv.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, count) + body)
    return path


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


def test_hand_written_minimal_file(tmp_path: Path) -> None:
    body = _key("general.architecture") + struct.pack("<I", GGUFValueType.STRING) + _key("llama")
    assert read_metadata(_kv_file(tmp_path, body)) == {"GGUF.version": 3, "general.architecture": "llama"}


@pytest.mark.parametrize(
    "body",
    [
        _key("k") + struct.pack("<I", 99),  # unknown value type
        _key("k") + struct.pack("<IIQ", GGUFValueType.ARRAY, 99, 1),  # unknown array item type
        _key("k") + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.UINT32, 2**40),  # array past the end
        _key("k") + struct.pack("<IQ", GGUFValueType.STRING, 2**62),  # string past the end
        struct.pack("<Q", 2**63) + b"k",  # key past the end
        _key("k") + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING, 1) + struct.pack("<Q", 10**9),
    ],
)
def test_corrupt_headers_raise(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(GGUFError):
        read_metadata(_kv_file(tmp_path, body))


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "absent.gguf")
