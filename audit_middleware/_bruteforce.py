"""Failed-login tracking for brute-force detection, with memory bounded whatever the traffic.

:class:`BruteForceDetector` watches audit events (feed it from the background worker, e.g. an
exporter) and raises a :class:`BruteForceAlert` when failed logins for one client IP or for one
attempted account reach ``threshold`` within a sliding window of ``window_seconds``. It detects
password guessing against one account from many IPs (the ``account`` dimension) and one IP
guessing many accounts or one account many times (the ``ip`` dimension). It does not detect slow
attacks that stay under the threshold per window, nor distributed attacks spread over more IPs
and accounts than it tracks (``max_keys`` per dimension, least recently seen evicted first: a
flood of fresh keys pushes older ones out and their counts are lost). It is a signal for humans
and alerting, not a blocker: it sees events after the fact and never rejects a request. With IP
anonymization enabled the ``ip`` dimension counts per truncated network.

Alerting is edge-triggered: a key alerts once when its count reaches the threshold and not again
until the count has dropped below the threshold (a quiet period of about one window), so a
continuing attack produces one alert per burst, never one per failed attempt. The failures an
alert reports are never counted towards a later alert for the same key, so alerts per key never
exceed failures // threshold. Times are the events' own ``occurred_at``; events may arrive out of
order, and the window is relative to the newest failure time seen for the key (a failure older
than that minus the window is ignored; the window is closed, both ends count). A duplicate of an
already counted event (same id and time) is ignored. Per key at most ``threshold`` timestamps
and ids are kept, so memory is O(2 x max_keys x threshold) and keys are capped at 320 characters.
"""

from __future__ import annotations

import math
import re
import threading
import time
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Final, Literal

from audit_middleware._event import AuditEvent, ClientInfo

__all__ = [
    "BruteForceAlert",
    "BruteForceDetector",
    "BruteForcePolicy",
    "attempted_account",
    "event_time_ns",
]

Dimension = Literal["ip", "account"]

_MAX_KEY_LEN: Final = 320  # longest valid e-mail address (RFC 3696 errata)
_MAX_THRESHOLD: Final = 1_000
_MAX_KEYS: Final = 1_000_000
_MAX_WINDOW_SECONDS: Final = 86_400.0
_NEVER: Final = -(2**63)

_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_UUID7: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.IGNORECASE
)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_NS_PER_S: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class BruteForcePolicy:
    """When failures become an alert. Invalid values raise ``ValueError``.

    ``threshold`` failures (2-1000) within ``window_seconds`` (0 < w <= 1 day) for one key raise
    an alert; ``actions`` are the event actions counted as failures (any iterable of names is
    accepted and stored as a frozenset); ``max_keys`` (1-1,000,000) bounds the keys tracked per
    dimension.
    """

    threshold: int = 10
    window_seconds: float = 300.0
    actions: frozenset[str] = frozenset({"user.login.failed"})
    max_keys: int = 10_000

    def __post_init__(self) -> None:
        _check_int("threshold", self.threshold, 2, _MAX_THRESHOLD)
        _check_int("max_keys", self.max_keys, 1, _MAX_KEYS)
        window = self.window_seconds
        if isinstance(window, bool) or not isinstance(window, int | float):
            raise ValueError(f"window_seconds must be a number, got {type(window).__name__}")
        if not (math.isfinite(window) and 0 < window <= _MAX_WINDOW_SECONDS):
            raise ValueError(
                f"window_seconds must be > 0 and <= {_MAX_WINDOW_SECONDS:g} (one day), "
                f"got {window!r}"
            )
        object.__setattr__(self, "window_seconds", float(window))
        object.__setattr__(self, "actions", _check_actions(self.actions))


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _check_actions(actions: object) -> frozenset[str]:
    if isinstance(actions, str) or not isinstance(actions, Iterable):
        raise ValueError(
            "actions must be a collection of action names, e.g. frozenset({'user.login.failed'}), "
            f"got {actions!r}"
        )
    names = frozenset(actions)
    if not names:
        raise ValueError("actions must name at least one action")
    bad = sorted(repr(name) for name in names if not isinstance(name, str) or not name)
    if bad:
        raise ValueError(f"actions must be non-empty strings, got {', '.join(bad)}")
    return names


@dataclass(frozen=True, slots=True)
class BruteForceAlert:
    """Failures for one key reached the threshold within the window.

    ``count`` is the failures counted (the threshold, as an alert fires on reaching it);
    ``first_at_ns``/``last_at_ns`` are the occurred times (unix ns) of the oldest and newest of
    them and ``event_ids`` their ids, oldest first. ``ip``, ``account`` and ``org_id`` come from
    the event that triggered the alert.
    """

    dimension: Dimension
    key: str
    count: int
    window_seconds: float
    first_at_ns: int
    last_at_ns: int
    ip: str | None
    account: str | None
    org_id: str | None
    event_ids: tuple[str, ...]


class _KeyState:
    """Failures of one key: ``(time_ns, event_id)`` sorted by time, at most ``threshold``."""

    __slots__ = ("alerted", "entries", "reported_through")

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []
        self.alerted = False
        self.reported_through = _NEVER  # newest time covered by this key's last alert


def _time_of(entry: tuple[int, str]) -> int:
    return entry[0]


