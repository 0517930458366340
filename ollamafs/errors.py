"""The one exception hierarchy of ollamafs.

Every error the core raises is an :class:`OllamaFSError`; each class carries the errno the
filesystem answers with and the level it is logged at.  The FUSE adapter translates these into
``pyfuse3.FUSEError`` (and nothing else does); the CLI prints their message and exits with
``exit_code``.
"""

from __future__ import annotations

import errno
import logging


class OllamaFSError(Exception):
    """Base class: a failure with a specific errno and a log level."""

    errno: int = errno.EIO
    level: int = logging.ERROR
    exit_code: int = 1

    def __init__(self, message: str, *, err: int | None = None) -> None:
        super().__init__(message)
        if err is not None:
            self.errno = err

    @property
    def message(self) -> str:
        return str(self)


class InvalidName(OllamaFSError):
    """A model name or one of its parts breaks Ollama's naming rules."""

    errno = errno.EINVAL
    level = logging.INFO
    exit_code = 2


class InvalidDigest(OllamaFSError):
    """A digest that is not ``sha256[:-]<64 hex>``; it never becomes a path."""

    errno = errno.EINVAL
    level = logging.WARNING
    exit_code = 2


class NotFound(OllamaFSError):
    errno = errno.ENOENT
    level = logging.DEBUG
    exit_code = 3


class ManifestError(OllamaFSError):
    """A manifest file that does not parse or does not describe a model."""

    errno = errno.EIO
    level = logging.WARNING


class MissingBlob(OllamaFSError):
    """A manifest names a blob that is not in the store."""

    errno = errno.EIO
    level = logging.ERROR


class IntegrityError(OllamaFSError):
    """Bytes whose sha256 or size differs from the digest that names them."""

    errno = errno.EIO
    level = logging.ERROR


class ReadOnly(OllamaFSError):
    errno = errno.EROFS
    level = logging.INFO


class PermissionDenied(OllamaFSError):
    errno = errno.EACCES
    level = logging.INFO


class Refused(OllamaFSError):
    """An operation the filesystem refuses by design (EPERM unless given), logged at INFO."""

    errno = errno.EPERM
    level = logging.INFO


class NotSupported(OllamaFSError):
    errno = errno.EOPNOTSUPP
    level = logging.INFO


class NoAttribute(OllamaFSError):
    """Extended attribute not present (getfattr expects ENODATA)."""

    errno = errno.ENODATA
    level = logging.DEBUG


class Busy(OllamaFSError):
    errno = errno.EBUSY
    level = logging.WARNING


class MountError(OllamaFSError):
    """The mount itself cannot be set up (bad mountpoint, busy, no /dev/fuse)."""

    errno = errno.EINVAL
    level = logging.ERROR
    exit_code = 4
