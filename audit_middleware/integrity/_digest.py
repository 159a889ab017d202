"""Digest objects: per stream and period, the list of archive objects with their SHA-256,
chained to the previous digest and signed with Ed25519.

Layout beside the events (``<prefix>`` is the archive's prefix)::

    <prefix>/_integrity/digests/stream=<stream>/<stream>-<digest_seq:010d>.json
    <prefix>/_integrity/keys/<fingerprint>.pem

A digest is the canonical JSON (``_canonical.canonical_bytes``) of::

    {"format": "audit-digest/1", "stream": ..., "digest_seq": 1, 2, ...,
     "previous_digest": {"key": ..., "sha256": ...} | null,   # sha256 of its stored bytes
     "created_at": "<RFC 3339 UTC>",
     "chain_head": {"seq": ..., "hash": ...},                 # the stream's last event covered
     "objects": [{"key", "sha256", "bytes", "events", "first_seq", "last_seq", "last_hash"}, ...],
     "crash_gaps": [{"after_seq", "through_seq", "declared_by"}, ...],   # may be absent
     "signing": {"algorithm": "Ed25519", "key_fingerprint": ...},
     "signature": "<base64 of the Ed25519 signature>"}

followed by a newline. ``crash_gaps`` is written by a process that took over the spool of a
process that died (SIGKILL, power loss): that process had numbered events up to
``through_seq`` but only those up to ``after_seq`` were all in its spool, so seqs in
``(after_seq, through_seq]`` may be missing from the archive without any tampering (they were
in memory, never acknowledged as durable). Verify reports such gaps as notices, not findings.
A digest may list no objects (only a crash gap) and ``chain_head`` is then absent.

The signature covers the canonical bytes of the document without its ``signature`` member;
an unsigned digest (no key configured) has neither ``signing`` nor
``signature``, and ``audit-log verify`` reports it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from audit_middleware.integrity._canonical import canonical_bytes
from audit_middleware.integrity._keys import PublicKey, SigningKey

__all__ = [
    "DIGEST_FORMAT",
    "INTEGRITY_DIR",
    "digest_key",
    "key_object_key",
    "make_digest",
    "parse_digest",
    "sha256_hex",
    "signature_status",
]

DIGEST_FORMAT: Final = "audit-digest/1"
#: The folder under the archive prefix that holds digests and public keys.
INTEGRITY_DIR: Final = "_integrity"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def digest_key(prefix: str, stream: str, digest_seq: int) -> str:
    """The object key of a stream's ``digest_seq``-th digest."""
    return _join(prefix, f"{INTEGRITY_DIR}/digests/stream={stream}/{stream}-{digest_seq:010d}.json")


def key_object_key(prefix: str, fingerprint: str) -> str:
    """The object key of a published public key."""
    return _join(prefix, f"{INTEGRITY_DIR}/keys/{fingerprint}.pem")


def make_digest(
    *,
    stream: str,
    digest_seq: int,
    previous: Mapping[str, str] | None,
    created_at: str,
    objects: Sequence[Mapping[str, Any]],
    crash_gaps: Sequence[Mapping[str, Any]] = (),
    key: SigningKey | None,
) -> bytes:
    """The stored bytes of a digest (signed when ``key`` is given)."""
    entries = sorted(objects, key=lambda o: (o["first_seq"], o["key"]))
    last = max(entries, key=lambda o: o["last_seq"]) if entries else None
    doc: dict[str, Any] = {
        "format": DIGEST_FORMAT,
        "stream": stream,
        "digest_seq": digest_seq,
        "previous_digest": None if previous is None else dict(previous),
        "created_at": created_at,
        "chain_head": None
        if last is None
        else {"seq": last["last_seq"], "hash": last["last_hash"]},
        "objects": [dict(o) for o in entries],
        "crash_gaps": [dict(g) for g in crash_gaps],
    }
    if key is not None:
        doc["signing"] = {"algorithm": "Ed25519", "key_fingerprint": key.fingerprint}
        doc["signature"] = base64.b64encode(key.sign(canonical_bytes(doc))).decode()
    return canonical_bytes(doc) + b"\n"


def parse_digest(body: bytes) -> dict[str, Any]:
    """A digest's document; ``ValueError`` if it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != DIGEST_FORMAT:
        raise ValueError(f"not an {DIGEST_FORMAT} document")
    return doc


def signature_status(doc: Mapping[str, Any], keys: Mapping[str, PublicKey]) -> str:
    """``"valid"``, ``"unsigned"``, ``"unknown-key"`` or ``"bad-signature"``.

    ``keys`` maps fingerprints to the public keys trusted to have signed digests.
    """
    signature = doc.get("signature")
    signing = doc.get("signing")
    if signature is None or not isinstance(signing, Mapping):
        return "unsigned"
    key = keys.get(str(signing.get("key_fingerprint")))
    if key is None:
        return "unknown-key"
    if signing.get("algorithm") != "Ed25519" or not isinstance(signature, str):
        return "bad-signature"
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return "bad-signature"
    body = {k: v for k, v in doc.items() if k != "signature"}
    return "valid" if key.verify(raw, canonical_bytes(body)) else "bad-signature"


def sha256_hex(data: bytes) -> str:
    """Lowercase hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
