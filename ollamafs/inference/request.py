"""What is written into ``generate``: a plain-text prompt or an ``/api/generate`` JSON request,
and the answer's shape (plain text, or Ollama's NDJSON response objects)."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field

from ..errors import OllamaFSError
from .engine import DEFAULT_KEEP_ALIVE, Stats
from .options import OptionError

# /api/generate fields that fit a file (images and context do not).
FIELDS = {"model", "prompt", "system", "template", "raw", "suffix", "format", "options", "keep_alive", "stream", "think"}


class RequestError(OptionError):
    """A request that is not valid JSON for /api/generate, or has a wrong field (EINVAL)."""


@dataclass
class GenerateRequest:
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    suffix: str | None = None
    format: str | None = None
    options: dict = field(default_factory=dict)
    keep_alive: float = DEFAULT_KEEP_ALIVE
    stream: bool = True
    json: bool = False  # written as JSON: answer in NDJSON


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float:
    """Ollama's keep_alive: a number of seconds, or a Go duration string ("5m", "1h30m", "-1")."""
    if isinstance(value, bool):
        raise RequestError(f"invalid keep_alive {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        pos, total = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos == len(text) and text:
            return total
    raise RequestError(f"invalid keep_alive {value!r}: a number of seconds or a duration like 5m")


def parse_request(data: bytes) -> GenerateRequest:
    """Plain text is a prompt (one trailing newline dropped); a JSON object is a request."""
    text = data.decode("utf-8", errors="replace")
    stripped = text.strip()
    if not stripped.startswith("{"):
        return GenerateRequest(prompt=text[:-1] if text.endswith("\n") else text)
    try:
        doc = json.loads(stripped)
    except ValueError as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("request must be a JSON object")
    unknown = set(doc) - FIELDS
    if unknown:
        raise RequestError(f"unknown request field(s): {', '.join(sorted(unknown))}")
    req = GenerateRequest(json=True)
    for name, kind in (("prompt", str), ("system", str), ("template", str), ("suffix", str)):
        if name in doc and doc[name] is not None:
            if not isinstance(doc[name], kind):
                raise RequestError(f"field {name} must be a string")
            setattr(req, name, doc[name])
    for name in ("raw", "stream"):
        if name in doc:
            if not isinstance(doc[name], bool):
                raise RequestError(f"field {name} must be true or false")
            setattr(req, name, doc[name])
    fmt = doc.get("format")
    if fmt not in (None, "", "json"):
        raise RequestError(f"format {fmt!r} is not supported (only \"json\")")
    req.format = fmt or None
    options = doc.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise RequestError("field options must be an object")
    req.options = options
    if "keep_alive" in doc and doc["keep_alive"] is not None:
        req.keep_alive = parse_keep_alive(doc["keep_alive"])
    return req


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def chunk_line(model: str, piece: str) -> bytes:
    return (json.dumps({"model": model, "created_at": _now(), "response": piece, "done": False},
                       ensure_ascii=False) + "\n").encode()


def final_line(model: str, stats: Stats, response: str = "") -> bytes:
    doc = {
        "model": model,
        "created_at": _now(),
        "response": response,
        "done": True,
        "done_reason": stats.done_reason,
        "total_duration": stats.total_duration,
        "load_duration": stats.load_duration,
        "prompt_eval_count": stats.prompt_eval_count,
        "prompt_eval_duration": stats.prompt_eval_duration,
        "eval_count": stats.eval_count,
        "eval_duration": stats.eval_duration,
    }
    return (json.dumps(doc, ensure_ascii=False) + "\n").encode()


def error_line(message: str) -> bytes:
    return (json.dumps({"error": message}) + "\n").encode()


__all__ = ["GenerateRequest", "OllamaFSError", "RequestError", "chunk_line", "final_line", "parse_request"]
