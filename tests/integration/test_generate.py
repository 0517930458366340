"""`generate` through a real mount with real llama-cpp-python on a tiny GGUF (§generate)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time

import pytest

from tests.tiny_llama import write_tiny_llama

pytestmark = [pytest.mark.fuse, pytest.mark.llama]

NAME = "registry.ollama.ai/library/tiny:latest"
DIR = "registry.ollama.ai/library/tiny:latest"
TEMPLATE = "{{ if .System }}{{ .System }} {{ end }}Q: {{ .Prompt }} A:"
PARAMS = {"temperature": 0, "top_k": 1, "seed": 42, "num_predict": 12, "num_ctx": 256}


@pytest.fixture
def tiny(store, tmp_path):
    gguf = write_tiny_llama(tmp_path / "tiny-llama.gguf")
    store.model(NAME, gguf, template=TEMPLATE, params=PARAMS)
    return gguf


def in_process(gguf, prompt: str, **overrides) -> str:
    """What llama-cpp-python produces in-process for the same rendered prompt and options."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=overrides.pop("n_ctx", 256), n_batch=512, last_n_tokens_size=64,
                n_gpu_layers=0, verbose=False)
    try:
        args = dict(temperature=0.0, top_k=1, top_p=0.9, min_p=0.0, typical_p=1.0, repeat_penalty=1.1,
                    presence_penalty=0.0, frequency_penalty=0.0, seed=42, max_tokens=12, stop=[])
        args.update(overrides)
        return llm.create_completion(prompt, **args)["choices"][0]["text"]
    finally:
        llm.close()


def exchange(path, prompt: bytes) -> bytes:
    """One handle, one exchange: write, then read to EOF."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.write(fd, prompt)
        out = b""
        while chunk := os.read(fd, 4096):
            out += chunk
        return out
    finally:
        os.close(fd)


def test_same_handle_plain_prompt_matches_in_process(tiny, mount):
    """§generate: the answer equals llama-cpp-python in-process on the rendered prompt."""
    m = mount()
    out = exchange(m.path / DIR / "generate", b"Why is the sky blue?\n").decode()
    expected = in_process(tiny, "Q: Why is the sky blue? A:")
    assert expected
    assert out == expected + ("" if expected.endswith("\n") else "\n")


def test_echo_then_cat_in_one_session(tiny, mount):
    """§generate: `echo … > generate; cat generate` pairs by the caller's session."""
    m = mount()
    g = m.path / DIR / "generate"
    out = subprocess.run(["bash", "-c", f"echo 'Why is the sky blue?' > '{g}' && cat '{g}'"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == in_process(tiny, "Q: Why is the sky blue? A:") + "\n"
    # another session does not see this session's answer
    subprocess.run(["bash", "-c", f"echo 'Why is the sky blue?' > '{g}'"], check=True, timeout=60)
    other = subprocess.run(["setsid", "cat", str(g)], capture_output=True, text=True, timeout=60)
    assert other.stdout == ""
    mine = subprocess.run(["cat", str(g)], capture_output=True, text=True, timeout=60)
    assert mine.stdout.strip()


def test_json_request_gives_ndjson(tiny, mount):
    """§generate: a JSON request answers in Ollama's /api/generate response shape."""
    m = mount()
    g = m.path / DIR / "generate"
    req = {"prompt": "Why is the sky blue?", "system": "Be brief.", "options": {"num_predict": 5}}
    lines = [json.loads(line) for line in exchange(g, json.dumps(req).encode()).decode().splitlines()]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    final = lines[-1]
    assert final["done_reason"] == "length"
    assert final["eval_count"] == 5
    assert final["prompt_eval_count"] > 5
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0
    assert final["model"] == NAME
    text = "".join(line["response"] for line in lines)
    assert text == in_process(tiny, "Be brief. Q: Why is the sky blue? A:", max_tokens=5)
    # stream false: one object; raw skips the template
    one = json.loads(exchange(g, json.dumps({"prompt": "Q: sky? A:", "raw": True, "stream": False}).encode()))
    assert one["done"] is True and one["response"] == in_process(tiny, "Q: sky? A:")


def test_bad_requests_fail_the_close_with_einval(tiny, mount):
    """§generate: unknown options and malformed JSON are EINVAL when the prompt is submitted."""
    m = mount()
    m.expect_warning(r"x")  # refusals log at INFO; nothing above is expected
    g = m.path / DIR / "generate"
    for bad in (b'{"prompt": "x", "options": {"bogus": 1}}', b'{"prompt": ', b'{"prompt": "x", "images": []}'):
        fd = os.open(g, os.O_WRONLY)
        os.write(fd, bad)
        with pytest.raises(OSError) as info:
            os.close(fd)
        assert info.value.errno == errno.EINVAL
    assert "unknown option 'bogus'" in m.log()


def test_embedding_model_refuses_with_eopnotsupp(store, tmp_path, mount):
    """§generate: a model without the completion capability refuses the write."""
    store.model("registry.ollama.ai/library/emb:latest", write_tiny_llama(tmp_path / "e.gguf", pooling=True))
    m = mount()
    with pytest.raises(OSError) as info:
        os.open(m.path / "registry.ollama.ai/library/emb:latest/generate", os.O_WRONLY)
    assert info.value.errno == errno.EOPNOTSUPP
    assert "embedding model" in m.log()


def test_early_close_cancels_and_ls_stays_responsive(tiny, mount):
    """§generate: a reader that closes early stops its generation; the filesystem keeps serving."""
    m = mount()
    g = m.path / DIR / "generate"
    fd = os.open(g, os.O_RDWR)
    os.write(fd, json.dumps({"prompt": "Why?", "options": {"num_predict": 100000, "num_ctx": 2048}}).encode())
    first = os.read(fd, 10)
    assert first
    t0 = time.perf_counter()
    assert "generate" in os.listdir(m.path / DIR)
    assert (m.path / DIR / "Modelfile").read_text().startswith("# Modelfile")
    assert time.perf_counter() - t0 < 2.0
    os.close(fd)
    deadline = time.monotonic() + 10
    while "abandoned by its reader" not in m.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "abandoned by its reader" in m.log()
    # the model is free again: the next exchange runs
    assert exchange(g, b"sky\n")


def test_generations_queue_in_order(tiny, mount):
    """§generate: one generation per model at a time; concurrent requests all complete."""
    m = mount()
    g = m.path / DIR / "generate"
    results: dict[int, bytes] = {}

    def worker(i: int) -> None:
        results[i] = exchange(g, f"question {i}\n".encode())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2]
    for i, out in results.items():
        assert out.decode() == in_process(tiny, f"Q: question {i} A:") + "\n"


def test_keep_alive_zero_unloads(tiny, mount):
    """§generate: keep_alive 0 frees the model right after the answer."""
    m = mount()
    g = m.path / DIR / "generate"
    exchange(g, json.dumps({"prompt": "sky", "keep_alive": 0}).encode())
    deadline = time.monotonic() + 5
    while "unloaded" not in m.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "unloaded" in m.log()
