"""``ollama create`` from a Modelfile: parse it, build the layers, write the manifest.

FROM names a model of the store (its layers are the base) or a GGUF file (ingested; a path
into this store's ``blobs/`` is used by its digest without copying).  TEMPLATE, SYSTEM,
LICENSE and MESSAGE replace the base's layers of that kind; PARAMETERs are merged over the
base's params.  Nothing is written unless the whole Modelfile is valid and every file it
names exists, so a bad Modelfile leaves the model as it was.  Blocking: call from a thread.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import InvalidName
from ..modelfile_parse import ModelfileError, params_json, parse, split_message
from ..names import Digest, ModelName
from . import manifest as mf
from .ingest import build_manifest, ingest_bytes, ingest_file, write_manifest
from .ops import store_lock
from .store import ModelRecord, Store

log = logging.getLogger(__name__)

_TEXT_KINDS = {"template": mf.TEMPLATE, "system": mf.SYSTEM}


def _resolve_path(arg: str, cwd: Path | None) -> Path:
    path = Path(arg).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    return path


def _file_layer(store: Store, path: Path, kind: str, line: int) -> mf.Layer:
    """A layer for a file: by its digest name when it is one of this store's blobs."""
    if not path.is_file():
        raise ModelfileError(f"{path} is not a file", line=line)
    if path.parent.resolve() == store.blobs_dir.resolve():
        try:
            digest = Digest.from_filename(path.name)
            return mf.Layer(mf.OLLAMA_PREFIX + kind, digest, path.stat().st_size)
        except Exception:
            pass
    digest, size = ingest_file(store, path)
    return mf.Layer(mf.OLLAMA_PREFIX + kind, digest, size)


def create_from_modelfile(store: Store, name: ModelName, text: str, *, cwd: Path | None = None) -> ModelRecord:
    """Create or replace ``name`` from Modelfile ``text``; ModelfileError (EINVAL) if invalid."""
    commands = parse(text)
    froms = [c for c in commands if c.name == "model"]
    base: list[mf.Layer] = []
    base_params: dict = {}
    model_layers: list[mf.Layer] = []
    for index, command in enumerate(froms):
        arg = command.args.strip()
        try:
            base_name = ModelName.parse(arg)
        except InvalidName:
            base_name = None
        record = store.list(max_age=0).get(base_name) if base_name is not None else None
        if record is not None and index == 0:
            base = list(record.manifest.layers)
            for layer in base:
                if layer.kind == mf.PARAMS:
                    base_params = json.loads(store.read_small_blob(layer.digest))
            continue
        path = _resolve_path(arg, cwd)
        if not path.exists():
            raise ModelfileError(f"FROM {arg}: no model of that name and no such file", line=command.line)
        kind = mf.MODEL if index == 0 else mf.PROJECTOR
        model_layers.append(_file_layer(store, path, kind, command.line))

    by_kind: dict[str, list[mf.Layer]] = {}
    for layer in base:
        by_kind.setdefault(layer.kind or layer.media_type, []).append(layer)
    if model_layers:
        by_kind[mf.MODEL] = [model_layers[0]]
        if len(model_layers) > 1:
            by_kind[mf.PROJECTOR] = model_layers[1:]
    adapters = [c for c in commands if c.name == "adapter"]
    if adapters:
        by_kind[mf.ADAPTER] = [_file_layer(store, _resolve_path(c.args, cwd), mf.ADAPTER, c.line) for c in adapters]
    for cname, kind in _TEXT_KINDS.items():
        given = [c for c in commands if c.name == cname]
        if given:
            digest, size = ingest_bytes(store, given[-1].args.encode())
            by_kind[kind] = [mf.Layer(mf.OLLAMA_PREFIX + kind, digest, size)]
    licenses = [c for c in commands if c.name == "license"]
    if licenses:
        by_kind[mf.LICENSE] = []
        for c in licenses:
            digest, size = ingest_bytes(store, c.args.encode())
            by_kind[mf.LICENSE].append(mf.Layer(mf.OLLAMA_PREFIX + mf.LICENSE, digest, size))
    messages = [c for c in commands if c.name == "message"]
    if messages:
        doc = [dict(zip(("role", "content"), split_message(c))) for c in messages]
        digest, size = ingest_bytes(store, json.dumps(doc, separators=(",", ":")).encode())
        by_kind[mf.MESSAGES] = [mf.Layer(mf.OLLAMA_PREFIX + mf.MESSAGES, digest, size)]
    new_params = params_json(commands)
    if new_params:
        merged = {**base_params, **new_params}
        digest, size = ingest_bytes(store, json.dumps(merged, separators=(",", ":")).encode())
        by_kind[mf.PARAMS] = [mf.Layer(mf.OLLAMA_PREFIX + mf.PARAMS, digest, size)]
    if not by_kind.get(mf.MODEL):
        raise ModelfileError("FROM names no model layer", line=froms[0].line if froms else 1)
    layers = [layer for group in by_kind.values() for layer in group]
    with store_lock(store):
        write_model(store, name, layers)
    log.info("created %s from a Modelfile (%d layers)", name, len(layers))
    return store.get(name)


_KIND_ORDER = [mf.MODEL, mf.PROJECTOR, mf.ADAPTER, mf.TEMPLATE, mf.SYSTEM, mf.PARAMS, mf.MESSAGES, mf.LICENSE]


def write_model(store: Store, name: ModelName, layers: list[mf.Layer]) -> Digest:
    """Write the manifest of ``name`` for ``layers`` (blobs already in the store), in Ollama's
    kind order, taking the template from the model GGUF's chat template when none is given;
    return the config blob's digest.  The caller holds the store lock."""
    def rank(layer: mf.Layer) -> int:
        return _KIND_ORDER.index(layer.kind) if layer.kind in _KIND_ORDER else len(_KIND_ORDER)

    layers = sorted(layers, key=rank)  # stable: licenses and the like keep their order
    if not any(layer.kind == mf.TEMPLATE for layer in layers):
        model = next((layer for layer in layers if layer.kind == mf.MODEL), None)
        derived = template_from_gguf(store, model) if model is not None else None
        if derived is not None:
            layers = sorted([*layers, derived], key=rank)
    config_bytes, manifest_bytes = build_manifest(layers, {"model_format": "gguf", "os": "linux", "architecture": "amd64"})
    config, _ = ingest_bytes(store, config_bytes)
    write_manifest(store, name, manifest_bytes)
    return config


def template_from_gguf(store: Store, model: mf.Layer) -> mf.Layer | None:
    """A template layer from the model GGUF's chat template, as Ollama creates one (None when the
    GGUF has none that we recognise)."""
    from ..chat_templates import for_chat_template
    from ..gguf_meta import GGUFError, read_metadata

    try:
        meta = read_metadata(store.blob_path(model.digest))
    except (GGUFError, OSError):
        return None
    found = for_chat_template(meta.get("tokenizer.chat_template") if isinstance(
        meta.get("tokenizer.chat_template"), str) else None)
    if found is None:
        return None
    log.info("template of %s taken from its GGUF chat template (%s)", model.digest, found[0])
    digest, size = ingest_bytes(store, found[1].encode())
    return mf.Layer(mf.OLLAMA_PREFIX + mf.TEMPLATE, digest, size)


def caller_cwd(pid: int) -> Path | None:
    """The working directory of a process (relative FROM and ADAPTER paths resolve there)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
