"""The canonical serialization that event hashes and digest signatures are computed over.

An event's canonical form is its JSON data (as the JSON Schema describes it, e.g. as read back
from any archive format) with:

* every member whose value is ``null`` or an empty object removed, recursively (so JSON Lines,
  Parquet and log copies, which differ only in how they spell "absent", hash alike);
* keys sorted by Unicode code point at every level, no insignificant whitespace;
* strings as UTF-8 without escaping beyond what JSON requires; integers as decimal digits;
  floats in their shortest round-tripping form (Python's ``repr``/orjson).

``event_hash`` is the lowercase hex SHA-256 of the canonical form of the event's schema fields
(the JSON Schema's top-level properties: keys a log pipeline adds, such as structlog's
``level``, are not part of the event), whose ``integrity`` member holds only ``stream``,
``seq`` and ``prev`` (the hash of the stream's
previous event, or :data:`GENESIS` for ``seq`` 1). Including ``prev`` chains the events; including
``stream`` and ``seq`` pins each event to its place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

__all__ = ["EVENT_FIELDS", "GENESIS", "canonical_bytes", "event_hash", "prune"]

#: ``prev`` of the first event of a stream.
GENESIS: Final = "0" * 64
_OPTIONS: Final = orjson.OPT_SORT_KEYS
#: The top-level members of an event (``schema/audit-event.v1.json``), the only ones hashed.
EVENT_FIELDS: Final = frozenset(
    {
        "schema_version", "id", "occurred_at", "action", "outcome", "org_id", "actor",
        "target", "request", "client", "error", "metadata", "trace", "integrity",
    }
)  # fmt: skip
_SCALARS: Final = frozenset({str, int, float, bool})


def prune(value: Any) -> Any:
    """``value`` without null members and empty objects, at every level."""
    kind = type(value)
    if kind is dict or (kind is not str and isinstance(value, Mapping)):
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            if type(item) in _SCALARS:
                out[key] = item
                continue
            item = prune(item)
            if type(item) is dict and not item:
                continue
            out[key] = item
        return out
    if kind is list or kind is tuple:
        return [prune(item) for item in value]
    return value


def canonical_bytes(data: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of ``data`` (see the module docstring)."""
    return orjson.dumps(prune(data), option=_OPTIONS)


def event_hash(event: Mapping[str, Any], stream: str, seq: int, prev: str) -> str:
    """The chain hash of an event's JSON data placed at ``seq`` in ``stream`` after ``prev``.

    Members that are not schema fields, and any ``integrity`` member ``event`` already has, are
    ignored.
    """
    body = {key: value for key, value in event.items() if key in EVENT_FIELDS}
    body["integrity"] = {"stream": stream, "seq": seq, "prev": prev}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()
