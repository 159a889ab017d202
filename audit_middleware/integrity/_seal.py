"""The hash chain's inner loop: each event's hash, integrity fields and JSON line (hot path)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

import orjson

from audit_middleware._event import AuditEvent
from audit_middleware._lines import event_line, full_document
from audit_middleware.integrity._document import canonical_json

__all__ = ["seal_events"]

_new: Final = tuple.__new__  # AuditEvent(...) without _replace's keyword handling
# Each hash starts as a copy of this one: hashlib.sha256(data) looks SHA-256 up in OpenSSL's
# provider store on every call (Python 3.11), which perf measured at a tenth of the chain's CPU.
_EMPTY_SHA256: Final = hashlib.sha256()
# Final aliases: compiled code reads these directly, not from the module's dict (see
# scripts/compile.py).
_AUDIT_EVENT: Final = AuditEvent
_dumps: Final = orjson.dumps


def seal_events(
    events: Sequence[AuditEvent],
    sealed: list[AuditEvent],
    lines: list[bytes] | None,
    stream: str,
    seq: int,
    prev: str,
) -> tuple[int, str]:
    """Append ``events`` to ``sealed`` with their places in ``stream`` after ``seq`` (whose
    hash is ``prev``), and their JSON lines to ``lines`` unless it is None; return the new
    ``(seq, hash)``. Events that already have integrity fields pass through unchanged."""
    for event in events:
        if event.integrity is not None:
            sealed.append(event)
            if lines is not None:
                lines.append(event_line(event))
            continue
        seq += 1
        canonical = canonical_json(event, {"prev": prev, "seq": seq, "stream": stream})
        hasher = _EMPTY_SHA256.copy()
        hasher.update(canonical)
        digest = hasher.hexdigest()
        integrity = {"stream": stream, "seq": seq, "prev": prev, "hash": digest}
        if lines is not None:
            full = full_document(event)
            full["integrity"] = integrity
            lines.append(_dumps(full) + b"\n")  # compact: see event_line
        sealed.append(_new(_AUDIT_EVENT, (
            event[0], event[1], event[2], event[3], event[4], event[5], event[6],
            event[7], event[8], event[9], event[10], event[11], integrity, event[13],
        )))  # fmt: skip
        prev = digest
    return seq, prev
