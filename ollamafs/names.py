"""Model names and digests: the only place that parses or formats them.

The rules are Ollama's (``types/model/name.go``), restated in ../shared/docs/OLLAMA.md:

* ``[host/][namespace/]model[:tag]`` with defaults ``registry.ollama.ai``, ``library`` and
  ``latest``; the tag is split at the last ``:`` only when it comes after the last ``/``;
* each part starts with an ASCII letter, digit or ``_`` and goes on with letters, digits,
  ``_``, ``-``, ``.`` (``.`` not in the namespace, ``:`` only in the host, for ports);
* host 1-350 characters, the other parts 1-80;
* names compare case-insensitively;
* digests are ``sha256:<64 hex>`` in JSON and ``sha256-<64 hex>`` on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import InvalidDigest, InvalidName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")  # used with fullmatch: no "\n" slips by
_PARTIAL_SUFFIX = "-partial"

HOST, NAMESPACE, MODEL, TAG = "host", "namespace", "model", "tag"
_MAX_LEN = {HOST: 350, NAMESPACE: 80, MODEL: 80, TAG: 80}


@dataclass(frozen=True, slots=True)
class Digest:
    """A sha256 content address.  ``hex`` is always 64 lower-case hex digits."""

    hex: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.hex):
            raise InvalidDigest(f"invalid digest format: {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Accept ``sha256:<hex>`` or ``sha256-<hex>``; anything else is InvalidDigest."""
        if not isinstance(text, str):
            raise InvalidDigest(f"invalid digest format: {text!r}")
        m = _DIGEST_RE.fullmatch(text)
        if m is None:
            raise InvalidDigest(f"invalid digest format: {text!r}")
        return cls(m.group(1).lower())

    @classmethod
    def from_filename(cls, filename: str) -> Digest:
        """The digest a blob file name stands for (``sha256-<hex>``), strictly."""
        if not filename.startswith("sha256-"):
            raise InvalidDigest(f"not a blob file name: {filename!r}")
        return cls.parse(filename)

    @property
    def filename(self) -> str:
        """The blob's file name in ``blobs/``."""
        return f"sha256-{self.hex}"

    @property
    def partial_filename(self) -> str:
        return self.filename + _PARTIAL_SUFFIX

    @property
    def short(self) -> str:
        """The 12 hex digits ``ollama list`` shows as ID."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def _is_alnum_(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9") or ch == "_"


def is_valid_part(kind: str, text: str) -> bool:
    """Ollama's ``isValidPart``: the character and length rules for one part of a name."""
    if not 1 <= len(text) <= _MAX_LEN[kind]:
        return False
    for i, ch in enumerate(text):
        if i == 0:
            if not _is_alnum_(ch):
                return False
        elif ch in "_-":
            continue
        elif ch == ".":
            if kind == NAMESPACE:
                return False
        elif ch == ":":
            if kind != HOST:
                return False
        elif not _is_alnum_(ch):
            return False
    return True


def check_part(kind: str, text: str) -> str:
    if not is_valid_part(kind, text):
        raise InvalidName(f"invalid {kind} {text!r} in model name")
    return text


@dataclass(frozen=True, slots=True)
class ModelName:
    """A fully qualified model name; compares and hashes case-insensitively."""

    host: str
    namespace: str
    model: str
    tag: str
    _key: tuple[str, str, str, str] = field(init=False, repr=False, compare=True)

    def __post_init__(self) -> None:
        for kind in (HOST, NAMESPACE, MODEL, TAG):
            check_part(kind, getattr(self, kind))
        object.__setattr__(
            self, "_key", (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())
        )

    # dataclass(eq) compares every field; make equality the case-folded key only.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelName):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Parse ``[scheme://][host/][namespace/]model[:tag]``, filling in Ollama's defaults."""
        return parse_with_scheme(text)[0]

    @classmethod
    def from_parts(cls, parts: tuple[str, str, str, str]) -> ModelName:
        return cls(*parts)

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def dirname(self) -> str:
        """The name of the model's directory in the mount: ``model:tag``."""
        return f"{self.model}:{self.tag}"

    @property
    def manifest_relpath(self) -> tuple[str, str, str, str]:
        """Path parts of the manifest under ``manifests/``."""
        return self.parts

    @property
    def short(self) -> str:
        """Ollama's shortest display: defaults dropped (``llama3.2:1b``, ``alice/m:latest``)."""
        if self.host.lower() == DEFAULT_HOST:
            if self.namespace.lower() == DEFAULT_NAMESPACE:
                return f"{self.model}:{self.tag}"
            return f"{self.namespace}/{self.model}:{self.tag}"
        return str(self)

    def with_tag(self, tag: str) -> ModelName:
        return ModelName(self.host, self.namespace, self.model, tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_with_scheme(text: str) -> tuple[ModelName, str | None]:
    """Parse a name as Ollama's ``ParseName``; also return the ``scheme://`` it carried, if any."""
    if not isinstance(text, str) or not text:
        raise InvalidName(f"invalid model name {text!r}")
    rest = text
    tag = DEFAULT_TAG
    scheme: str | None = None
    namespace, host = DEFAULT_NAMESPACE, DEFAULT_HOST
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)
    # As Ollama's ParseNameBare: model, then namespace come off the right; only what is left
    # is the host, and only there is a "scheme://" cut off.
    rest, slash, model = rest.rpartition("/")
    if slash:
        rest, slash, namespace = rest.rpartition("/")
        if slash:
            host = rest
            if "://" in host:
                scheme, host = host.split("://", 1)
    try:
        return ModelName(host, namespace, model, tag), scheme
    except InvalidName as exc:
        raise InvalidName(f"invalid model name {text!r}: {exc}") from None

