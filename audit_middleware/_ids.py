"""Time-ordered unique identifiers (UUIDv7, RFC 9562) and RFC 3339 timestamps."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Final

__all__ = ["format_timestamp", "uuid7"]

_getrandbits: Final = random.getrandbits  # the module's generator, reseeded in place after fork
_VERSION_AND_COUNTER: Final = [f"7{n:03x}-" for n in range(4096)]  # version and counter
_THREE_DIGITS: Final = [f"{n:03d}" for n in range(1000)]
_COUNTER_MAX: Final = 0xFFF
_START_BITS: Final = 11


class _Clock:
    """The state ids and timestamps share between calls (attributes: cheap when compiled)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last_ms = 0
        self.counter = 0
        self.ahead = 0  # milliseconds last_ms is ahead of the clock after counter rollovers
        self.prefix_ms = -1  # the last millisecond's 48 bits, formatted as "xxxxxxxx-xxxx-"
        self.prefix = ""
        #: The last second and its "YYYY-MM-DDTHH:MM:SS.", one tuple so no thread sees a torn pair
        self.stamp: tuple[int, str] = (-1, "")


_clock: Final = _Clock()


def _after_fork_in_child() -> None:
    _clock.lock = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def uuid7(unix_ns: int | None = None) -> str:
    """Return a UUIDv7 string whose 48-bit timestamp is ``unix_ns`` (default: now) in ms.

    Ids made for the same millisecond carry an increasing 12-bit counter (RFC 9562 method 1),
    so they sort in creation order. It starts at a random value below 2048, which leaves room
    for at least 2048 ids per millisecond; past its end, ids take the next millisecond (the
    RFC's rollover guard), and later ids of the same clock millisecond follow them there.
    Without ``unix_ns``, an id never sorts before one made earlier in this process, even if
    the system clock steps back.
    62 random bits make ids unique across processes and hosts (the ``random`` module is
    reseeded from the OS at start-up and after ``fork``).
    """
    clock = _clock
    lock = clock.lock
    lock.acquire()
    try:
        last = clock.last_ms
        if unix_ns is None:  # now, read under the lock: never behind an id made before
            ms = max(last, (time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF)
        else:
            ms = (unix_ns // 1_000_000) & 0xFFFF_FFFF_FFFF
        if ms == last or last - clock.ahead <= ms < last:  # this ms, or one the counter left
            ms = last
            counter = clock.counter + 1
            if counter > _COUNTER_MAX:  # rollover: count on in the next millisecond
                ms = clock.last_ms = last + 1
                clock.ahead += 1
                counter = _getrandbits(_START_BITS)
            clock.counter = counter
        else:
            counter = _getrandbits(_START_BITS)  # a random start leaves room to count upwards
            if ms > last:
                clock.last_ms, clock.counter, clock.ahead = ms, counter, 0
        if clock.prefix_ms == ms:  # ids cluster within a millisecond: format its part once
            prefix = clock.prefix
        else:
            h = f"{ms:012x}"
            prefix = f"{h[:8]}-{h[8:]}-"
            clock.prefix, clock.prefix_ms = prefix, ms
    finally:
        lock.release()
    # variant 10 + 62 random bits, as "vrrr-rrrrrrrrrrrr" (hex() groups from the right)
    tail = (0x8000_0000_0000_0000 | _getrandbits(62)).to_bytes(8, "big").hex("-", 6)
    return prefix + _VERSION_AND_COUNTER[counter] + tail


def format_timestamp(unix_ns: int) -> str:
    """Format ``unix_ns`` as RFC 3339 UTC with microseconds and a ``Z`` suffix."""
    seconds, rem_ns = divmod(unix_ns, 1_000_000_000)
    cached_seconds, prefix = _clock.stamp
    if seconds != cached_seconds:  # events cluster within a second: format its prefix once
        t = time.gmtime(seconds)
        prefix = (
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
        )
        _clock.stamp = (seconds, prefix)
    micros = rem_ns // 1000  # six digits, from two table lookups (no int formatting)
    return f"{prefix}{_THREE_DIGITS[micros // 1000]}{_THREE_DIGITS[micros % 1000]}Z"