class BruteForceDetector:
    """Counts failed logins per client IP and per attempted account; see the module docstring.

    Thread-safe: ``observe`` may be called from several threads.
    """

    __slots__ = (
        "_actions",
        "_by_account",
        "_by_ip",
        "_lock",
        "_max_keys",
        "_policy",
        "_threshold",
        "_window_ns",
    )

    def __init__(self, policy: BruteForcePolicy = BruteForcePolicy()) -> None:
        if not isinstance(policy, BruteForcePolicy):
            raise TypeError(f"policy must be a BruteForcePolicy, got {type(policy).__name__}")
        self._policy = policy
        self._actions = policy.actions
        self._threshold = policy.threshold
        self._max_keys = policy.max_keys
        self._window_ns = round(policy.window_seconds * _NS_PER_S)
        self._by_ip: OrderedDict[str, _KeyState] = OrderedDict()
        self._by_account: OrderedDict[str, _KeyState] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def policy(self) -> BruteForcePolicy:
        """The policy this detector applies."""
        return self._policy

    def observe(self, event: AuditEvent) -> list[BruteForceAlert]:
        """Count ``event`` if it is a failure; return the alerts it triggers (0, 1 or 2)."""
        if event.action not in self._actions:
            return []
        ip = _ip_key(event.client)
        account = attempted_account(event)
        if ip is None and account is None:
            return []
        at_ns = event_time_ns(event)
        alerts: list[BruteForceAlert] = []
        with self._lock:
            if ip is not None:
                counted = self._count(self._by_ip, ip, at_ns, event.id)
                if counted is not None:
                    alerts.append(self._alert("ip", ip, counted, event, ip, account))
            if account is not None:
                counted = self._count(self._by_account, account, at_ns, event.id)
                if counted is not None:
                    alerts.append(self._alert("account", account, counted, event, ip, account))
        return alerts

    def tracked_keys(self) -> int:
        """The number of keys held across both dimensions (at most ``2 * max_keys``)."""
        with self._lock:
            return len(self._by_ip) + len(self._by_account)

    def _count(
        self, table: OrderedDict[str, _KeyState], key: str, at_ns: int, event_id: str
    ) -> tuple[tuple[int, str], ...] | None:
        """Record one failure for ``key``; return the failures to report if it now alerts."""
        state = table.get(key)
        if state is None:
            state = table[key] = _KeyState()
            if len(table) > self._max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        entries = state.entries
        item = (at_ns, event_id)
        if entries:
            cutoff = max(entries[-1][0], at_ns) - self._window_ns
            if at_ns < cutoff or item in entries:  # too old for the window, or a duplicate
                return None
            stale = bisect_left(entries, cutoff, key=_time_of)
            if stale:
                del entries[:stale]
            insort(entries, item)
            if len(entries) > self._threshold:
                del entries[0]  # older failures beyond the threshold are irrelevant
        else:
            entries.append(item)
        if len(entries) < self._threshold:
            state.alerted = False  # the burst is over: the next crossing alerts again
            return None
        if state.alerted or entries[0][0] <= state.reported_through:
            return None  # still the same burst, or some failures were reported already
        state.alerted = True
        state.reported_through = entries[-1][0]
        return tuple(entries)

    def _alert(
        self,
        dimension: Dimension,
        key: str,
        counted: tuple[tuple[int, str], ...],
        event: AuditEvent,
        ip: str | None,
        account: str | None,
    ) -> BruteForceAlert:
        return BruteForceAlert(
            dimension=dimension,
            key=key,
            count=len(counted),
            window_seconds=self._policy.window_seconds,
            first_at_ns=counted[0][0],
            last_at_ns=counted[-1][0],
            ip=ip,
            account=account,
            org_id=event.org_id,
            event_ids=tuple(event_id for _, event_id in counted),
        )


def _normalize(value: str | None) -> str | None:
    if not value:
        return None
    key = value.strip().lower()[:_MAX_KEY_LEN]
    return key or None


def _ip_key(client: ClientInfo | None) -> str | None:
    return None if client is None else _normalize(client.ip)


def attempted_account(event: AuditEvent) -> str | None:
    """The account a login attempt was for, normalized (stripped, lowercased, <= 320 chars).

    The target id when the target is a ``user``, else the actor's e-mail, else the actor's id;
    candidates that are empty after stripping are skipped. None when there is none.
    """
    target = event.target
    if target is not None and target.type == "user":
        account = _normalize(target.id)
        if account is not None:
            return account
    actor = event.actor
    return _normalize(actor.email) or _normalize(actor.id)


def event_time_ns(event: AuditEvent) -> int:
    """When ``event`` occurred, in unix ns.

    Parses ``occurred_at`` (RFC 3339; ``Z`` or a numeric offset, any fraction digits beyond
    nanoseconds are dropped); when malformed, falls back to the millisecond timestamp of a
    UUIDv7 ``id``, then to the current time.
    """
    parsed = _parse_rfc3339(event.occurred_at)
    if parsed is not None:
        return parsed
    if isinstance(event.id, str) and _UUID7.fullmatch(event.id):
        return int(event.id[:8] + event.id[9:13], 16) * 1_000_000
    return time.time_ns()


def _parse_rfc3339(value: object) -> int | None:
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    hours, minutes, seconds = int(hour), int(minute), int(second)
    if hours > 23 or minutes > 59 or seconds > 60:  # 60: a leap second
        return None
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    total = days * 86_400 + hours * 3_600 + minutes * 60 + seconds
    if sign is not None:
        offset_h, offset_m = int(off_h), int(off_m)
        if offset_h > 23 or offset_m > 59:
            return None
        offset = offset_h * 3_600 + offset_m * 60
        total += -offset if sign == "+" else offset
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return total * _NS_PER_S + nanos
