"""Options mapping, request parsing and session ids (docs/SEMANTICS.md §generate), no model needed."""

from __future__ import annotations

import errno
import json
import os

import pytest

from ollamafs.inference.engine import Stats
from ollamafs.inference.options import DEFAULTS, OptionError, merge, to_llama
from ollamafs.inference.request import RequestError, chunk_line, final_line, parse_keep_alive, parse_request
from ollamafs.inference.sessions import session_of


def test_merge_layers_and_coerces():
    opts = merge({"temperature": 1, "stop": "<eot>"}, {"temperature": 0.2, "num_ctx": 1024.0})
    assert opts["temperature"] == 0.2 and isinstance(opts["temperature"], float)
    assert opts["num_ctx"] == 1024 and isinstance(opts["num_ctx"], int)
    assert opts["stop"] == ["<eot>"]
    assert opts["top_k"] == DEFAULTS["top_k"]


@pytest.mark.parametrize("bad", [{"bogus": 1}, {"top_k": 1.5}, {"temperature": "hot"}, {"use_mmap": 1}, {"stop": [1]}])
def test_bad_options_are_einval(bad):
    with pytest.raises(OptionError) as info:
        merge(bad)
    assert info.value.errno == errno.EINVAL


def test_to_llama_maps_every_sampling_option():
    opts = merge({"temperature": 0.1, "top_k": 7, "top_p": 0.5, "min_p": 0.05, "typical_p": 0.9, "repeat_penalty": 1.3,
                  "presence_penalty": 0.4, "frequency_penalty": 0.6, "seed": 3, "stop": ["a", "b"], "num_predict": 9,
                  "mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2, "num_ctx": 512, "num_batch": 64,
                  "repeat_last_n": 32, "num_thread": 2, "num_keep": 8})
    mapped = to_llama(opts, gpu_offload=False)
    assert mapped.sample == {
        "temperature": 0.1, "top_k": 7, "top_p": 0.5, "min_p": 0.05, "typical_p": 0.9, "repeat_penalty": 1.3,
        "presence_penalty": 0.4, "frequency_penalty": 0.6, "mirostat_mode": 2, "mirostat_tau": 4.0,
        "mirostat_eta": 0.2, "seed": 3, "max_tokens": 9, "stop": ["a", "b"],
    }
    assert mapped.load == {"n_ctx": 512, "n_batch": 64, "last_n_tokens_size": 32, "n_gpu_layers": 0, "n_threads": 2}
    assert mapped.ignored == ("num_keep",)


def test_gpu_offload_and_defaults():
    mapped = to_llama(merge(), gpu_offload=True)
    assert mapped.load["n_gpu_layers"] == -1
    assert isinstance(mapped.sample["seed"], int) and mapped.sample["max_tokens"] is None
    seeds = {to_llama(merge(), gpu_offload=False).sample["seed"] for _ in range(5)}
    assert len(seeds) > 1  # seed -1: a fresh random seed each request, as Ollama
    assert to_llama(merge({"num_gpu": 3}), gpu_offload=True).load["n_gpu_layers"] == 3


def test_plain_and_json_requests():
    assert parse_request(b"hello\n").prompt == "hello"
    assert parse_request(b"two\nlines\n\n").prompt == "two\nlines\n"
    req = parse_request(json.dumps({"prompt": "p", "system": "s", "raw": True, "stream": False, "format": "json",
                                    "options": {"seed": 1}, "keep_alive": "1m30s"}).encode())
    assert (req.prompt, req.system, req.raw, req.stream, req.format, req.options, req.keep_alive, req.json) == (
        "p", "s", True, False, "json", {"seed": 1}, 90.0, True)


@pytest.mark.parametrize("bad", [b'{"prompt": ', b'{"images": []}', b'{"raw": "yes"}', b'{"format": "xml"}',
                                 b'{"options": []}', b'{"keep_alive": "soon"}'])
def test_bad_requests(bad):
    with pytest.raises(RequestError):
        parse_request(bad)


@pytest.mark.parametrize("value,seconds", [(0, 0.0), (-1, -1.0), ("5m", 300.0), ("-1", -1.0), ("250ms", 0.25),
                                           ("1h", 3600.0)])
def test_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


def test_response_lines():
    chunk = json.loads(chunk_line("m", "hi"))
    assert chunk["response"] == "hi" and chunk["done"] is False and chunk["created_at"].endswith("Z")
    final = json.loads(final_line("m", Stats(eval_count=3, done_reason="length")))
    assert final["done"] is True and final["eval_count"] == 3 and final["done_reason"] == "length"


def test_session_of_this_process():
    assert session_of(os.getpid()) == os.getsid(0)
    assert session_of(2**22 + 12345) == 2**22 + 12345  # no such process: the pid itself
