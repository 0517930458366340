"""Registry failures, as subclasses of the one hierarchy in :mod:`ollamafs.errors`.

httpx exceptions never leave :mod:`ollamafs.registry`: the client turns them into these.
``retryable`` tells the puller whether trying the same request again can help.
"""

from __future__ import annotations

import errno
import logging

from ..errors import IntegrityError, NotFound, OllamaFSError, PermissionDenied


class RegistryError(OllamaFSError):
    """A registry answered with an error status (the body is kept), or broke the protocol."""

    errno = errno.EIO
    level = logging.ERROR

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: bytes = b"",
        url: str | None = None,
        err: int | None = None,
    ) -> None:
        super().__init__(message, err=err)
        self.status = status
        self.body = body
        self.url = url

    @property
    def retryable(self) -> bool:
        """5xx, 408 and 429 may go away on their own; other statuses will not."""
        return self.status is not None and (self.status >= 500 or self.status in (408, 429))


class RegistryUnreachable(RegistryError):
    """No answer at all: connection refused or reset, DNS failure, TLS failure, timeout."""

    @property
    def retryable(self) -> bool:
        return True


class TransferError(RegistryError):
    """A response body that broke off, ran long or came back short."""

    @property
    def retryable(self) -> bool:
        return True


class RegistryNotFound(NotFound):
    """The registry says the manifest or blob does not exist (HTTP 404)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = 404

    retryable = False


class AuthError(PermissionDenied):
    """Credentials missing or refused (401/403 after the one retry), or an unusable key."""

    level = logging.WARNING
    retryable = False

    def __init__(self, message: str, *, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class InsecureRefused(PermissionDenied):
    """An ``http://`` name while the client was not built with ``insecure=True``."""

    retryable = False


class DigestMismatch(IntegrityError):
    """A downloaded blob whose sha256 or size is not what its digest promised."""

    retryable = False


class DownloadFailed(RegistryError):
    """A part of a blob kept failing after every retry; the partial files stay for a resume."""

    @property
    def retryable(self) -> bool:
        return False


class BlobWriteError(OllamaFSError):
    """Writing a downloaded blob to the store failed (disk full, permissions...)."""

    retryable = False
