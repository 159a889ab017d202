"""Brute-force detection: thresholds per IP and per account, bursts, windows, memory, threads."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit_middleware._bruteforce import (
    BruteForceAlert,
    BruteForceDetector,
    BruteForcePolicy,
    attempted_account,
    event_time_ns,
)
from audit_middleware._event import Actor, AuditEvent, ClientInfo, Target
from audit_middleware._ids import format_timestamp, uuid7

FAILED = "user.login.failed"
BASE_NS = 1_700_000_000 * 1_000_000_000
ANON = Actor(id=None, type="anonymous")


def at_ns(seconds: float) -> int:
    """``BASE_NS + seconds``, at the microsecond precision of ``occurred_at``."""
    return BASE_NS + round(seconds * 1_000_000) * 1_000


def failure(
    at: float = 0.0,
    *,
    ip: str | None = "203.0.113.7",
    account: str | None = "alice@example.com",
    action: str = FAILED,
    org_id: str | None = "org_1",
    actor: Actor = ANON,
    occurred_at: str | None = None,
    event_id: str | None = None,
) -> AuditEvent:
    """A failed login ``at`` seconds after BASE_NS for ``account`` (a user target) from ``ip``."""
    ns = at_ns(at)
    return AuditEvent(
        id=uuid7(ns) if event_id is None else event_id,
        occurred_at=format_timestamp(ns) if occurred_at is None else occurred_at,
        action=action,
        outcome="denied",
        actor=actor,
        org_id=org_id,
        target=None if account is None else Target("user", account),
        client=None if ip is None else ClientInfo(ip),
    )


def observe_all(detector: BruteForceDetector, events: list[AuditEvent]) -> list[BruteForceAlert]:
    return [alert for event in events for alert in detector.observe(event)]


def policy(**overrides: Any) -> BruteForcePolicy:
    options: dict[str, Any] = {"threshold": 3, "window_seconds": 60.0}
    options.update(overrides)
    return BruteForcePolicy(**options)


# --- threshold crossing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dimension", "key", "make"),
    [
        pytest.param(
            "ip",
            "198.51.100.1",
            lambda i: failure(i, ip="198.51.100.1", account=f"user{i}@example.com"),
            id="one-ip-many-accounts",
        ),
        pytest.param(
            "account",
            "bob@example.com",
            lambda i: failure(i, ip=f"198.51.100.{i}", account="bob@example.com"),
            id="one-account-many-ips",
        ),
    ],
)
def test_threshold_crossing_alerts_on_the_nth_failure(
    dimension: str, key: str, make: Callable[[int], AuditEvent]
) -> None:
    detector = BruteForceDetector(policy(threshold=5))
    results = [detector.observe(make(i)) for i in range(5)]
    assert results[:4] == [[], [], [], []]
    (alert,) = results[4]
    assert (alert.dimension, alert.key, alert.count) == (dimension, key, 5)


def test_one_event_can_alert_on_both_dimensions() -> None:
    detector = BruteForceDetector(policy(threshold=2))
    assert detector.observe(failure(0)) == []
    alerts = detector.observe(failure(1))
    assert [(a.dimension, a.key) for a in alerts] == [
        ("ip", "203.0.113.7"),
        ("account", "alice@example.com"),
    ]


def test_exactly_one_alert_per_burst() -> None:
    detector = BruteForceDetector(policy(threshold=5, window_seconds=60))
    # 100 failures, one per second: the window always holds >= 5 of them.
    alerts = observe_all(detector, [failure(i, account=None) for i in range(100)])
    assert len(alerts) == 1
    assert (alerts[0].first_at_ns, alerts[0].last_at_ns) == (at_ns(0), at_ns(4))
    assert len(alerts[0].event_ids) == 5


def test_new_alert_after_a_quiet_period() -> None:
    detector = BruteForceDetector(policy(threshold=3, window_seconds=60))
    first = observe_all(detector, [failure(i, account=None) for i in range(10)])
    # Quiet for longer than the window, then the attack resumes.
    second = observe_all(detector, [failure(200 + i, account=None) for i in range(10)])
    assert len(first) == len(second) == 1
    assert second[0].first_at_ns == at_ns(200)
    assert set(first[0].event_ids).isdisjoint(second[0].event_ids)


def test_failures_already_reported_do_not_count_again() -> None:
    # Burst at t=0,1,2 alerts; at t=61.5 the window [1.5, 61.5] holds 2 (burst over). The
    # failure at t=2 was reported, so the next alert needs three new failures.
    detector = BruteForceDetector(policy(threshold=3, window_seconds=60))
    events = [failure(t, account=None) for t in (0, 1, 2, 61.5, 61.6, 61.7)]
    results = [detector.observe(event) for event in events]
    assert [len(r) for r in results] == [0, 0, 1, 0, 0, 1]
    assert results[2][0].event_ids == tuple(e.id for e in events[:3])
    assert results[-1][0].event_ids == tuple(e.id for e in events[3:])  # the newest 3 only
    assert results[-1][0].first_at_ns == at_ns(61.5)


@pytest.mark.parametrize(
    ("spacing", "alerts"),
    [
        pytest.param(10.0, 1, id="span-equals-window-alerts"),  # the window is closed
        pytest.param(10.000001, 0, id="span-just-wider-than-window"),
        pytest.param(30.0, 0, id="slow-attack"),
    ],
)
def test_failures_spread_wider_than_the_window_never_alert(spacing: float, alerts: int) -> None:
    detector = BruteForceDetector(policy(threshold=3, window_seconds=20))
    events = [failure(i * spacing, account=f"u{i}") for i in range(3)]
    assert len(observe_all(detector, events)) == alerts
    # Kept up at the same pace: never more than 3 in a window, so no (further) alert.
    slow = [failure(i * spacing, account=f"u{i}") for i in range(3, 1000)]
    assert observe_all(detector, slow) == []


@pytest.mark.parametrize(
    "action",
    ["user.login.succeeded", "user.login.locked", "http.post", "USER.LOGIN.FAILED"],
)
def test_other_actions_are_ignored(action: str) -> None:
    detector = BruteForceDetector(policy(threshold=2))
    assert observe_all(detector, [failure(i, action=action) for i in range(10)]) == []
    assert detector.tracked_keys() == 0


def test_custom_actions_are_counted() -> None:
    detector = BruteForceDetector(policy(threshold=2, actions=frozenset({"user.mfa.failed"})))
    assert detector.observe(failure(0, action=FAILED)) == []
    assert detector.observe(failure(1, action="user.mfa.failed")) == []
    assert len(detector.observe(failure(2, action="user.mfa.failed"))) == 2


def test_events_without_ip_or_account() -> None:
    detector = BruteForceDetector(policy(threshold=2))
    assert observe_all(detector, [failure(i, ip=None, account=None) for i in range(5)]) == []
    assert detector.tracked_keys() == 0
    alerts = observe_all(detector, [failure(i, ip=None) for i in range(2)])
    assert [(a.dimension, a.ip) for a in alerts] == [("account", None)]


def test_duplicate_delivery_is_counted_once() -> None:
    detector = BruteForceDetector(policy(threshold=2))
    event = failure(0, account=None)
    assert observe_all(detector, [event, event, event]) == []
    assert len(detector.observe(failure(1, account=None))) == 1


# --- out of order -------------------------------------------------------------------------


def test_out_of_order_events_within_the_window_count() -> None:
    detector = BruteForceDetector(policy(threshold=4, window_seconds=60))
    events = [failure(t, account=None) for t in (30, 10, 50, 20)]
    results = [detector.observe(event) for event in events]
    assert [len(r) for r in results] == [0, 0, 0, 1]
    alert = results[-1][0]
    assert (alert.first_at_ns, alert.last_at_ns) == (at_ns(10), at_ns(50))
    assert alert.event_ids == tuple(events[i].id for i in (1, 3, 0, 2))  # oldest first


def test_late_event_older_than_the_window_is_ignored() -> None:
    detector = BruteForceDetector(policy(threshold=3, window_seconds=60))
    assert observe_all(detector, [failure(100, account=None), failure(101, account=None)]) == []
    # 40.9 < 101 - 60: outside the window relative to the newest failure seen for the IP.
    assert detector.observe(failure(40.9, account=None)) == []
    assert detector.observe(failure(41, account=None)) != []  # 41 is on the window's edge


# --- alert fields -------------------------------------------------------------------------


def test_alert_fields() -> None:
    detector = BruteForceDetector(policy(threshold=3, window_seconds=120))
    events = [
        failure(0.5, ip="192.0.2.1", account="a@example.com", org_id="org_a"),
        failure(1.25, ip="192.0.2.2", account="a@example.com", org_id="org_b"),
        failure(7.0, ip="192.0.2.3", account="A@Example.com ", org_id="org_c"),
    ]
    (alert,) = observe_all(detector, events)
    assert alert == BruteForceAlert(
        dimension="account",
        key="a@example.com",
        count=3,
        window_seconds=120.0,
        first_at_ns=at_ns(0.5),
        last_at_ns=at_ns(7.0),
        ip="192.0.2.3",
        account="a@example.com",
        org_id="org_c",
        event_ids=tuple(e.id for e in events),
    )


# --- attempted account --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "target", "expected"),
    [
        pytest.param(ANON, Target("user", "usr_1"), "usr_1", id="user-target"),
        pytest.param(
            Actor("usr_2", email="Eve@Example.com"),
            Target("user", " USR_1 "),
            "usr_1",
            id="target-wins-over-actor",
        ),
        pytest.param(
            Actor("usr_2", email="  Eve@Example.COM "),
            Target("api_key", "key_1"),
            "eve@example.com",
            id="non-user-target-falls-back-to-email",
        ),
        pytest.param(Actor("usr_2", email="eve@x.io"), None, "eve@x.io", id="email"),
        pytest.param(Actor("USR_2"), Target("user"), "usr_2", id="target-without-id"),
        pytest.param(Actor("usr_2", email="   "), Target("user", " "), "usr_2", id="blank"),
        pytest.param(ANON, None, None, id="none"),
        pytest.param(ANON, Target("org", "org_1"), None, id="non-user-target-only"),
        pytest.param(ANON, Target("user", "X" * 1000), "x" * 320, id="capped"),
    ],
)
def test_attempted_account(actor: Actor, target: Target | None, expected: str | None) -> None:
    event = failure(account=None, actor=actor)._replace(target=target)
    assert attempted_account(event) == expected


# --- time ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        pytest.param("1970-01-01T00:00:00.000000Z", 0, id="epoch"),
        pytest.param("2023-11-14T22:13:20.123456Z", BASE_NS + 123_456_000, id="library-format"),
        pytest.param("2023-11-14T22:13:20Z", BASE_NS, id="no-fraction"),
        pytest.param("2023-11-14T22:13:20.123456789123Z", BASE_NS + 123_456_789, id="long-frac"),
        pytest.param("2023-11-14T23:13:20.5+01:00", BASE_NS + 500_000_000, id="offset"),
        pytest.param("2023-11-14t21:43:20-00:30", BASE_NS, id="negative-offset"),
        pytest.param("2016-12-31T23:59:60Z", 1_483_228_800 * 10**9, id="leap-second"),
    ],
)
def test_event_time_ns_parses_rfc3339(occurred_at: str, expected: int) -> None:
    assert event_time_ns(failure(occurred_at=occurred_at)) == expected


@pytest.mark.parametrize(
    "occurred_at",
    [
        "",
        "yesterday",
        "2023-11-14 22:13:20Z",
        "2023-11-14T22:13:20",
        "2023-02-30T00:00:00Z",
        "2023-11-14T24:00:00Z",
        "2023-11-14T22:13:20.Z",
        "2023-11-14T22:13:20Z trailing",
        "2023-11-14T22:13:20+24:00",
        "\uff12023-11-14T22:13:20Z",  # a non-ASCII digit
    ],
)
def test_malformed_occurred_at_falls_back_to_the_id_timestamp(occurred_at: str) -> None:
    event = failure(7.5, occurred_at=occurred_at)
    assert event_time_ns(event) == at_ns(7.5) // 1_000_000 * 1_000_000


@pytest.mark.parametrize(
    "event_id",
    [
        "not-a-uuid",
        "018bd0a8-1c00-4000-8000-000000000000",  # UUIDv4-shaped: no timestamp in it
        "018bd0a81c0070008000000000000000",  # a v7 but not in canonical form
    ],
)
def test_malformed_time_and_id_fall_back_to_now(event_id: str) -> None:
    before = time.time_ns()
    ns = event_time_ns(failure(occurred_at="garbage", event_id=event_id))
    assert before <= ns <= time.time_ns()


def test_detector_uses_the_id_timestamp_for_malformed_occurred_at() -> None:
    detector = BruteForceDetector(policy(threshold=2, window_seconds=10))
    undated = [failure(t, account=None, occurred_at="bad") for t in (0, 30)]
    assert observe_all(detector, undated) == []  # 30 s apart according to the ids
    (alert,) = detector.observe(failure(31, account=None, occurred_at="bad"))
    assert alert.last_at_ns == at_ns(31)


# --- memory -------------------------------------------------------------------------------


def test_memory_is_bounded_under_key_rotation() -> None:
    detector = BruteForceDetector(policy(threshold=5, max_keys=1000))
    rng = random.Random(1234)
    for i in range(200_000):
        ns = at_ns(i / 1000)
        event = AuditEvent(
            id=uuid7(ns),
            occurred_at=format_timestamp(ns),
            action=FAILED,
            outcome="denied",
            actor=ANON,
            target=Target("user", f"user{rng.getrandbits(64):x}@example.com"),
            client=ClientInfo(".".join(str(rng.getrandbits(8)) for _ in range(4))),
        )
        assert detector.observe(event) == []
    assert detector.tracked_keys() <= 2000
    # Still detects once the flood has passed.
    alerts = observe_all(detector, [failure(300 + i, account=None) for i in range(5)])
    assert len(alerts) == 1


@pytest.mark.parametrize(
    ("ips", "alerts"),
    [
        pytest.param(["A", "A", "B", "C", "A"], 0, id="least-recently-seen-evicted"),
        pytest.param(["A", "B", "A", "C", "A"], 1, id="recently-seen-kept"),
    ],
)
def test_least_recently_seen_key_is_evicted(ips: list[str], alerts: int) -> None:
    detector = BruteForceDetector(policy(threshold=3, max_keys=2))
    events = [failure(i, ip=ip, account=None) for i, ip in enumerate(ips)]
    assert len(observe_all(detector, events)) == alerts
    assert detector.tracked_keys() == 2


# --- threads ------------------------------------------------------------------------------


def test_concurrent_observers_alert_exactly_once() -> None:
    # Four threads each send two failures for every one of 1000 accounts, in the same order, all
    # from one IP: every key crosses the threshold (4) once, under contention.
    detector = BruteForceDetector(policy(threshold=4, window_seconds=3600))
    accounts = [f"acct{k}@example.com" for k in range(1000)]
    barrier = threading.Barrier(4)
    alerts: list[BruteForceAlert] = []
    alerts_lock = threading.Lock()

    def run(worker: int) -> None:
        events = [
            failure(k + worker / 10 + repeat / 100, ip="192.0.2.99", account=account)
            for k, account in enumerate(accounts)
            for repeat in range(2)
        ]
        barrier.wait()
        for event in events:
            found = detector.observe(event)
            if found:
                with alerts_lock:
                    alerts.extend(found)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke races
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    expected = {("ip", "192.0.2.99"): 1} | {("account", account): 1 for account in accounts}
    assert Counter((a.dimension, a.key) for a in alerts) == expected
    assert all(a.count == len(a.event_ids) == 4 for a in alerts)
    assert detector.tracked_keys() == 1 + len(accounts)


# --- policy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"threshold": 1}, "threshold must be between 2 and", id="threshold-low"),
        pytest.param({"threshold": 10**6}, "threshold must be between", id="threshold-high"),
        pytest.param({"threshold": 2.5}, "threshold must be an int", id="threshold-float"),
        pytest.param({"threshold": True}, "threshold must be an int", id="threshold-bool"),
        pytest.param({"window_seconds": 0}, "window_seconds must be > 0", id="window-zero"),
        pytest.param({"window_seconds": -1.0}, "window_seconds must be > 0", id="window-neg"),
        pytest.param({"window_seconds": 86_401}, "one day", id="window-long"),
        pytest.param({"window_seconds": float("nan")}, "window_seconds", id="window-nan"),
        pytest.param({"window_seconds": float("inf")}, "window_seconds", id="window-inf"),
        pytest.param({"window_seconds": "60"}, "must be a number", id="window-str"),
        pytest.param({"actions": frozenset()}, "at least one action", id="actions-empty"),
        pytest.param({"actions": FAILED}, "collection of action names", id="actions-str"),
        pytest.param({"actions": frozenset({""})}, "non-empty strings", id="actions-blank"),
        pytest.param({"actions": frozenset({1})}, "non-empty strings", id="actions-int"),
        pytest.param({"max_keys": 0}, "max_keys must be between 1 and", id="max-keys-zero"),
        pytest.param({"max_keys": "10"}, "max_keys must be an int", id="max-keys-str"),
    ],
)
def test_policy_validation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BruteForcePolicy(**options)


def test_policy_defaults_and_coercion() -> None:
    default = BruteForcePolicy()
    assert (default.threshold, default.window_seconds, default.max_keys) == (10, 300.0, 10_000)
    assert default.actions == frozenset({FAILED})
    coerced = BruteForcePolicy(window_seconds=60, actions=["a.b", "a.b"])  # type: ignore[arg-type]
    assert coerced.window_seconds == 60.0
    assert isinstance(coerced.window_seconds, float)
    assert coerced.actions == frozenset({"a.b"})
    assert BruteForceDetector().policy == default


def test_detector_rejects_a_non_policy() -> None:
    with pytest.raises(TypeError, match="BruteForcePolicy"):
        BruteForceDetector({"threshold": 3})  # type: ignore[arg-type]


# --- property -----------------------------------------------------------------------------


@st.composite
def _failures(draw: st.DrawFn) -> list[tuple[str | None, str | None, int]]:
    """Failures as (ip, account, ms): mostly in order with bursts and pauses, some late."""
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", None]),
                st.sampled_from(["a", "b", "c", None]),
                st.integers(min_value=-3_000, max_value=12_000),  # ms since the previous one
            ),
            min_size=10,
            max_size=300,
        )
    )
    out, ms = [], 0
    for ip, account, gap in steps:
        ms += gap
        out.append((ip, account, ms))
    return out


@settings(database=None, deadline=None)
@given(
    failures=_failures(),
    threshold=st.integers(min_value=2, max_value=5),
    window_ms=st.integers(min_value=1, max_value=30_000),
    max_keys=st.integers(min_value=1, max_value=5),
)
def test_alerts_never_exceed_possible_crossings(
    failures: list[tuple[str | None, str | None, int]],
    threshold: int,
    window_ms: int,
    max_keys: int,
) -> None:
    window_ns = window_ms * 1_000_000
    detector = BruteForceDetector(
        BruteForcePolicy(threshold=threshold, window_seconds=window_ms / 1000, max_keys=max_keys)
    )
    fed: Counter[tuple[str, str]] = Counter()
    ids_of: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    reported: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    alerts: Counter[tuple[str, str]] = Counter()
    for ip, account, ms in failures:
        event = failure(ms / 1000, ip=ip, account=account)
        for dimension, value in (("ip", ip), ("account", account)):
            if value is not None:
                fed[dimension, value] += 1
                ids_of[dimension, value].add(event.id)
        for alert in detector.observe(event):
            key: tuple[str, str] = (alert.dimension, alert.key)
            alerts[key] += 1
            assert alert.count == threshold == len(alert.event_ids)
            assert 0 <= alert.last_at_ns - alert.first_at_ns <= window_ns
            assert set(alert.event_ids) <= ids_of[key]
            assert reported[key].isdisjoint(alert.event_ids)  # no failure reported twice
            reported[key].update(alert.event_ids)
        assert detector.tracked_keys() <= 2 * max_keys
    for key, count in alerts.items():
        assert count <= fed[key] // threshold


class _Model:
    """Brute-force restatement of one key's semantics: every accepted failure time is kept."""

    def __init__(self, threshold: int, window_ns: int) -> None:
        self.threshold, self.window_ns = threshold, window_ns
        self.times: list[int] = []
        self.alerted = False
        self.reported_through: int | None = None

    def observe(self, t: int) -> tuple[int, int] | None:
        if self.times and t < max(self.times) - self.window_ns:
            return None  # older than the window relative to the newest failure
        self.times.append(t)
        newest = max(self.times)
        in_window = sorted(s for s in self.times if s >= newest - self.window_ns)
        if len(in_window) < self.threshold:
            self.alerted = False
            return None
        counted = in_window[-self.threshold :]
        if self.alerted or (
            self.reported_through is not None and counted[0] <= self.reported_through
        ):
            return None
        self.alerted, self.reported_through = True, counted[-1]
        return counted[0], counted[-1]


@settings(database=None, deadline=None)
@given(
    failures=_failures(),
    threshold=st.integers(min_value=2, max_value=5),
    window_ms=st.integers(min_value=1, max_value=30_000),
)
def test_detector_matches_a_brute_force_model(
    failures: list[tuple[str | None, str | None, int]], threshold: int, window_ms: int
) -> None:
    """Alert timing and spans equal a model that keeps every failure (no eviction here).

    Complements the bound above, which also holds for one alert per ``threshold`` failures: this
    pins one alert per burst.
    """
    window_ns = window_ms * 1_000_000
    detector = BruteForceDetector(
        BruteForcePolicy(threshold=threshold, window_seconds=window_ms / 1000)
    )
    models: defaultdict[tuple[str, str], _Model] = defaultdict(lambda: _Model(threshold, window_ns))
    for ip, account, ms in failures:
        event = failure(ms / 1000, ip=ip, account=account)
        expected = []
        for dimension, value in (("ip", ip), ("account", account)):
            if value is not None:
                span = models[dimension, value].observe(at_ns(ms / 1000))
                if span is not None:
                    expected.append((dimension, value, *span))
        got = [(a.dimension, a.key, a.first_at_ns, a.last_at_ns) for a in detector.observe(event)]
        assert got == expected
