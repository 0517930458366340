"""The tiny llama GGUF written by tests.tiny_llama is a real model: llama.cpp loads it and generates."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from tests.tiny_llama import N_EMBD, tiny_vocab, write_tiny_llama

llama_cpp = pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.llama

PROMPT = "Why is the sky blue?"
GREEDY = {"temperature": 0.0, "top_k": 1, "seed": 42, "max_tokens": 16}


def load(path: Path, **kwargs) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, **kwargs)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def llm(model_path: Path) -> Iterator[llama_cpp.Llama]:
    model = load(model_path)
    yield model
    model.close()


def field_value(reader: GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_write_is_fast_and_small(tmp_path: Path) -> None:
    start = time.perf_counter()
    path = write_tiny_llama(tmp_path / "m.gguf")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert 0 < path.stat().st_size < 2 * 1024 * 1024


def test_write_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_llama(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_llama(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_llama(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b
    assert a != c


def test_reader_reads_architecture_and_vocabulary(model_path: Path) -> None:
    tokens, _, _ = tiny_vocab()
    reader = GGUFReader(model_path)
    assert field_value(reader, "general.architecture") == "llama"
    assert field_value(reader, "tokenizer.ggml.model") == "llama"
    assert field_value(reader, "tokenizer.ggml.tokens") == tokens
    assert field_value(reader, "llama.vocab_size") == len(tokens)
    assert reader.get_field("llama.pooling_type") is None
    assert reader.get_field("tokenizer.chat_template") is None
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.1.ffn_down.weight"} <= names
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert list(embd.shape) == [N_EMBD, len(tokens)]  # ggml order: {n_embd, n_vocab}


def test_loads_with_metadata(llm: llama_cpp.Llama) -> None:
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.n_vocab() == len(tiny_vocab()[0])
    assert llm.token_bos() == 1
    assert llm.token_eos() == 2


def test_tokenize_and_detokenize_round_trip(llm: llama_cpp.Llama) -> None:
    tokens = llm.tokenize(PROMPT.encode())
    assert tokens[0] == llm.token_bos()
    # the word pieces are used, not just byte fallback
    assert len(tokens) < len(PROMPT) // 2
    assert llm.detokenize(tokens) == PROMPT.encode()
    for text in ["hello world", "Grüße, 世界! 🦙\n\ttabs", "x" * 50]:
        assert llm.detokenize(llm.tokenize(text.encode(), add_bos=False)).lstrip(b" ") == text.encode()


def test_greedy_generation_is_deterministic(model_path: Path, llm: llama_cpp.Llama) -> None:
    first = llm.create_completion(PROMPT, **GREEDY)
    text = first["choices"][0]["text"]
    assert isinstance(text, str) and text
    assert first["choices"][0]["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == 16
    other = load(model_path)
    try:
        again = other.create_completion(PROMPT, **GREEDY)["choices"][0]["text"]
    finally:
        other.close()
    assert again.encode() == text.encode()


def test_streaming_matches_non_streaming(llm: llama_cpp.Llama) -> None:
    whole = llm.create_completion(PROMPT, **GREEDY)["choices"][0]["text"]
    chunks = [chunk["choices"][0]["text"] for chunk in llm.create_completion(PROMPT, stream=True, **GREEDY)]
    assert len(chunks) > 1
    assert "".join(chunks) == whole


def test_seed_changes_weights_and_output(tmp_path: Path, llm: llama_cpp.Llama) -> None:
    other = load(write_tiny_llama(tmp_path / "s1.gguf", seed=1))
    try:
        text = other.create_completion(PROMPT, **GREEDY)["choices"][0]["text"]
    finally:
        other.close()
    assert text != llm.create_completion(PROMPT, **GREEDY)["choices"][0]["text"]


def test_custom_vocab(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "v.gguf", vocab=["▁ollama", "▁fuse"])
    reader = GGUFReader(path)
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    assert "▁ollama" in tokens and "▁fuse" in tokens and "▁sky" not in tokens
    model = load(path)
    try:
        ids = model.tokenize(b"ollama fuse", add_bos=False)
        assert [model.detokenize([i]) for i in ids] == [b" ollama", b" fuse"]
    finally:
        model.close()


def test_chat_template(tmp_path: Path) -> None:
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
    path = write_tiny_llama(tmp_path / "chat.gguf", chat_template=template)
    assert field_value(GGUFReader(path), "tokenizer.chat_template") == template
    model = load(path)
    try:
        assert model.metadata["tokenizer.chat_template"] == template
        reply = model.create_chat_completion([{"role": "user", "content": PROMPT}], **GREEDY)
        assert reply["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(reply["choices"][0]["message"]["content"], str)
    finally:
        model.close()


def test_pooling_model_embeds(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "emb.gguf", pooling=True)
    assert field_value(GGUFReader(path), "llama.pooling_type") == 1  # mean
    model = load(path, embedding=True)
    try:
        vec = np.asarray(model.embed(PROMPT))
        assert vec.shape == (N_EMBD,)
        assert np.all(np.isfinite(vec)) and np.any(vec != 0)
    finally:
        model.close()
