"""Build the description of a stored model that the Modelfile shows (blocking reads)."""

from __future__ import annotations

import json

from ..errors import ManifestError
from ..modelfile import DEFAULT_TEMPLATE, ModelDescription
from . import manifest as mf
from .store import ModelRecord, Store


def _text(store: Store, layer: mf.Layer) -> str:
    return store.read_small_blob(layer.digest).decode("utf-8", errors="replace")


def describe(store: Store, record: ModelRecord) -> ModelDescription:
    """Read the small layers of a model (template, system, params...) as Ollama's GetModel does.

    Raises MissingBlob when a text layer is absent, ManifestError when params or messages are
    not the JSON Ollama writes.
    """
    m = record.manifest
    model_path = ""
    adapters: list[str] = []
    projectors: list[str] = []
    template = DEFAULT_TEMPLATE
    system = ""
    options: dict = {}
    licenses: list[str] = []
    messages: list[tuple[str, str]] = []
    for layer in m.layers:
        kind = layer.kind
        path = str(store.blob_path(layer.digest))
        if kind == mf.MODEL:
            model_path = path  # the last model layer wins, as in Ollama
        elif kind == mf.ADAPTER:
            adapters.append(path)
        elif kind == mf.PROJECTOR:
            projectors.append(path)
        elif kind == mf.TEMPLATE:
            template = _text(store, layer)
        elif kind == mf.SYSTEM:
            system = _text(store, layer)
        elif kind == mf.LICENSE:
            licenses.append(_text(store, layer))
        elif kind == mf.PARAMS:
            options = _json(store, layer, dict)
        elif kind == mf.MESSAGES:
            for item in _json(store, layer, list):
                if not isinstance(item, dict):
                    raise ManifestError(f"messages layer {layer.digest} holds a non-object")
                messages.append((str(item.get("role", "")), str(item.get("content", ""))))
    return ModelDescription(
        short_name=record.name.short,
        model_path=model_path,
        adapter_paths=tuple(adapters),
        projector_paths=tuple(projectors),
        template=template,
        system=system,
        options=options,
        licenses=tuple(licenses),
        messages=tuple(messages),
    )


def _json(store: Store, layer: mf.Layer, want: type):
    try:
        value = json.loads(store.read_small_blob(layer.digest))
    except ValueError as exc:
        raise ManifestError(f"{layer.kind} layer {layer.digest} is not JSON: {exc}") from None
    if not isinstance(value, want):
        raise ManifestError(f"{layer.kind} layer {layer.digest} is not a JSON {want.__name__}")
    return value
