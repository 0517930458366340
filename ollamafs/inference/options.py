"""Ollama's options (``api.Options``) mapped faithfully onto llama-cpp-python.

Options come from three places, later ones winning: Ollama's defaults, the model's params layer,
and the request's ``options``.  Each known option either maps onto a llama-cpp-python parameter
(a load parameter of ``Llama(...)`` or a sampling parameter of ``create_completion``) or is one
Ollama knows but llama-cpp-python cannot honour: those are accepted (a Modelfile may set them)
and named once in the log.  An option Ollama does not know is an error, never dropped.
"""

from __future__ import annotations

import errno
import logging
import random
from dataclasses import dataclass

from ..errors import OllamaFSError

log = logging.getLogger(__name__)


class OptionError(OllamaFSError):
    """An unknown option or a value of the wrong type (EINVAL)."""

    errno = errno.EINVAL
    level = logging.INFO
    exit_code = 2


# Ollama's api.DefaultOptions (the values a model without params runs with).
DEFAULTS: dict[str, object] = {
    "num_keep": 4,
    "temperature": 0.8,
    "top_k": 40,
    "top_p": 0.9,
    "typical_p": 1.0,
    "repeat_last_n": 64,
    "repeat_penalty": 1.1,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": -1,
    "num_predict": -1,
    "num_ctx": 4096,
    "num_batch": 512,
    "num_gpu": -1,
    "num_thread": 0,
    "min_p": 0.0,
}

FLOAT, INT, BOOL, STRLIST = "float", "int", "bool", "list[str]"

# name -> (type, where it goes: "load" | "sample" | None for accepted without effect)
KNOWN: dict[str, tuple[str, str | None]] = {
    "num_ctx": (INT, "load"),
    "num_batch": (INT, "load"),
    "num_gpu": (INT, "load"),
    "main_gpu": (INT, "load"),
    "use_mmap": (BOOL, "load"),
    "use_mlock": (BOOL, "load"),
    "num_thread": (INT, "load"),
    "repeat_last_n": (INT, "load"),
    "numa": (BOOL, "load"),
    "temperature": (FLOAT, "sample"),
    "top_k": (INT, "sample"),
    "top_p": (FLOAT, "sample"),
    "min_p": (FLOAT, "sample"),
    "typical_p": (FLOAT, "sample"),
    "repeat_penalty": (FLOAT, "sample"),
    "presence_penalty": (FLOAT, "sample"),
    "frequency_penalty": (FLOAT, "sample"),
    "seed": (INT, "sample"),
    "stop": (STRLIST, "sample"),
    "num_predict": (INT, "sample"),
    "mirostat": (INT, "sample"),
    "mirostat_tau": (FLOAT, "sample"),
    "mirostat_eta": (FLOAT, "sample"),
    "tfs_z": (FLOAT, "sample"),
    # Known to Ollama, without a llama-cpp-python equivalent (or deprecated there):
    "num_keep": (INT, None),
    "penalize_newline": (BOOL, None),
    "low_vram": (BOOL, None),
    "f16_kv": (BOOL, None),
    "vocab_only": (BOOL, None),
    "logits_all": (BOOL, None),
}

_SAMPLE_NAMES = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat_mode",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "tfs_z": "tfs_z",
}


def _coerce(name: str, kind: str, value: object) -> object:
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {name} must be a number, not {value!r}")
        return float(value)
    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise OptionError(f"option {name} must be an integer, not {value!r}")
        return int(value)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise OptionError(f"option {name} must be true or false, not {value!r}")
        return value
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OptionError(f"option {name} must be a list of strings, not {value!r}")
    return list(value)


def merge(*layers: dict | None) -> dict[str, object]:
    """Defaults, then each layer (model params, request options) checked and coerced."""
    out = dict(DEFAULTS)
    for layer in layers:
        for name, value in (layer or {}).items():
            if name not in KNOWN:
                raise OptionError(f"unknown option {name!r}")
            out[name] = _coerce(name, KNOWN[name][0], value)
    return out


@dataclass(frozen=True)
class Mapped:
    load: dict  # keyword arguments of llama_cpp.Llama(...)
    sample: dict  # keyword arguments of Llama.create_completion(...)
    ignored: tuple[str, ...]  # known options llama-cpp-python cannot honour


def to_llama(options: dict[str, object], *, gpu_offload: bool) -> Mapped:
    """Split merged options into llama-cpp-python's load and sampling arguments."""
    load: dict = {
        "n_ctx": options["num_ctx"],
        "n_batch": options["num_batch"],
        "last_n_tokens_size": options["repeat_last_n"],
    }
    num_gpu = options["num_gpu"]
    load["n_gpu_layers"] = (-1 if gpu_offload else 0) if num_gpu == -1 else num_gpu
    if options.get("num_thread"):
        load["n_threads"] = options["num_thread"]
    for name, arg in (("main_gpu", "main_gpu"), ("use_mmap", "use_mmap"), ("use_mlock", "use_mlock"), ("numa", "numa")):
        if name in options:
            load[arg] = options[name]
    sample: dict = {arg: options[name] for name, arg in _SAMPLE_NAMES.items() if name in options}
    seed = options["seed"]
    # Ollama: -1 is a fresh random seed per request (llama-cpp-python's None reuses the
    # context's fixed seed, so every answer would come out the same).
    sample["seed"] = random.getrandbits(31) if seed == -1 else seed
    predict = options["num_predict"]
    # Ollama: -1 generates until the context is full or a stop; -2 fills the context.
    sample["max_tokens"] = None if predict in (-1, -2) else predict
    sample["stop"] = list(options.get("stop", []))
    ignored = tuple(sorted(n for n in options if KNOWN[n][1] is None and options[n] != DEFAULTS.get(n)))
    return Mapped(load, sample, ignored)
