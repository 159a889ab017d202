"""Ed25519 signing keys for digests: loading, fingerprints and the published public key.

A private key is a PEM (PKCS#8) file or text, or the base64 of a raw 32-byte seed. The
fingerprint of a key is the lowercase hex SHA-256 of its raw 32-byte public key; digests name
the fingerprint of the key that signed them, so keys can rotate and old digests stay verifiable
as long as the old public key is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PublicKey",
    "SigningKey",
    "fingerprint_of",
    "generate_signing_key",
    "load_public_key",
    "signing_key_from_env",
]

_INSTALL = (
    "signed digests need the 'cryptography' package: pip install 'audit-log-middleware[integrity]'"
)


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL) from exc
    return ed25519


def _serialization() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization


def fingerprint_of(raw_public: bytes) -> str:
    """The fingerprint of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key that checks digest signatures."""

    key: Any

    @property
    def raw(self) -> bytes:
        s = _serialization()
        return bytes(self.key.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw))

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.raw)

    def pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, as published beside the digests."""
        s = _serialization()
        return bytes(self.key.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``message``."""
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key that signs digests."""

    key: Any

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key())

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, message: bytes) -> bytes:
        return bytes(self.key.sign(message))

    def pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM of the private key (keep it out of the bucket)."""
        s = _serialization()
        return bytes(
            self.key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
        )

    @classmethod
    def from_text(cls, text: str | bytes) -> SigningKey:
        """From PEM text or the base64 of a raw 32-byte seed; ``ValueError`` otherwise."""
        data = text.encode() if isinstance(text, str) else text
        ed25519 = _ed25519()
        if b"-----BEGIN" in data:
            s = _serialization()
            try:
                key = s.load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"not a readable unencrypted PEM private key ({exc})") from None
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ValueError("the signing key must be an Ed25519 key")
            return cls(key)
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a signing key must be PEM or base64 of a 32-byte seed") from None
        if len(seed) != 32:
            raise ValueError(f"a raw Ed25519 seed has 32 bytes, got {len(seed)}")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def generate_signing_key() -> SigningKey:
    """A new random Ed25519 key."""
    return SigningKey(_ed25519().Ed25519PrivateKey.generate())


def load_public_key(data: bytes) -> PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo) or from a private key's PEM."""
    ed25519 = _ed25519()
    s = _serialization()
    if b"PRIVATE KEY" in data:
        return SigningKey.from_text(data).public
    try:
        key = s.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a readable PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError("digest keys are Ed25519 keys")
    return PublicKey(key)


def signing_key_from_env(env: Mapping[str, str] | None = None) -> SigningKey | None:
    """``AUDIT_LOG_SIGNING_KEY`` (PEM or base64 seed) or ``AUDIT_LOG_SIGNING_KEY_FILE``."""
    env = os.environ if env is None else env
    text = env.get("AUDIT_LOG_SIGNING_KEY", "").strip()
    path = env.get("AUDIT_LOG_SIGNING_KEY_FILE", "").strip()
    if text and path:
        raise ValueError("set AUDIT_LOG_SIGNING_KEY or AUDIT_LOG_SIGNING_KEY_FILE, not both")
    if path:
        try:
            text_bytes = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"AUDIT_LOG_SIGNING_KEY_FILE: cannot read {path} ({exc})") from None
        try:
            return SigningKey.from_text(text_bytes)
        except ValueError as exc:
            raise ValueError(f"AUDIT_LOG_SIGNING_KEY_FILE {path}: {exc}") from None
    if text:
        try:
            return SigningKey.from_text(text)
        except ValueError as exc:
            raise ValueError(f"AUDIT_LOG_SIGNING_KEY: {exc}") from None
    return None
