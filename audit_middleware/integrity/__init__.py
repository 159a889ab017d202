"""Tamper evidence: hash-chained events, signed digests and verification.

See ``docs/integrity.md`` for the formats and ``docs/threat-model.md`` for what they defend.
"""

from audit_middleware.integrity._canonical import GENESIS, canonical_bytes, event_hash
from audit_middleware.integrity._chain import ChainHead, EventChain, new_stream_id
from audit_middleware.integrity._keys import (
    PublicKey,
    SigningKey,
    generate_signing_key,
    load_public_key,
    signing_key_from_env,
)
from audit_middleware.integrity._verify import (
    Finding,
    VerifyReport,
    verify_archive,
    verify_events,
)

__all__ = [
    "GENESIS",
    "ChainHead",
    "EventChain",
    "Finding",
    "PublicKey",
    "SigningKey",
    "VerifyReport",
    "canonical_bytes",
    "event_hash",
    "generate_signing_key",
    "load_public_key",
    "new_stream_id",
    "signing_key_from_env",
    "verify_archive",
    "verify_events",
]
