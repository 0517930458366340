"""Registry authentication pieces: challenge parsing, token URLs, Ollama's signed requests.

Nothing here does I/O except :func:`load_signing_key`, which reads one small key file.

Ollama's own registry answers a 401 with a Bearer challenge and expects the token request to
be signed with the user's OpenSSH ed25519 key (``~/.ollama/id_ed25519``)::

    GET <realm>?nonce=…&scope=…&service=…&ts=<unix seconds>
    Authorization: <public key, base64, no "ssh-ed25519 " prefix>:<base64 ed25519 signature>

the signed bytes being ``GET,<that URL>,<base64 of the hex sha256 of an empty body>``.  The query
is encoded as Go's ``url.Values.Encode`` does (keys sorted, ``QueryEscape``), so that the URL we
sign is byte for byte the URL we send.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote_plus, urlsplit, urlunsplit

from .errors import AuthError

DEFAULT_KEY_PATH = Path.home() / ".ollama" / "id_ed25519"

# base64(hex(sha256(b""))): the body hash part of every signed GET.
EMPTY_BODY_HASH = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lower-cased) and auth-params."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope(self) -> str:
        return self.params.get("scope", "")


def parse_challenges(values: list[str] | str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 9110 §11.6.1) into challenges.

    Handles quoted strings with escapes and commas inside them (``scope="repository:a:pull,push"``),
    several challenges in one header and several headers.  Malformed input yields what could be
    read; it never raises.
    """
    if isinstance(values, str):
        values = [values]
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_one_header(value))
    return out


def _parse_one_header(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    i, n = 0, len(text)
    current: Challenge | None = None

    def skip(chars: str) -> None:
        nonlocal i
        while i < n and text[i] in chars:
            i += 1

    def token() -> str:
        nonlocal i
        start = i
        while i < n and text[i] in _TCHAR:
            i += 1
        return text[start:i]

    while i < n:
        skip(" \t,")
        if i >= n:
            break
        word = token()
        if not word:
            i += 1  # garbage character: step over it
            continue
        skip(" \t")
        if i < n and text[i] == "=" and current is not None:
            # auth-param of the current challenge
            i += 1
            skip(" \t")
            if i < n and text[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(text[i])
                    i += 1
                i += 1  # closing quote (or end)
                value = "".join(chars)
            else:  # a token; be lenient and take anything up to the next comma (bare URLs)
                start = i
                while i < n and text[i] not in ", \t":
                    i += 1
                value = text[start:i]
            current.params[word.lower()] = value
        elif i < n and text[i] == "=":
            # token68 or param without a scheme: skip to the next comma
            while i < n and text[i] != ",":
                i += 1
        else:
            current = Challenge(word.lower(), {})
            challenges.append(current)
    return challenges


def bearer_challenge(challenges: list[Challenge]) -> Challenge | None:
    for ch in challenges:
        if ch.scheme == "bearer" and ch.realm:
            return ch
    return None


def token_url(challenge: Challenge, *, signed: bool, now: int | None = None, nonce: str | None = None) -> str:
    """The token request URL for a Bearer challenge, encoded like Go's ``url.Values.Encode``.

    ``scope`` is split at spaces into several values, as Ollama does; ``ts`` and ``nonce`` are
    added only for a signed request.
    """
    parts = urlsplit(challenge.realm)
    values = parse_qsl(parts.query, keep_blank_values=True)
    values.append(("service", challenge.service))
    if challenge.scope:
        values.extend(("scope", s) for s in challenge.scope.split(" "))
    if signed:
        values.append(("ts", str(int(time.time()) if now is None else now)))
        values.append(("nonce", new_nonce() if nonce is None else nonce))
    values.sort(key=lambda kv: kv[0])  # stable: values of one key keep their order
    query = "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in values)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def new_nonce(length: int = 16) -> str:
    """Ollama's nonce: random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(length)).rstrip(b"=").decode()


def signed_payload(method: str, url: str) -> bytes:
    """The bytes Ollama signs for a request with an empty body."""
    return f"{method},{url},{EMPTY_BODY_HASH}".encode()


class SigningKey:
    """An ed25519 key from an OpenSSH private key file, able to sign Ollama token requests."""

    def __init__(self, private_key: object, public_b64: str) -> None:
        self._key = private_key
        self.public_b64 = public_b64

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)  # type: ignore[attr-defined]

    def authorization(self, method: str, url: str) -> str:
        """``<pubkey base64 without type>:<base64 signature of METHOD,URL,bodyhash>``."""
        sig = self.sign(signed_payload(method, url))
        return f"{self.public_b64}:{base64.b64encode(sig).decode()}"


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    """Read an unencrypted OpenSSH ed25519 private key; any problem is an :class:`AuthError`."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError as exc:  # pragma: no cover - cryptography is a dependency
        raise AuthError(f"cannot sign registry requests: {exc}") from None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read registry key {str(path)!r}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise AuthError(f"cannot parse registry key {str(path)!r}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuthError(f"registry key {str(path)!r} is not an ed25519 key")
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fields = line.split()
    if len(fields) < 2:  # pragma: no cover - cryptography always writes "type base64"
        raise AuthError(f"malformed public key for {str(path)!r}")
    return SigningKey(key, fields[1].decode())
