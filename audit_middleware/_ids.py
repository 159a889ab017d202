"""Time-ordered unique identifiers (UUIDv7, RFC 9562) and RFC 3339 timestamps."""

from __future__ import annotations

import random
import threading
import time

__all__ = ["format_timestamp", "uuid7"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_prefix: tuple[int, str] = (-1, "")  # the last millisecond's 48 bits as "xxxxxxxx-xxxx-"
_getrandbits = random.getrandbits  # the module's generator, reseeded in place after fork
_VERSION_AND_COUNTER = [f"7{n:03x}-" for n in range(4096)]


def uuid7(unix_ns: int | None = None) -> str:
    """Return a UUIDv7 string whose 48-bit timestamp is ``unix_ns`` (default: now) in ms.

    Ids made for the same millisecond carry an increasing 12-bit counter (RFC 9562 method 1),
    so they sort in creation order; 62 random bits make them unique across processes and hosts
    (the ``random`` module is reseeded from the OS at start-up and after ``fork``).
    """
    global _last_ms, _counter, _prefix
    ms = ((time.time_ns() if unix_ns is None else unix_ns) // 1_000_000) & 0xFFFF_FFFF_FFFF
    with _lock:
        if ms == _last_ms and _counter < 0xFFF:
            _counter += 1
            counter = _counter
        else:
            counter = _getrandbits(11)  # a random start leaves room to count upwards
            if ms >= _last_ms:
                _last_ms = ms
                _counter = counter
    prefix_ms, prefix = _prefix
    if prefix_ms != ms:  # ids cluster within a millisecond: format its part once
        h = f"{ms:012x}"
        prefix = f"{h[:8]}-{h[8:]}-"
        _prefix = (ms, prefix)
    # variant 10 + 62 random bits, as "vrrr-rrrrrrrrrrrr" (hex() groups from the right)
    tail = (0x8000_0000_0000_0000 | _getrandbits(62)).to_bytes(8, "big").hex("-", 6)
    return prefix + _VERSION_AND_COUNTER[counter] + tail


_ts_cache: tuple[int, str] = (-1, "")


def format_timestamp(unix_ns: int) -> str:
    """Format ``unix_ns`` as RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    global _ts_cache
    seconds, rem_ns = divmod(unix_ns, 1_000_000_000)
    cached_seconds, prefix = _ts_cache
    if seconds != cached_seconds:  # events cluster within a second: format its prefix once
        t = time.gmtime(seconds)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
        )
        _ts_cache = (seconds, prefix)
    # six digits of microseconds: str() of 1,000,000 more, without its leading 1 (no format())
    return prefix + str(rem_ns // 1000 + 1_000_000)[1:] + "Z"
