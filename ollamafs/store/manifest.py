"""Ollama's manifest (Docker distribution v2 schema 2) as plain values.

Parsing is strict about what makes a path (digests) and tolerant about what does not (unknown
media types and extra keys are kept or ignored, as Ollama does).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..errors import InvalidDigest, ManifestError
from ..names import Digest

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
OLLAMA_PREFIX = "application/vnd.ollama.image."

# Layer kinds, the suffix after OLLAMA_PREFIX.
MODEL = "model"
ADAPTER = "adapter"
PROJECTOR = "projector"
TEMPLATE = "template"
PROMPT = "prompt"  # the old name of the template layer
SYSTEM = "system"
PARAMS = "params"
MESSAGES = "messages"
LICENSE = "license"
EMBED = "embed"  # deprecated, ignored


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str
    digest: Digest
    size: int
    from_: str | None = None

    @property
    def kind(self) -> str | None:
        """The Ollama layer kind (``model``, ``template``...), ``prompt`` read as ``template``."""
        if not self.media_type.startswith(OLLAMA_PREFIX):
            return None
        kind = self.media_type[len(OLLAMA_PREFIX):]
        return TEMPLATE if kind == PROMPT else kind

    def to_json(self) -> dict:
        out: dict = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.from_:
            out["from"] = self.from_
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]
    digest: Digest  # sha256 of the manifest file's bytes (what `ollama list` shows as ID)
    media_type: str = MANIFEST_MEDIA_TYPE
    schema_version: int = 2

    @property
    def total_size(self) -> int:
        """SIZE as `ollama list` shows it: config plus every layer."""
        return self.config.size + sum(layer.size for layer in self.layers)

    def layers_of(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == kind]

    def all_blobs(self) -> list[Layer]:
        return [self.config, *self.layers]

    def to_json_bytes(self) -> bytes:
        """Compact JSON in Ollama's field order (Go's json.Marshal of ManifestV2)."""
        doc = {
            "schemaVersion": self.schema_version,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return go_json(doc).encode()


_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: object) -> str:
    """Compact JSON as Go's encoding/json writes it (HTML-safe escapes of < > & U+2028 U+2029)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "".join(_GO_ESCAPES.get(ch, ch) for ch in text)


def _parse_layer(obj: object, where: str) -> Layer:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where} is not an object")
    media_type = obj.get("mediaType")
    digest = obj.get("digest")
    size = obj.get("size")
    if not isinstance(media_type, str):
        raise ManifestError(f"{where} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where} has an invalid size {size!r}")
    try:
        parsed = Digest.parse(digest)  # type: ignore[arg-type]
    except InvalidDigest as exc:
        raise ManifestError(f"{where}: {exc}") from None
    from_ = obj.get("from")
    return Layer(media_type, parsed, size, from_ if isinstance(from_, str) and from_ else None)


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes; ManifestError says why a manifest is unusable."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    if "config" not in doc:
        raise ManifestError("manifest has no config")
    config = _parse_layer(doc.get("config"), "config")
    raw_layers = doc.get("layers", [])
    if raw_layers is None:
        raw_layers = []
    if not isinstance(raw_layers, list):
        raise ManifestError("manifest layers is not a list")
    layers = tuple(_parse_layer(obj, f"layer {i}") for i, obj in enumerate(raw_layers))
    schema = doc.get("schemaVersion", 2)
    return Manifest(
        config=config,
        layers=layers,
        digest=Digest(hashlib.sha256(data).hexdigest()),
        media_type=doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else MANIFEST_MEDIA_TYPE,
        schema_version=schema if isinstance(schema, int) else 2,
    )
