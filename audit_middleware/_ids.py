"""Time-ordered unique identifiers (UUIDv7, RFC 9562) and RFC 3339 timestamps."""

from __future__ import annotations

import random
import threading
import time

__all__ = ["format_timestamp", "uuid7"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7(unix_ns: int | None = None) -> str:
    """Return a UUIDv7 string whose 48-bit timestamp is ``unix_ns`` (default: now) in ms.

    Ids made for the same millisecond carry an increasing 12-bit counter (RFC 9562 method 1),
    so they sort in creation order; 62 random bits make them unique across processes and hosts
    (the ``random`` module is reseeded from the OS at start-up and after ``fork``).
    """
    global _last_ms, _counter
    ms = (time.time_ns() if unix_ns is None else unix_ns) // 1_000_000
    rand = random.getrandbits(73)
    with _lock:
        if ms == _last_ms and _counter < 0xFFF:
            _counter += 1
            counter = _counter
        else:
            counter = rand >> 62  # random 11-bit start leaves room to count upwards
            if ms >= _last_ms:
                _last_ms, _counter = ms, counter
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | counter << 64
        | 0b10 << 62
        | rand & 0x3FFF_FFFF_FFFF_FFFF
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def format_timestamp(unix_ns: int) -> str:
    """Format ``unix_ns`` as RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    seconds, rem_ns = divmod(unix_ns, 1_000_000_000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{rem_ns // 1000:06d}Z"
    )
