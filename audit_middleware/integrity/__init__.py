"""Tamper evidence: hash-chained events, signed digests and verification.

See ``docs/integrity.md`` for the formats and ``docs/threat-model.md`` for what they defend.
"""

from audit_middleware.integrity._canonical import GENESIS, canonical_bytes, event_hash
from audit_middleware.integrity._chain import ChainHead, EventChain, new_stream_id

__all__ = [
    "GENESIS",
    "ChainHead",
    "EventChain",
    "canonical_bytes",
    "event_hash",
    "new_stream_id",
]
