"""Verify an archive's tamper evidence: event hashes, per-stream hash chains and signed digests.

:func:`verify_archive` reads an archive (a directory or ``s3://bucket/prefix``, through
``pyarrow.fs`` like :mod:`audit_middleware.query`) and names every problem it finds, each with
its location (object key, line, stream, seq):

* per event: its recomputed hash (``modified_event``), its place in its object's org/day
  partition (``misplaced_event``) and, in JSON-lines objects, ascending ``seq``
  (``reordered_events``; Parquet rows are stored sorted by time, so their order carries no
  evidence and is not checked, and a moved row still changes the object's SHA-256);
* per stream, over all its events sorted by ``seq``: identical copies (same hash) are
  accepted; several different events at one ``seq`` are ``inserted_event`` for those that do
  not link into the chain; ``prev`` must be the predecessor's hash (``broken_chain``, saying
  "across a restart" when the predecessor was written by another process) and, when whole
  streams are verified, ``seq`` must have no gaps (``deleted_event``);
* per digest: signature (``unsigned_digest``, ``bad_signature``, ``unknown_key``), ``digest_seq``
  contiguity and the ``previous_digest`` link (``missing_digest``), every listed object present
  (``deleted_object``) with the listed SHA-256, size and events (``modified_object``), its
  ``chain_head`` present in the chain (``chain_head_mismatch``);
* every event object listed in some digest (``undigested_object``), except objects stored less
  than ``open_grace`` seconds ago, reported as ``pending_object`` notices.

Scope: with ``org_id``, ``since`` or ``until`` only part of each stream is read, so gaps in
``seq`` prove nothing and are not reported; those runs rely on each object's SHA-256 against
the signed digests (deleted and modified objects, undigested objects) plus the per-event and
adjacent-``seq`` checks. ``since``/``until`` select ``dt=`` day partitions (whole days).
``stream`` keeps whole-stream checks but still reads every object in scope, to find that
stream's events.

Memory: per event only ``(seq, hash, prev, object, line)`` is kept, in packed arrays (about 80
bytes per event); objects are read a few at a time, ahead, on worker threads (a million events
in 500 objects: about 25 s and 200 MB on one test machine).
"""

from __future__ import annotations

import gzip
import re
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote, urlparse

import orjson

from audit_middleware._event import AuditEvent
from audit_middleware.integrity._canonical import GENESIS, event_hash
from audit_middleware.integrity._digest import (
    INTEGRITY_DIR,
    parse_digest,
    sha256_hex,
    signature_status,
)
from audit_middleware.integrity._keys import PublicKey, load_public_key

__all__ = [
    "DEFAULT_OPEN_GRACE",
    "FINDING_KINDS",
    "NOTICE_KINDS",
    "Finding",
    "Location",
    "ProgressCallback",
    "VerifyReport",
    "verify_archive",
    "verify_events",
]

#: Seconds after upload during which an object may still be missing from every digest.
DEFAULT_OPEN_GRACE: Final = 2 * 3600.0

#: Every kind of finding (any finding makes ``audit-log verify`` exit 1).
FINDING_KINDS: Final = (
    "modified_event",
    "deleted_event",
    "inserted_event",
    "reordered_events",
    "deleted_object",
    "modified_object",
    "undigested_object",
    "missing_digest",
    "unsigned_digest",
    "bad_signature",
    "unknown_key",
    "broken_chain",
    "chain_head_mismatch",
    "misplaced_event",
    "unreadable_object",
)
#: Every kind of notice (informational: what could not be checked, or was checked weakly).
NOTICE_KINDS: Final = (
    "keys_from_archive",
    "crash_gap",
    "pending_object",
    "pending_events",
    "partial_scope",
    "unattributable_rows",
    "unexpected_file",
    "skipped_lines",
)

