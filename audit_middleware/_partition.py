"""The archive's inner loop: a batch's events and lines grouped by partition (hot path).

Compiled with mypyc with the other hot modules: the archive exporter runs it for every event.
"""

from __future__ import annotations

from collections.abc import Sequence

from audit_middleware._event import AuditEvent

__all__ = ["Group", "PartitionKey", "group_by_partition"]

PartitionKey = tuple[str | None, str]  # (org_id, day of occurred_at: YYYY-MM-DD)
Group = tuple[list[AuditEvent], list[bytes]]  # events and their lines, index for index


def group_by_partition(
    batch: Sequence[AuditEvent], lines: Sequence[bytes]
) -> dict[PartitionKey, Group]:
    """``batch`` and its ``lines`` grouped by org and day, in order of first appearance; each
    group in chain order (``integrity["seq"]``, stable; events without one first) when its
    events are not in that order already."""
    groups: dict[PartitionKey, Group] = {}
    for i, event in enumerate(batch):
        key = (event.org_id, event.occurred_at[:10])
        group = groups.get(key)
        if group is None:
            groups[key] = ([event], [lines[i]])
        else:
            group[0].append(event)
            group[1].append(lines[i])
    for key, group in groups.items():
        if not _in_chain_order(group[0]):
            groups[key] = _sorted_by_seq(group)
    return groups


def _seq(event: AuditEvent) -> int:
    integrity = event.integrity
    if integrity is None:
        return 0
    seq: int = integrity["seq"]
    return seq


def _in_chain_order(events: list[AuditEvent]) -> bool:
    last = -1
    for event in events:
        seq = _seq(event)
        if seq < last:
            return False
        last = seq
    return True


def _sorted_by_seq(group: Group) -> Group:
    events, lines = group
    order = sorted(range(len(events)), key=lambda i: _seq(events[i]))
    return [events[i] for i in order], [lines[i] for i in order]
