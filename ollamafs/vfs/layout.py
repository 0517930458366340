"""Which files a model directory holds, and their names (docs/SEMANTICS.md, "Model directory")."""

from __future__ import annotations

from dataclasses import dataclass

from ..names import Digest
from ..store import manifest as mf

BLOB = "blob"  # content is a blob's bytes, immutable for a given digest
MODELFILE = "modelfile"  # rendered from the manifest and its small layers
MANIFEST = "manifest"  # the manifest file's bytes
STATUS = "status"  # the mount's running pulls (MOUNT/.pulls)
GENERATE = "generate"  # write a prompt, read the answer
DRAFT = "draft"  # a Modelfile being written into a model directory that has no manifest yet

MODELFILE_NAME = "Modelfile"
GENERATE_NAME = "generate"
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"

# layer kind -> (base name, extension)
_NAMES = {
    mf.MODEL: ("model", ".gguf"),
    mf.ADAPTER: ("adapter", ".gguf"),
    mf.PROJECTOR: ("projector", ".gguf"),
    mf.TEMPLATE: ("template", ""),
    mf.SYSTEM: ("system", ""),
    mf.PARAMS: ("params", ".json"),
    mf.MESSAGES: ("messages", ".json"),
    mf.LICENSE: ("license", ""),
}


@dataclass(frozen=True, slots=True)
class FileSpec:
    name: str
    kind: str
    digest: Digest  # the blob's digest, or the manifest's for MODELFILE/MANIFEST
    size: int  # the manifest's size for blobs; 0 for rendered files until rendered
    media_type: str = ""


STATUS_NAME = ".pulls"
STATUS_SPEC = FileSpec(STATUS_NAME, STATUS, Digest("0" * 64), 0)
DRAFT_SPEC = FileSpec(MODELFILE_NAME, DRAFT, Digest("0" * 64), 0)


def kind_of(name: str) -> str | None:
    """The layer kind a file name stands for (``license-1`` -> license), else None."""
    for kind, (base, ext) in _NAMES.items():
        if ext and not name.endswith(ext):
            continue
        stem = name[: len(name) - len(ext)] if ext else name
        if stem == base or (stem.startswith(base + "-") and stem[len(base) + 1 :].isdigit()):
            return kind
    return None


def model_files(manifest: mf.Manifest) -> list[FileSpec]:
    """The files of a model directory in manifest order.

    ``config.json``, ``manifest.json``, ``Modelfile`` and ``generate`` are always there.
    The first layer of a kind gets the plain name (``license``); further ones are numbered
    ``license-1``, ``license-2``... (before the extension: ``adapter-1.gguf``).  Layers of kinds
    Ollama does not use (``embed``, foreign media types) are not shown.
    """
    seen: dict[str, int] = {}
    files: list[FileSpec] = []
    for layer in manifest.layers:
        kind = layer.kind
        if kind not in _NAMES:
            continue
        base, ext = _NAMES[kind]
        n = seen.get(kind, 0)
        seen[kind] = n + 1
        name = f"{base}{ext}" if n == 0 else f"{base}-{n}{ext}"
        files.append(FileSpec(name, BLOB, layer.digest, layer.size, layer.media_type))
    files.append(FileSpec(CONFIG_NAME, BLOB, manifest.config.digest, manifest.config.size, manifest.config.media_type))
    files.append(FileSpec(MANIFEST_NAME, MANIFEST, manifest.digest, 0, manifest.media_type))
    files.append(FileSpec(MODELFILE_NAME, MODELFILE, manifest.digest, 0))
    files.append(FileSpec(GENERATE_NAME, GENERATE, manifest.digest, 0))
    return files
