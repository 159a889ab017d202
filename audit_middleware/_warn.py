"""Rate-limited warnings on the library's own logger (no handlers are configured here)."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["logger", "warn_limited"]

logger = logging.getLogger("audit_middleware")

_INTERVAL_S = 10.0
_lock = threading.Lock()
_last: dict[str, tuple[float, int]] = {}


def warn_limited(key: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING at most once per 10 s per ``key``; say how many were held back."""
    now = time.monotonic()
    with _lock:
        last, suppressed = _last.get(key, (float("-inf"), 0))
        if now - last < _INTERVAL_S:
            _last[key] = (last, suppressed + 1)
            return
        _last[key] = (now, 0)
    if suppressed:
        message += " (%d similar warnings suppressed)"
        args = (*args, suppressed)
    logger.warning(message, *args)
