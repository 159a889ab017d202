"""Per-stream hash chains: each stream's events packed by ``seq``, and the chain checks over
them (modified, deleted, inserted events, broken chains, chain heads), shared by archives and
log copies."""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from audit_middleware.integrity._canonical import GENESIS, event_hash
from audit_middleware.integrity._verify_report import Location, VerifyReport

__all__ = ["Chains", "EventSource", "is_hex"]

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_GENESIS_BYTES: Final = bytes.fromhex(GENESIS)


@dataclass(slots=True)
class EventSource:
    """An archive object (or a log copy) that events were read from."""

    key: str  # as displayed: the archive key (with the archive's prefix)
    writer: str | None
    pending: bool = False


class _Stream:
    """The chain positions of one stream's events, packed: ~80 bytes per event."""

    __slots__ = (
        "crash_gaps",
        "hashes",
        "heads",
        "lines",
        "max_digested",
        "name",
        "objs",
        "prevs",
        "refs",
        "seqs",
        "valid",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.seqs = array("q")
        self.objs = array("l")
        self.lines = array("l")
        self.hashes = bytearray()
        self.prevs = bytearray()
        self.valid = bytearray()
        #: seq -> hashes that digests name for it (chain heads, objects' last events)
        self.refs: dict[int, set[bytes]] = {}
        #: (seq, hash, digest key) of every digest's chain head
        self.heads: list[tuple[int, bytes, str]] = []
        self.max_digested = 0
        #: (first, last, digest key) of seq ranges a signed digest declares lost in a crash
        self.crash_gaps: list[tuple[int, int, str]] = []

    def add(self, seq: int, digest: bytes, prev: bytes, obj: int, line: int, ok: bool) -> None:
        self.seqs.append(seq)
        self.hashes += digest
        self.prevs += prev
        self.objs.append(obj)
        self.lines.append(line)
        self.valid.append(ok)

    def hash(self, i: int) -> bytes:
        return bytes(self.hashes[32 * i : 32 * i + 32])

    def prev(self, i: int) -> bytes:
        return bytes(self.prevs[32 * i : 32 * i + 32])


class Chains:
    """Stream states and the chain checks over them, shared by archives and log copies."""

    def __init__(self, report: VerifyReport, objects: list[EventSource]) -> None:
        self.report = report
        self.objects = objects
        self.streams: dict[str, _Stream] = {}

    def stream(self, name: str) -> _Stream:
        state = self.streams.get(name)
        if state is None:
            state = self.streams[name] = _Stream(name)
        return state

    def add_event(
        self,
        row: Mapping[str, Any],
        obj: int,
        line: int,
        only: str | None,
        *,
        check_hash: bool = True,
    ) -> tuple[str, int, bytes] | None:
        """Check one event's hash and record its place; ``(stream, seq, hash)`` or None."""
        report = self.report
        where = Location(self.objects[obj].key, line)
        integrity = row.get("integrity")
        if integrity is None:
            if only is None:
                report._add(
                    "inserted_event",
                    "event is not chained (no integrity fields): inserted, or written before "
                    "integrity was enabled",
                    where,
                )
            return None
        parsed = _integrity(integrity)
        if parsed is None:
            report._add("modified_event", "the event's integrity fields are malformed", where)
            return None
        stream, seq, prev, stored = parsed
        if only is not None and stream != only:
            return None
        where = Location(where.key, line, stream, seq)
        report.events += 1
        ok = not check_hash or event_hash(row, stream, seq, prev) == stored
        if not ok:
            report._add(
                "modified_event", "the event's content does not match its hash (altered)", where
            )
        digest = bytes.fromhex(stored)
        self.stream(stream).add(seq, digest, bytes.fromhex(prev), obj, line, ok)
        return stream, seq, digest

    # -- the chain walk --------------------------------------------------------------------------

    def check(self, *, leading_gaps: bool, inner_gaps: bool) -> None:
        """Check every stream's chain (see the module docstring)."""
        for name in sorted(self.streams):
            self._check_stream(self.streams[name], leading_gaps, inner_gaps)

    def _where(self, state: _Stream, i: int) -> Location:
        return Location(self.objects[state.objs[i]].key, state.lines[i], state.name, state.seqs[i])

    def _restart(self, state: _Stream, before: int, after: int) -> str:
        a = self.objects[state.objs[before]].writer
        b = self.objects[state.objs[after]].writer
        if a is None or b is None or a == b:
            return ""
        return f" across a restart from writer {a} to writer {b}"

    def _groups(self, state: _Stream) -> Iterator[tuple[int, list[int]]]:
        """``(seq, [event index])`` in seq order, one index per distinct event (read order).

        Copies with the same hash that both match it (or both do not) count as one event.
        """
        seqs = state.seqs
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        i, n = 0, len(order)
        while i < n:
            seq = seqs[order[i]]
            seen: set[tuple[bytes, int]] = set()
            distinct: list[int] = []
            while i < n and seqs[order[i]] == seq:
                k = order[i]
                identity = (state.hash(k), state.valid[k])
                if identity not in seen:
                    seen.add(identity)
                    distinct.append(k)
                i += 1
            yield seq, distinct

    def _check_stream(self, state: _Stream, leading_gaps: bool, inner_gaps: bool) -> None:
        report = self.report
        groups = self._groups(state)
        current = next(groups, None)
        last: int | None = None  # index of the chosen event at the previous seq
        last_seq = 0
        heads: dict[int, list[tuple[bytes, str]]] = {}
        for seq, digest, key in state.heads:
            heads.setdefault(seq, []).append((digest, key))
        while current is not None:
            following = next(groups, None)
            seq, candidates = current
            before = last if last is not None and last_seq == seq - 1 else None
            after = following[1] if following is not None and following[0] == seq + 1 else None
            chosen = self._choose(state, seq, candidates, before, after)
            for seq_head, key in heads.get(seq, ()):
                if all(state.hash(k) != seq_head for k in candidates):
                    report._add(
                        "chain_head_mismatch",
                        f"digest {key} names hash {seq_head.hex()[:16]}... as the chain head "
                        f"at seq {seq}, but the archive's event there has another hash",
                        self._where(state, chosen),
                    )
            if last is None:
                if seq == 1:
                    if state.prev(chosen) != _GENESIS_BYTES:
                        report._add(
                            "broken_chain",
                            "the stream's first event does not start from the genesis hash",
                            self._where(state, chosen),
                        )
                elif leading_gaps:
                    self._gap(state, None, chosen, 1, seq - 1)
            elif seq == last_seq + 1:
                if state.prev(chosen) != state.hash(last):
                    report._add(
                        "broken_chain",
                        f"prev does not match the hash of {self._place(state, last)}"
                        f"{self._restart(state, last, chosen)}: one of the two was altered (and "
                        "rehashed) or replaced",
                        self._where(state, chosen),
                    )
            elif inner_gaps:
                self._gap(state, last, chosen, last_seq + 1, seq - 1)
            last, last_seq = chosen, seq
            current = following
        if leading_gaps and state.max_digested > last_seq:
            first = last_seq + 1
            tail = None if last is None else self.objects[state.objs[last]].key
            report._add(
                "deleted_event",
                f"{_events(first, state.max_digested)} covered by digests but missing from the "
                "archive (after the last present event)",
                Location(tail, None, state.name, first),
            )

    def _gap(self, state: _Stream, before: int | None, after: int, first: int, last: int) -> None:
        """Report the missing seqs ``first..last``, except those a digest declared lost in a
        crash (notices)."""
        missing = [(first, last)]
        for low, high, key in state.crash_gaps:
            remaining = []
            for a, b in missing:
                if high < a or low > b:
                    remaining.append((a, b))
                    continue
                declared = (max(a, low), min(b, high))
                self.report._note(
                    "crash_gap",
                    f"{_events(*declared)} missing, declared lost in a writer crash by the "
                    f"signed digest {key}",
                    Location(None, None, state.name, declared[0]),
                )
                if a < low:
                    remaining.append((a, low - 1))
                if b > high:
                    remaining.append((high + 1, b))
            missing = remaining
        for a, b in missing:
            self._missing(state, before, after, a, b)

    def _missing(
        self, state: _Stream, before: int | None, after: int, first: int, last: int
    ) -> None:
        pending = self.objects[state.objs[after]].pending or (
            before is not None and self.objects[state.objs[before]].pending
        )
        at = Location(None, None, state.name, first)
        if pending:
            self.report._note(
                "pending_events",
                f"{_events(first, last)} not in the archive yet; a neighbouring event is in an "
                "object stored within the open grace window (an upload may be pending)",
                at,
            )
            return
        origin = "the stream's start" if before is None else self._place(state, before)
        restart = "" if before is None else self._restart(state, before, after)
        self.report._add(
            "deleted_event",
            f"{_events(first, last)} missing: the chain jumps from {origin} to "
            f"{self._place(state, after)}{restart}",
            at,
        )

    def _place(self, state: _Stream, i: int) -> str:
        return f"seq {state.seqs[i]} ({self.objects[state.objs[i]].key}:{state.lines[i]})"

    def _choose(
        self,
        state: _Stream,
        seq: int,
        candidates: list[int],
        before: int | None,
        after: list[int] | None,
    ) -> int:
        """The genuine event among ``candidates``; the others are reported as inserted."""
        if len(candidates) == 1:
            return candidates[0]
        successors = set() if after is None else {state.prev(k) for k in after}
        named = state.refs.get(seq, set())
        anchor = _GENESIS_BYTES if seq == 1 else None if before is None else state.hash(before)

        def score(k: int) -> int:
            digest = state.hash(k)
            return (
                8 * (digest in successors)
                + 4 * (digest in named)
                + 2 * state.valid[k]
                + (anchor is not None and state.prev(k) == anchor)
            )

        scores = [score(k) for k in candidates]
        best = max(scores)
        chosen = candidates[scores.index(best)]
        ambiguous = scores.count(best) > 1
        for k, value in zip(candidates, scores, strict=True):
            if k == chosen:
                continue
            if ambiguous and value == best:
                why = (
                    f"{len(candidates)} different events claim this seq and none can be told "
                    f"genuine (another is at {self._where(state, chosen)})"
                )
            else:
                why = (
                    "a second, different event claims this seq and does not link into the "
                    f"chain (the linked one is at {self._where(state, chosen)})"
                )
            self.report._add("inserted_event", why, self._where(state, k))
        return chosen


def _events(first: int, last: int) -> str:
    return f"event seq {first} is" if first == last else f"events seq {first}..{last} are"


def _integrity(value: object) -> tuple[str, int, str, str] | None:
    if not isinstance(value, Mapping):
        return None
    stream, seq, prev, digest = (value.get(k) for k in ("stream", "seq", "prev", "hash"))
    if (
        not isinstance(stream, str)
        or not stream
        or type(seq) is not int
        or seq < 1
        or not isinstance(prev, str)
        or not isinstance(digest, str)
        or not _HEX64.fullmatch(prev)
        or not _HEX64.fullmatch(digest)
    ):
        return None
    return stream, seq, prev, digest


def is_hex(value: object) -> bool:
    """Whether ``value`` is a hash: 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None
