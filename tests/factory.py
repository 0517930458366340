"""Test data written by the tests: tiny GGUF files (with the gguf package) and Ollama stores."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

MT = "application/vnd.ollama.image."
CONFIG_MT = "application/vnd.docker.container.image.v1+json"


def write_tiny_gguf(path: Path, *, arch: str = "llama", pooling: bool = False, chat_template: str | None = None,
                    pad_to: int = 0) -> Path:
    """A small valid GGUF: a few metadata keys, a vocabulary array and one tensor."""
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    if pooling:
        w.add_uint32(f"{arch}.pooling_type", 1)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_token_list([f"tok{i}" for i in range(32)])
    w.add_tensor("token_embd.weight", np.arange(max(16, pad_to // 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


class StoreBuilder:
    """Writes blobs and manifests exactly as Ollama lays them out."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / f"sha256-{digest}").write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    def layer(self, kind: str, data: bytes) -> dict:
        return {"mediaType": MT + kind, **self.blob(data)}

    def manifest(self, name: str, layers: list[dict], config: dict | None = None, *, raw: bytes | None = None,
                 mtime: float | None = None) -> Path:
        host, ns, rest = name.split("/", 2)
        model, tag = rest.rsplit(":", 1)
        path = self.root / "manifests" / host / ns / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        if raw is None:
            cfg = self.blob(json.dumps(config or {"model_format": "gguf", "os": "linux"}).encode())
            raw = json.dumps({
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": CONFIG_MT, **cfg},
                "layers": layers,
            }, separators=(",", ":")).encode()
        path.write_bytes(raw)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def model(self, name: str, gguf: Path, *, template: str | None = None, system: str | None = None,
              params: dict | None = None, licenses: tuple[str, ...] = (), mtime: float | None = None) -> Path:
        layers = [self.layer("model", gguf.read_bytes())]
        if template is not None:
            layers.append(self.layer("template", template.encode()))
        if system is not None:
            layers.append(self.layer("system", system.encode()))
        if params is not None:
            layers.append(self.layer("params", json.dumps(params).encode()))
        layers += [self.layer("license", text.encode()) for text in licenses]
        return self.manifest(name, layers, mtime=mtime)