#: ``progress(done, total)``, called as objects and digests are checked.
ProgressCallback = Callable[[int, int], None]

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_DAY: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_OBJECT: Final = re.compile(r"org_id=([^/]+)/dt=([^/]+)/([^/]+)")
_DIGEST: Final = re.compile(r"digests/stream=([^/]+)/([^/]+)-([0-9]{10})\.json")
_KEYFILE: Final = re.compile(r"keys/([0-9a-f]{64})\.pem")
_WRITER: Final = re.compile(r"(.+)-[0-9]+$")
_SUFFIXES: Final = (".jsonl.gz", ".parquet")
_GLOBAL_ORG: Final = "_global"
_PARTITION_MAX: Final = 200
_EVENT_FIELDS: Final = frozenset(AuditEvent._fields)
_WRAPPERS: Final = ("message", "msg", "log", "@message", "body", "Body")
_READ_AHEAD: Final = 8
_GENESIS_BYTES: Final = bytes.fromhex(GENESIS)


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding is: object key, 1-based line (row), stream and seq (each if known)."""

    key: str | None = None
    line: int | None = None
    stream: str | None = None
    seq: int | None = None

    def __str__(self) -> str:
        parts = []
        if self.key is not None:
            parts.append(self.key if self.line is None else f"{self.key}:{self.line}")
        if self.stream is not None:
            parts.append(f"stream {self.stream}" + ("" if self.seq is None else f" seq {self.seq}"))
        return ", ".join(parts) or "archive"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (unknown parts are null)."""
        return {"key": self.key, "line": self.line, "stream": self.stream, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or, in :attr:`VerifyReport.notices`, one notice) with its location."""

    kind: str
    message: str
    location: Location = field(default_factory=Location)

    def __str__(self) -> str:
        return f"{self.kind}: {self.location}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"kind": self.kind, "message": self.message, "location": self.location.to_dict()}


@dataclass(slots=True)
class VerifyReport:
    """What a verification found, and how much it checked.

    ``complete`` is True when whole streams were read, so gaps in ``seq`` were checked.
    """

    findings: list[Finding] = field(default_factory=list)
    notices: list[Finding] = field(default_factory=list)
    objects: int = 0
    events: int = 0
    digests: int = 0
    streams: int = 0
    complete: bool = True

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.findings

    def kinds(self) -> dict[str, int]:
        """The number of findings of each kind found."""
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "complete": self.complete,
            "checked": {
                "objects": self.objects,
                "events": self.events,
                "digests": self.digests,
                "streams": self.streams,
            },
            "counts": self.kinds(),
            "findings": [f.to_dict() for f in self.findings],
            "notices": [n.to_dict() for n in self.notices],
        }

    def _add(self, kind: str, message: str, location: Location) -> None:
        self.findings.append(Finding(kind, message, location))

    def _note(self, kind: str, message: str, location: Location | None = None) -> None:
        self.notices.append(Finding(kind, message, location or Location()))


# -- per-stream state ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Object:
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


class _Chains:
    """Stream states and the chain checks over them, shared by archives and log copies."""

    def __init__(self, report: VerifyReport, objects: list[_Object]) -> None:
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


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


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


# -- archives ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Listed:
    digest_key: str
    stream: str
    entry: Mapping[str, Any]
    seen: bool = False


@dataclass(slots=True)
class _ObjectSummary:
    events: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last_hash: bytes = b""


def verify_archive(
    url: str,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    org_id: str | None = None,
    stream: str | None = None,
    public_keys: Mapping[str, PublicKey] | None = None,
    open_grace: float = DEFAULT_OPEN_GRACE,
    now: datetime | float | None = None,
    progress: ProgressCallback | None = None,
    s3_client_options: Mapping[str, Any] | None = None,
) -> VerifyReport:
    """Verify the archive at ``url`` (a directory, ``file://`` or ``s3://bucket/prefix``).

    ``public_keys`` maps fingerprints to the keys trusted to sign digests; None trusts the
    keys published in the archive itself (reported as a ``keys_from_archive`` notice).
    ``since``/``until`` (inclusive/exclusive, aware datetimes or RFC 3339) select day
    partitions; ``org_id`` one org's partitions; ``stream`` one stream. ``now`` (default: the
    clock) and ``open_grace`` decide which undigested objects are still pending.
    """
    if open_grace < 0:
        raise ValueError("open_grace must not be negative")
    if stream is not None and (not stream or "/" in stream):
        raise ValueError("stream must be a non-empty name without '/'")
    return _Verifier(
        url,
        since=since,
        until=until,
        org_id=org_id,
        stream=stream,
        public_keys=public_keys,
        open_grace=open_grace,
        now=now,
        progress=progress,
        s3_client_options=s3_client_options,
    ).run()


class _Verifier:
    def __init__(
        self,
        url: str,
        *,
        since: datetime | str | None,
        until: datetime | str | None,
        org_id: str | None,
        stream: str | None,
        public_keys: Mapping[str, PublicKey] | None,
        open_grace: float,
        now: datetime | float | None,
        progress: ProgressCallback | None,
        s3_client_options: Mapping[str, Any] | None,
    ) -> None:
        from audit_middleware.query import ArchiveReader, _check_org, _make_query

        reader = ArchiveReader(url, s3_client_options=s3_client_options)
        self._reader = reader
        self._fs: Any = reader._fs
        self._pafs: Any = reader._pafs
        self._root: str = reader._root
        parsed = urlparse(url)
        self._prefix = parsed.path.strip("/") if parsed.scheme == "s3" else ""
        org = None if org_id is None else _check_org(org_id)
        query = _make_query("search", org, None, None, None, None, since, until)
        self._first_day, self._last_day = query.first_day, query.last_day
        self._org_value = None if org is None else _partition_value(org)
        self._only = stream
        self._public_keys = public_keys
        self._grace = open_grace
        if now is None:
            self._now = time.time()
        elif isinstance(now, datetime):
            if now.tzinfo is None:
                raise ValueError("now must carry a timezone")
            self._now = now.timestamp()
        else:
            self._now = float(now)
        self._progress = progress
        self._whole = org is None and since is None and until is None
        self.report = VerifyReport(complete=self._whole)
        self._objects: list[_Object] = []
        self._chains = _Chains(self.report, self._objects)
        self._listed: dict[str, list[_Listed]] = {}
        self._done = 0
        self._total = 0

    # -- store access ----------------------------------------------------------------------------

    def _display(self, rel: str) -> str:
        return f"{self._prefix}/{rel}" if self._prefix else rel

    def _walk(self, rel_dir: str) -> list[tuple[str, Any]]:
        """``(relative path, FileInfo)`` of every file under ``rel_dir`` (recursively)."""
        base = f"{self._root}/{rel_dir}" if rel_dir else self._root
        selector = self._pafs.FileSelector(base, allow_not_found=True, recursive=True)
        files = []
        for info in self._fs.get_file_info(selector):
            if info.type != self._pafs.FileType.File or not info.path.startswith(self._root + "/"):
                continue
            files.append((info.path[len(self._root) + 1 :], info))
        files.sort(key=lambda item: item[0])
        return files

    def _read_ahead(self, rels: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
        """Each file's bytes (or the error reading it), in order, read a few ahead."""
        if not rels:
            return
        read = self._reader._read
        with ThreadPoolExecutor(max_workers=_READ_AHEAD, thread_name_prefix="audit-verify") as ex:
            pending: deque[tuple[str, Future[bytes]]] = deque()
            todo = iter(rels)
            for rel in todo:
                pending.append((rel, ex.submit(read, f"{self._root}/{rel}")))
                if len(pending) >= 2 * _READ_AHEAD:
                    break
            while pending:
                rel, future = pending.popleft()
                following = next(todo, None)
                if following is not None:
                    pending.append((following, ex.submit(read, f"{self._root}/{following}")))
                try:
                    yield rel, future.result()
                except Exception as exc:  # pyarrow raises OSError or its own ArrowException
                    yield rel, exc

    def _tick(self) -> None:
        self._done += 1
        if self._progress is not None:
            self._progress(self._done, self._total)

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> VerifyReport:
        report = self.report
        if self._fs.get_file_info(self._root).type == self._pafs.FileType.NotFound:
            raise ValueError(f"no archive at {self._reader.url} (no such directory or bucket)")
        objects = self._list_objects()
        digests = self._list_digests()
        keys = self._keys()
        self._total = len(objects) + sum(len(d) for d in digests.values())
        if self._progress is not None:
            self._progress(0, self._total)
        if not self._whole:
            report._note(
                "partial_scope",
                "only part of each stream was read (org or time range): gaps in seq were not "
                "checked; deleted events are found through the objects' digests",
            )
        self._check_digests(digests, keys)
        self._check_objects(objects)
        self._check_unseen()
        self._chains.check(leading_gaps=self._whole, inner_gaps=self._whole)
        report.objects = len(self._objects)
        report.streams = len(self._chains.streams)
        return report

    def _in_scope(self, org_value: str, day: str) -> bool:
        if self._org_value is not None and org_value != self._org_value:
            return False
        if self._first_day is not None and day < self._first_day:
            return False
        return self._last_day is None or day <= self._last_day

    def _list_objects(self) -> list[tuple[str, str, str, Any]]:
        """``(relative path, org partition value, day, FileInfo)`` of the event objects."""
        base = "" if self._org_value is None else f"org_id={self._org_value}"
        found = []
        for rel, info in self._walk(base):
            match = _OBJECT.fullmatch(rel)
            if match is None:
                continue
            value, day, name = match.groups()
            if name.startswith(".") or not name.endswith(_SUFFIXES) or not _DAY.fullmatch(day):
                continue
            if self._in_scope(value, day):
                found.append((rel, value, day, info))
        return found

    def _list_digests(self) -> dict[str, dict[int, str]]:
        """``{stream: {digest_seq: relative path}}``."""
        base = f"{INTEGRITY_DIR}/digests"
        if self._only is not None:
            base += f"/stream={self._only}"
        streams: dict[str, dict[int, str]] = {}
        for rel, _info in self._walk(base):
            match = _DIGEST.fullmatch(rel[len(INTEGRITY_DIR) + 1 :])
            if match is None or match.group(1) != match.group(2):
                self.report._note(
                    "unexpected_file",
                    "a file under the digests folder that is not named like a digest (ignored)",
                    Location(self._display(rel)),
                )
                continue
            streams.setdefault(match.group(1), {})[int(match.group(3))] = rel
        return streams

    def _keys(self) -> Mapping[str, PublicKey]:
        published: dict[str, PublicKey] = {}
        for rel, _info in self._walk(f"{INTEGRITY_DIR}/keys"):
            match = _KEYFILE.fullmatch(rel[len(INTEGRITY_DIR) + 1 :])
            key = None
            if match is not None:
                try:
                    key = load_public_key(self._reader._read(f"{self._root}/{rel}"))
                except (ValueError, OSError):
                    key = None
            if key is None or match is None or key.fingerprint != match.group(1):
                self.report._note(
                    "unexpected_file",
                    "not a public key named by its fingerprint (ignored)",
                    Location(self._display(rel)),
                )
                continue
            published[key.fingerprint] = key
        if self._public_keys is not None:
            return self._public_keys
        self.report._note(
            "keys_from_archive",
            f"signatures were checked against the {len(published)} public key(s) published in "
            "the archive itself; anyone who can write to the archive can replace them, so pin "
            "the keys you trust (--public-key)",
        )
        return published

    # -- digests ---------------------------------------------------------------------------------

    def _check_digests(
        self, digests: dict[str, dict[int, str]], keys: Mapping[str, PublicKey]
    ) -> None:
        report = self.report
        order = [(name, n) for name in sorted(digests) for n in sorted(digests[name])]
        stored: dict[tuple[str, int], tuple[str, Mapping[str, Any] | None]] = {}
        rels = [digests[name][n] for name, n in order]
        for (name, n), (rel, body) in zip(order, self._read_ahead(rels), strict=True):
            self._tick()
            key = self._display(rel)
            where = Location(key, None, name)
            if isinstance(body, Exception):
                report._add("unreadable_object", f"cannot read the digest ({body})", where)
                stored[name, n] = ("", None)
                continue
            report.digests += 1
            try:
                doc = parse_digest(body)
            except ValueError as exc:
                report._add("unreadable_object", f"not a digest: {exc}", where)
                stored[name, n] = (sha256_hex(body), None)
                continue
            # keep only the link: the object entries are kept in self._listed
            stored[name, n] = (sha256_hex(body), {"previous_digest": doc.get("previous_digest")})
            if doc.get("stream") != name or doc.get("digest_seq") != n:
                report._add(
                    "missing_digest",
                    f"stored as digest {n} of stream {name} but it is digest "
                    f"{doc.get('digest_seq')!r} of stream {doc.get('stream')!r}: the genuine "
                    "digest was replaced",
                    where,
                )
            status = signature_status(doc, keys)
            if status == "unsigned":
                report._add("unsigned_digest", "the digest carries no signature", where)
            elif status == "unknown-key":
                fingerprint = doc.get("signing", {}).get("key_fingerprint")
                report._add(
                    "unknown_key",
                    f"signed by key {fingerprint}, which is not a trusted key",
                    where,
                )
            elif status == "bad-signature":
                report._add(
                    "bad_signature", "the signature does not match the digest (altered)", where
                )
            self._record_digest(name, key, doc, trusted=status == "valid")
        for name in sorted(digests):
            self._check_digest_links(name, digests[name], stored)

    def _record_digest(self, name: str, key: str, doc: Mapping[str, Any], *, trusted: bool) -> None:
        state = self._chains.stream(name)
        gaps = doc.get("crash_gaps") or []
        for gap in gaps if isinstance(gaps, list) and trusted else []:
            after = gap.get("after_seq") if isinstance(gap, Mapping) else None
            through = gap.get("through_seq") if isinstance(gap, Mapping) else None
            if type(after) is int and type(through) is int and 0 <= after < through:
                state.crash_gaps.append((after + 1, through, key))
        head = doc.get("chain_head")
        if isinstance(head, Mapping) and _is_seq(head.get("seq")) and _is_hex(head.get("hash")):
            digest = bytes.fromhex(head["hash"])
            state.heads.append((head["seq"], digest, key))
            state.refs.setdefault(head["seq"], set()).add(digest)
            state.max_digested = max(state.max_digested, head["seq"])
        entries = doc.get("objects")
        if not isinstance(entries, list):
            entries = []
            self.report._add(
                "unreadable_object", "the digest has no object list", Location(key, None, name)
            )
        for index, entry in enumerate(entries, 1):
            if not _valid_entry(entry):
                self.report._add(
                    "unreadable_object",
                    f"object entry {index} of the digest is malformed",
                    Location(key, None, name),
                )
                continue
            state.refs.setdefault(entry["last_seq"], set()).add(bytes.fromhex(entry["last_hash"]))
            state.max_digested = max(state.max_digested, entry["last_seq"])
            rel = _relative(entry["key"])
            self._listed.setdefault(rel, []).append(_Listed(key, name, entry))

    def _check_digest_links(
        self,
        name: str,
        present: dict[int, str],
        stored: dict[tuple[str, int], tuple[str, Mapping[str, Any] | None]],
    ) -> None:
        report = self.report
        numbers = sorted(present)
        expected = 1 if self._whole else numbers[0]
        for n in numbers:
            key = self._display(present[n])
            if n > expected:
                report._add(
                    "missing_digest",
                    f"digest {_span(expected, n - 1)} of the stream "
                    f"{'is' if n - 1 == expected else 'are'} missing",
                    Location(key, None, name),
                )
            expected = n + 1
            _, doc = stored[name, n]
            if doc is None:
                continue
            link = doc.get("previous_digest")
            before = stored.get((name, n - 1))
            if n == 1:
                if link is not None:
                    report._add(
                        "missing_digest",
                        "the stream's first digest names a previous digest",
                        Location(key, None, name),
                    )
                continue
            if before is None:
                continue  # already reported as missing, or out of scope
            if (
                not isinstance(link, Mapping)
                or not isinstance(link.get("key"), str)
                or _relative(link["key"]) != present[n - 1]
                or link.get("sha256") != before[0]
            ):
                report._add(
                    "missing_digest",
                    f"previous_digest does not match the stored digest {n - 1} (it was "
                    "replaced or altered)",
                    Location(key, None, name),
                )

    # -- event objects ---------------------------------------------------------------------------

    def _check_objects(self, objects: list[tuple[str, str, str, Any]]) -> None:
        info_of = {rel: (value, day, info) for rel, value, day, info in objects}
        for rel, body in self._read_ahead([rel for rel, _, _, _ in objects]):
            self._tick()
            value, day, info = info_of[rel]
            self._check_object(rel, value, day, info, body)

    def _check_object(
        self, rel: str, value: str, day: str, info: Any, body: bytes | Exception
    ) -> None:
        report = self.report
        key = self._display(rel)
        mtime = info.mtime.timestamp() if info.mtime is not None else self._now
        name = rel.rsplit("/", 1)[-1]
        match = _WRITER.fullmatch(name.split(".", 1)[0])
        obj = _Object(key, None if match is None else match.group(1))
        obj.pending = self._now - mtime < self._grace
        index = len(self._objects)
        self._objects.append(obj)
        listed = self._listed.get(rel, [])
        for item in listed:
            item.seen = True
        summaries: dict[str, _ObjectSummary] = {}
        sha = ""
        if isinstance(body, Exception):
            report._add("unreadable_object", f"cannot read the object ({body})", Location(key))
        else:
            sha = sha256_hex(body)
            self._check_events(rel, value, day, index, body, summaries)
        if self._only is not None and not summaries and not listed:
            self._objects.pop()  # another stream's object
            return
        if not listed:
            if obj.pending:
                report._note(
                    "pending_object",
                    "not in any digest yet; stored within the open grace window",
                    Location(key),
                )
            else:
                report._add(
                    "undigested_object",
                    "the object is not listed in any digest (inserted, or its digest was deleted)",
                    Location(key, None, next(iter(summaries), None)),
                )
            return
        for item in listed:
            self._compare(key, sha, body, item, summaries.get(item.stream))

    def _compare(
        self,
        key: str,
        sha: str,
        body: bytes | Exception,
        item: _Listed,
        summary: _ObjectSummary | None,
    ) -> None:
        entry = item.entry
        where = Location(key, None, item.stream)
        if isinstance(body, Exception):
            return
        if sha != entry["sha256"] or len(body) != entry["bytes"]:
            self.report._add(
                "modified_object",
                f"the object's bytes differ from digest {item.digest_key} (sha256 {sha[:16]}..."
                f", {len(body)} bytes; signed: {str(entry['sha256'])[:16]}..., "
                f"{entry['bytes']} bytes)",
                where,
            )
            return
        summary = summary or _ObjectSummary()
        actual = (summary.events, summary.first_seq, summary.last_seq, summary.last_hash.hex())
        signed = (entry["events"], entry["first_seq"], entry["last_seq"], entry["last_hash"])
        if entry["events"] < 0:  # a writer that could not count them (an old spool file)
            actual = (entry["events"], *actual[1:])
        if actual != signed:
            self.report._add(
                "modified_object",
                f"digest {item.digest_key} describes events/first/last seq {signed[:3]} but the "
                f"object holds {actual[:3]}",
                where,
            )

    def _check_events(
        self,
        rel: str,
        value: str,
        day: str,
        index: int,
        body: bytes,
        summaries: dict[str, _ObjectSummary],
    ) -> None:
        report = self.report
        key = self._display(rel)
        parquet = rel.endswith(".parquet")
        rows = _parquet_rows(body, value) if parquet else _jsonl_rows(body)
        org = None if value == _GLOBAL_ORG else unquote(value)
        check_hash = not parquet or len(value) < _PARTITION_MAX
        if not check_hash:
            report._note(
                "unattributable_rows",
                "a Parquet object in a possibly truncated org partition: its rows' org cannot be "
                "restored, so their hashes cannot be recomputed (checked through the digest)",
                Location(key),
            )
        last_seq: dict[str, int] = {}
        for line, row in rows:
            if isinstance(row, str):
                report._add("unreadable_object", row, Location(key, line))
                continue
            if parquet:
                row = _with_org(row, org)
            placed = self._chains.add_event(row, index, line, self._only, check_hash=check_hash)
            if placed is not None or self._only is None:
                self._check_partition(row, value, day, key, line, parquet)
            if placed is None:
                continue
            stream, seq, digest = placed
            summary = summaries.setdefault(stream, _ObjectSummary(first_seq=seq))
            summary.events += 1
            summary.first_seq = min(summary.first_seq, seq)
            if seq >= summary.last_seq:
                summary.last_seq, summary.last_hash = seq, digest
            previous = last_seq.get(stream)
            if not parquet and previous is not None and seq < previous:
                report._add(
                    "reordered_events",
                    f"seq {seq} comes after seq {previous} in the object",
                    Location(key, line, stream, seq),
                )
            last_seq[stream] = seq if previous is None else max(previous, seq)

    def _check_partition(
        self, row: Mapping[str, Any], value: str, day: str, key: str, line: int, parquet: bool
    ) -> None:
        occurred = row.get("occurred_at")
        where = Location(key, line)
        if not isinstance(occurred, str) or occurred[:10] != day:
            self.report._add(
                "misplaced_event",
                f"occurred_at {str(occurred)[:40]!r} does not fall on the partition's day {day}",
                where,
            )
        if parquet:
            return
        org = row.get("org_id")
        expected = _GLOBAL_ORG if org is None else _partition_value(str(org))
        if expected != value:
            self.report._add(
                "misplaced_event",
                f"org_id {str(org)[:80]!r} does not belong in partition org_id={value[:80]}",
                where,
            )

    def _check_unseen(self) -> None:
        for rel, items in self._listed.items():
            match = _OBJECT.fullmatch(rel)
            if match is not None and not self._in_scope(match.group(1), match.group(2)):
                continue
            for item in items:
                if not item.seen:
                    self.report._add(
                        "deleted_object",
                        f"listed in digest {item.digest_key} but missing from the archive",
                        Location(self._display(rel), None, item.stream),
                    )


