"""Ollama's on-disk store: manifests, blobs and the model view built from them."""

from .manifest import Layer, Manifest, parse_manifest
from .store import ModelRecord, Store, default_store_path

__all__ = ["Layer", "Manifest", "ModelRecord", "Store", "default_store_path", "parse_manifest"]
