"""Ollama templates for GGUF chat templates: when a model is created from a GGUF alone, the
TEMPLATE comes from its ``tokenizer.chat_template`` as Ollama does it, by recognising the chat
format and using Ollama's Go template for it.

The ``.gotmpl`` files are Ollama's (MIT), as given in the project's shared testdata.  Ollama
picks the named template whose Jinja source is closest to the GGUF's; we recognise each format
by the control tokens its Jinja template must contain (most specific first), which needs no
copy of the Jinja sources.
"""

from __future__ import annotations

from importlib.resources import files

# (name, markers that must all appear in the GGUF's Jinja chat template)
_FORMATS: list[tuple[str, tuple[str, ...]]] = [
    ("llama3-instruct", ("<|start_header_id|>", "<|eot_id|>")),
    ("gemma-instruct", ("<start_of_turn>", "<end_of_turn>")),
    ("phi-3", ("<|user|>", "<|end|>", "<|assistant|>")),
    ("openchat", ("GPT4 Correct",)),
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("llama2-chat", ("[INST]", "<<SYS>>")),
    ("mistral-instruct", ("[INST]", "[/INST]")),
    ("alpaca", ("### Instruction",)),
]


def named(name: str) -> str:
    """The Go template text of one of Ollama's named templates."""
    return files(__name__).joinpath(f"{name}.gotmpl").read_text(encoding="utf-8")


def for_chat_template(jinja: str | None) -> tuple[str, str] | None:
    """(name, Go template) for a GGUF's Jinja chat template, or None when none fits."""
    if not jinja:
        return None
    for name, markers in _FORMATS:
        if all(marker in jinja for marker in markers):
            return name, named(name)
    return None
