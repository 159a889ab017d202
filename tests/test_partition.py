"""The archive's grouping of a batch by partition (org and day), in chain order."""

from __future__ import annotations

from typing import Any

from audit_middleware import Actor
from audit_middleware._event import AuditEvent
from audit_middleware._partition import group_by_partition


def _event(n: int, org: str | None, day: str, seq: int | None) -> AuditEvent:
    integrity: dict[str, Any] | None = None
    if seq is not None:
        integrity = {"stream": "s", "seq": seq, "prev": "p", "hash": f"h{seq}"}
    return AuditEvent(
        f"id-{n}",
        f"{day}T10:00:00.000000Z",
        "doc.updated",
        "success",
        Actor(f"u{n}"),
        org_id=org,
        integrity=integrity,
    )


def _ids(group: tuple[list[AuditEvent], list[bytes]]) -> tuple[list[str], list[bytes]]:
    return [e.id for e in group[0]], group[1]


def test_events_and_lines_are_grouped_by_org_and_day_in_order_of_appearance() -> None:
    batch = [
        _event(0, "org_a", "2026-11-27", 1),
        _event(1, None, "2026-11-27", 2),
        _event(2, "org_a", "2026-11-28", 3),
        _event(3, "org_a", "2026-11-27", 4),
    ]
    lines = [f"line-{i}\n".encode() for i in range(4)]
    groups = group_by_partition(batch, lines)
    assert list(groups) == [("org_a", "2026-11-27"), (None, "2026-11-27"), ("org_a", "2026-11-28")]
    assert _ids(groups["org_a", "2026-11-27"]) == (["id-0", "id-3"], [b"line-0\n", b"line-3\n"])
    assert _ids(groups[None, "2026-11-27"]) == (["id-1"], [b"line-1\n"])
    assert _ids(groups["org_a", "2026-11-28"]) == (["id-2"], [b"line-2\n"])


def test_a_group_out_of_chain_order_is_sorted_with_its_lines_stably() -> None:
    seqs = [7, None, 5, 6, None, 9, 8]
    batch = [_event(i, "org_a", "2026-11-27", seq) for i, seq in enumerate(seqs)]
    lines = [f"line-{i}\n".encode() for i in range(len(seqs))]
    ((events, grouped),) = group_by_partition(batch, lines).values()
    assert [e.id for e in events] == ["id-1", "id-4", "id-2", "id-3", "id-0", "id-6", "id-5"]
    assert grouped == [f"line-{e.id[3:]}\n".encode() for e in events]


def test_a_group_in_chain_order_keeps_its_lists() -> None:
    batch = [_event(i, "org_a", "2026-11-27", i + 1) for i in range(5)]
    lines = [b"x\n"] * 5
    ((events, _),) = group_by_partition(batch, lines).values()
    assert events == batch
