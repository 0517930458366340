"""A tiny but genuinely loadable llama-architecture GGUF model, written with the gguf package only.

``write_tiny_llama`` produces a ~170 KB file that ``llama_cpp.Llama`` loads and generates from on the CPU
in milliseconds.  The weights are deterministic random numbers (numpy, seeded), so the text it writes is
nonsense, but it is the same nonsense every time.

Design notes (what llama.cpp needs that is not obvious):

* GGUF stores tensor dimensions in ggml order, the reverse of numpy's.  llama.cpp checks e.g.
  ``token_embd`` as ``{n_embd, n_vocab}``, so the numpy array is ``(n_vocab, n_embd)``; a linear layer
  mapping ``in -> out`` is ``{in, out}`` in ggml and ``(out, in)`` in numpy.
* The SPM ("llama") tokenizer needs the 256 byte tokens ``<0x00>``..``<0xFF>`` with token type BYTE:
  llama.cpp looks up the newline token through them at load time and uses them as byte fallback, so any
  text tokenizes.  ``▁`` (U+2581) marks a leading space in word pieces.
* The output rows of the special tokens, of control bytes and of bytes >= 0x80 are zero, so their logit
  is exactly 0 while the best of the other few hundred random logits is positive: greedy decoding never
  stops early on ``</s>`` and emits only printable ASCII and word pieces (valid UTF-8, so streaming and
  non-streaming output agree byte for byte).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, PoolingType, TokenType

ARCH = "llama"
N_CTX = 2048  # llama.cpp pads a requested n_ctx of 128 up to 256 and warns if that exceeds this
N_EMBD = 32
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 64
N_LAYER = 2
HEAD_DIM = N_EMBD // N_HEAD

UNK, BOS, EOS = 0, 1, 2
SPECIAL = ["<unk>", "<s>", "</s>"]

DEFAULT_WORDS: list[str] = [
    "▁", "▁the", "▁sky", "▁is", "▁blue", "▁why", "▁Why", "▁a", "▁and", "▁of", "▁to", "▁in", "▁it",
    "▁because", "▁light", "▁sun", "▁air", "▁scatter", "ing", "s", "ed", "▁red", "▁green", "▁hello",
    "▁world", "?", ".", ",", "!", "▁I", "▁you", "▁model", "▁tiny", "▁llama",
]


def _byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


def tiny_vocab(words: list[str] | None = None) -> tuple[list[str], list[float], list[int]]:
    """Token strings, scores and types: 3 specials, 256 byte tokens, then the word pieces and their prefixes."""
    words = DEFAULT_WORDS if words is None else words
    tokens = list(SPECIAL)
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(_byte_token(b))
        types.append(int(TokenType.BYTE))
        scores.append(0.0)
    # llama.cpp's SPM tokenizer starts from single characters and merges adjacent pairs whose concatenation
    # is a token, so a piece is only reachable if its prefixes are tokens too: add them.
    pieces: list[str] = []
    for word in words:
        if not word:
            raise ValueError("empty token in vocabulary")
        pieces.extend(word[:n] for n in range(1, len(word) + 1))
    seen = set(tokens)
    for i, piece in enumerate(dict.fromkeys(pieces)):
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        types.append(int(TokenType.NORMAL))
        # SPM merges the best-scoring pair first: longer pieces win, earlier ones break ties.
        scores.append(float(len(piece)) - i * 1e-4)
    return tokens, scores, types


def _emittable(tokens: list[str], types: list[int]) -> np.ndarray:
    """Boolean mask of tokens greedy decoding may emit: word pieces and printable ASCII bytes."""
    ok = np.zeros(len(tokens), dtype=bool)
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ == TokenType.NORMAL:
            ok[i] = True
        elif typ == TokenType.BYTE:
            ok[i] = 0x20 <= int(tok[3:5], 16) < 0x7F
    return ok


def write_tiny_llama(path: Path, *, seed: int = 0, vocab: list[str] | None = None,
                     chat_template: str | None = None, pooling: bool = False) -> Path:
    """Write a tiny llama-architecture GGUF model that llama.cpp loads and generates from.

    ``vocab`` replaces the default word pieces (the specials and 256 byte tokens are always present);
    ``chat_template`` is stored as ``tokenizer.chat_template``; ``pooling=True`` adds
    ``llama.pooling_type`` (mean), making it an embedding-style model.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types = tiny_vocab(vocab)
    n_vocab = len(tokens)

    w = GGUFWriter(str(path), ARCH)
    w.add_name("tiny-llama-test")
    w.add_file_type(LlamaFileType.ALL_F32)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    if pooling:
        w.add_pooling_type(PoolingType.MEAN)

    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(UNK)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def rand(*shape: int, scale: float | None = None) -> np.ndarray:
        s = (1.0 / np.sqrt(shape[-1])) if scale is None else scale
        return (rng.standard_normal(shape) * s).astype(np.float32)

    ones = np.ones(N_EMBD, dtype=np.float32)
    # numpy shapes are the reverse of the ggml shapes llama.cpp checks ({in, out} -> (out, in)).
    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD, scale=1.0))
    for i in range(N_LAYER):
        p = f"blk.{i}"
        w.add_tensor(f"{p}.attn_norm.weight", ones)
        w.add_tensor(f"{p}.attn_q.weight", rand(N_HEAD * HEAD_DIM, N_EMBD))
        w.add_tensor(f"{p}.attn_k.weight", rand(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(f"{p}.attn_v.weight", rand(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(f"{p}.attn_output.weight", rand(N_EMBD, N_HEAD * HEAD_DIM))
        w.add_tensor(f"{p}.ffn_norm.weight", ones)
        w.add_tensor(f"{p}.ffn_gate.weight", rand(N_FF, N_EMBD))
        w.add_tensor(f"{p}.ffn_up.weight", rand(N_FF, N_EMBD))
        w.add_tensor(f"{p}.ffn_down.weight", rand(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", ones)
    output = rand(n_vocab, N_EMBD, scale=1.0)
    output[~_emittable(tokens, types)] = 0.0
    w.add_tensor("output.weight", output)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
