"""The registry protocol: an httpx client (manifests, blobs, ranges, auth) and a blob puller."""

from .client import BlobBody, RegistryClient
from .errors import (
    AuthError,
    BlobWriteError,
    DigestMismatch,
    DownloadFailed,
    InsecureRefused,
    RegistryError,
    RegistryNotFound,
    RegistryUnreachable,
    TransferError,
)
from .puller import BlobPuller, PartState, PullProgress

__all__ = [
    "AuthError",
    "BlobBody",
    "BlobPuller",
    "BlobWriteError",
    "DigestMismatch",
    "DownloadFailed",
    "InsecureRefused",
    "PartState",
    "PullProgress",
    "RegistryClient",
    "RegistryError",
    "RegistryNotFound",
    "RegistryUnreachable",
    "TransferError",
]