def _is_seq(value: object) -> bool:
    return type(value) is int and value >= 1


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def _valid_entry(entry: object) -> bool:
    return (
        isinstance(entry, Mapping)
        and isinstance(entry.get("key"), str)
        and _is_hex(entry.get("sha256"))
        and _is_hex(entry.get("last_hash"))
        and all(type(entry.get(k)) is int for k in ("bytes", "events", "first_seq", "last_seq"))
    )


def _relative(key: str) -> str:
    """A stored key without the archive prefix (from its ``org_id=`` or ``_integrity`` part on),
    so digests still match after an archive is copied under another prefix."""
    parts = key.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == INTEGRITY_DIR or (parts[i].startswith("org_id=") and i + 2 < len(parts)):
            return "/".join(parts[i:])
    return key


def _partition_value(org_id: str) -> str:
    from exporters.archive import _partition_value as writer_encoding

    return writer_encoding(org_id)


def _with_org(row: dict[str, Any], org: str | None) -> dict[str, Any]:
    from audit_middleware.query import _with_org as restore

    return restore(row, org)


def _jsonl_rows(body: bytes) -> list[tuple[int, dict[str, Any] | str]]:
    """``(line number, event dict or a problem)`` of a gzip JSON-lines object."""
    try:
        text = gzip.decompress(body)
    except (OSError, EOFError) as exc:
        return [(0, f"not a gzip object ({exc})")]
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for number, line in enumerate(text.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            rows.append((number, "the line is not JSON"))
            continue
        rows.append((number, row if isinstance(row, dict) else "the line is not a JSON object"))
    return rows


def _parquet_rows(body: bytes, value: str) -> list[tuple[int, dict[str, Any] | str]]:
    from exporters._parquet import decode_parquet

    try:
        rows = decode_parquet(body)
    except ImportError:
        raise
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for garbage
        return [(0, f"not an audit Parquet object ({type(exc).__name__})")]
    return [(number, row) for number, row in enumerate(rows, 1)]


# -- log copies ----------------------------------------------------------------------------------


def verify_events(
    lines: Iterable[str | bytes], *, source: str = "<events>", gaps: bool = True
) -> VerifyReport:
    """Verify a JSON-lines copy of events, e.g. exported from a log platform.

    Each line is an event dict (``AuditEvent.to_dict()``) or a structured-log line carrying the
    event's fields at top level (``exporters.log``: plus ``event``, ``level``, ``logger``,
    maybe ``timestamp``; keys that are not event fields are ignored), or a JSON object whose
    ``message``/``msg``/``log``/``@message`` string or ``body`` object (an OpenTelemetry log
    record's body is the whole event) holds such a line. Other lines are skipped (counted in
    a ``skipped_lines`` notice). Checks each event's hash and each stream's chain; with
    ``gaps``, missing seqs between the first and last seen of a stream are ``deleted_event``.
    Line order is not checked (log platforms reorder lines).
    """
    report = VerifyReport(complete=gaps)
    objects = [_Object(source, None)]
    chains = _Chains(report, objects)
    skipped = 0
    for number, raw in enumerate(lines, 1):
        row = _log_event(raw)
        if row is None:
            if raw.strip():
                skipped += 1
            continue
        chains.add_event(row, 0, number, None)
    chains.check(leading_gaps=False, inner_gaps=gaps)
    report.streams = len(chains.streams)
    report.objects = 1
    if skipped:
        report._note(
            "skipped_lines", f"{skipped} line(s) were not audit events (ignored)", Location(source)
        )
    return report


def _log_event(raw: str | bytes | Mapping[str, Any], depth: int = 0) -> dict[str, Any] | None:
    if isinstance(raw, Mapping):
        data: Any = raw
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(data, Mapping):
        return None
    if "integrity" in data and "id" in data:
        return {k: v for k, v in data.items() if k in _EVENT_FIELDS}
    if depth < 2:
        for wrapper in _WRAPPERS:
            inner = data.get(wrapper)
            if isinstance(inner, Mapping) or (
                isinstance(inner, str) and inner.lstrip().startswith("{")
            ):
                return _log_event(inner, depth + 1)
    return None
