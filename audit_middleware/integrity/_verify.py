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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote, urlparse

import orjson

from audit_middleware._event import AuditEvent
from audit_middleware.integrity._digest import INTEGRITY_DIR, sha256_hex
from audit_middleware.integrity._keys import PublicKey, load_public_key
from audit_middleware.integrity._verify_chains import Chains, EventSource
from audit_middleware.integrity._verify_digests import DigestChecks, ObjectSummary
from audit_middleware.integrity._verify_report import (
    FINDING_KINDS,
    NOTICE_KINDS,
    Finding,
    Location,
    VerifyReport,
)

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

#: ``progress(done, total)``, called as objects and digests are checked.
ProgressCallback = Callable[[int, int], None]

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


# -- archives ------------------------------------------------------------------------------------


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
        self._objects: list[EventSource] = []
        self._chains = Chains(self.report, self._objects)
        self._digests = DigestChecks(self.report, self._chains, self._display, whole=self._whole)
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
        order = [(name, n) for name in sorted(digests) for n in sorted(digests[name])]
        rels = [digests[name][n] for name, n in order]
        for (name, n), (rel, body) in zip(order, self._read_ahead(rels), strict=True):
            self._tick()
            self._digests.check(name, n, self._display(rel), body, keys)
        self._digests.check_links(digests)

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
        obj = EventSource(key, None if match is None else match.group(1))
        obj.pending = self._now - mtime < self._grace
        index = len(self._objects)
        self._objects.append(obj)
        listed = self._digests.listed.get(rel, [])
        for item in listed:
            item.seen = True
        summaries: dict[str, ObjectSummary] = {}
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
            self._digests.compare(key, sha, body, item, summaries.get(item.stream))

    def _check_events(
        self,
        rel: str,
        value: str,
        day: str,
        index: int,
        body: bytes,
        summaries: dict[str, ObjectSummary],
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
            summary = summaries.setdefault(stream, ObjectSummary(first_seq=seq))
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
        for rel, items in self._digests.listed.items():
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
    objects = [EventSource(source, None)]
    chains = Chains(report, objects)
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
