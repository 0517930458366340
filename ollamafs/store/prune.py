"""Deleting blobs nothing references (after a pull replaced a manifest, or on request)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from ..names import Digest
from .store import Store

log = logging.getLogger(__name__)


def noprune() -> bool:
    """Ollama's ``OLLAMA_NOPRUNE``: any non-empty value other than 0/false disables pruning."""
    value = os.environ.get("OLLAMA_NOPRUNE", "")
    return value.lower() not in ("", "0", "false", "no")


def referenced_blobs(store: Store) -> set[Digest]:
    """Every blob some manifest of the store references (the listing is read afresh)."""
    out: set[Digest] = set()
    for record in store.list(max_age=0).values():
        out.update(layer.digest for layer in record.manifest.all_blobs())
    return out


def remove_unreferenced(store: Store, candidates: Iterable[Digest], in_use: Iterable[Digest] = ()) -> list[Digest]:
    """Delete those ``candidates`` no manifest references and nothing uses; return them."""
    keep = referenced_blobs(store) | set(in_use)
    removed = []
    for digest in set(candidates) - keep:
        try:
            os.unlink(store.blob_path(digest))
        except FileNotFoundError:
            continue
        log.info("pruned blob %s (no manifest references it)", digest)
        removed.append(digest)
    return removed
