"""``verify_archive`` / ``verify_events`` / ``audit-log verify`` on small synthetic archives.

The archives are built here with the writer's own pieces (``EventChain`` seals the events,
``make_digest`` writes signed digests), laid out exactly as ``exporters/archive.py`` lays them
out: gzip JSON lines (or Parquet) per org/day partition, one writer id per process start, a
stream continuing across restarts, a digest every few objects and one at shutdown.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from audit_middleware import Actor, AuditEvent, Target
from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware.cli import main
from audit_middleware.integrity._chain import ChainHead, EventChain
from audit_middleware.integrity._digest import (
    digest_key,
    key_object_key,
    make_digest,
    parse_digest,
    sha256_hex,
)
from audit_middleware.integrity._keys import SigningKey, generate_signing_key
from audit_middleware.integrity._verify import (
    FINDING_KINDS,
    Finding,
    Location,
    VerifyReport,
    verify_archive,
    verify_events,
)
from exporters.archive import _partition_value
from exporters.log import StructlogExporter
from tests.s3_server import CREDENTIALS, S3Endpoint

DAYS = ("2026-11-01", "2026-11-02")
ORGS = ("acme", "globex", "a/b", None)
ACTIONS = ("doc.updated", "doc.read", "user.login", "api_key.created")
LATER = datetime(2030, 1, 1, tzinfo=UTC)  # "now" long after every upload: nothing is pending
KEY = generate_signing_key()


# -- building archives ---------------------------------------------------------------------------


@dataclass
class Run:
    """One process start of a stream: its writer id, objects and event seqs."""

    writer: str
    objects: list[str] = field(default_factory=list)
    first_seq: int = 0
    last_seq: int = 0
    head: ChainHead = field(default_factory=lambda: ChainHead(""))


@dataclass
class Built:
    """A synthetic archive and what the tamper functions need to know about it."""

    root: Path | None
    prefix: str
    key: SigningKey | None
    streams: dict[str, list[Run]] = field(default_factory=dict)
    digests: dict[str, list[str]] = field(default_factory=dict)  # stream -> keys, in order
    objects: list[str] = field(default_factory=list)  # every object key, in write order
    fmt: str = "jsonl"
    counter: int = 0

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key

    def verify(self, **options: Any) -> VerifyReport:
        assert self.root is not None
        options.setdefault("now", LATER)
        if self.key is not None:
            options.setdefault("public_keys", {self.key.fingerprint: self.key.public})
        return verify_archive(str(self.root), **options)


def _event(rng: random.Random, org: str | None, day: str, n: int) -> AuditEvent:
    start = datetime.fromisoformat(f"{day}T00:00:00+00:00")
    ns = int(start.timestamp()) * 10**9 + n * 1_000_003_000 + rng.randrange(1000) * 1000
    return AuditEvent(
        id=uuid7(ns),
        occurred_at=format_timestamp(ns),
        action=rng.choice(ACTIONS),
        outcome="success",
        actor=Actor(f"u{rng.randrange(5)}", email="x@example.com"),
        org_id=org,
        target=Target("doc", f"d{rng.randrange(100)}"),
        metadata={"n": n, "ratio": rng.random(), "tags": ["a", "ü"], "empty": {}},
    )


def encode(lines: list[bytes], fmt: str) -> bytes:
    raw = b"".join(lines)
    if fmt == "parquet":
        from exporters._parquet import encode_parquet

        return encode_parquet(raw)
    return gzip.compress(raw, compresslevel=6, mtime=0)


class _StreamWriter:
    """Writes one stream's objects and digests, run after run (process starts)."""

    def __init__(
        self,
        built: Built,
        put: Callable[[str, bytes], None],
        rng: random.Random,
        stream: str,
        digest_every: int,
    ) -> None:
        self.built, self.put, self.rng, self.stream = built, put, rng, stream
        self.digest_every = digest_every
        self.previous: dict[str, str] | None = None
        self.undigested: list[dict[str, Any]] = []
        self.digest_keys = built.digests.setdefault(stream, [])
        self.runs = built.streams.setdefault(stream, [])
        self.signer: SigningKey | None = None

    def _key(self, name: str) -> str:
        return f"{self.built.prefix}/{name}" if self.built.prefix else name

    def seal(self, run: Run, events: list[AuditEvent]) -> None:
        """Store ``events`` (one partition) as the run's next object."""
        first, last = events[0].integrity, events[-1].integrity
        assert first is not None
        assert last is not None
        org_value = "_global" if events[0].org_id is None else _partition_value(events[0].org_id)
        suffix = ".parquet" if self.built.fmt == "parquet" else ".jsonl.gz"
        number = len(run.objects) + 1
        key = self._key(
            f"org_id={org_value}/dt={events[0].occurred_at[:10]}/{run.writer}-{number:010d}{suffix}"
        )
        body = encode([orjson.dumps(e.to_dict()) + b"\n" for e in events], self.built.fmt)
        self.put(key, body)
        run.objects.append(key)
        self.built.objects.append(key)
        self.undigested.append(
            {
                "key": key,
                "sha256": sha256_hex(body),
                "bytes": len(body),
                "events": len(events),
                "first_seq": first["seq"],
                "last_seq": last["seq"],
                "last_hash": last["hash"],
            }
        )
        if len(self.undigested) >= self.digest_every:
            self.write_digest()

    def write_digest(self) -> None:
        if not self.undigested:
            return
        n = len(self.digest_keys) + 1
        body = make_digest(
            stream=self.stream,
            digest_seq=n,
            previous=self.previous,
            created_at=f"2026-11-0{1 + n % 2}T{n % 24:02d}:00:00Z",
            objects=list(self.undigested),
            key=self.signer,
        )
        key = digest_key(self.built.prefix, self.stream, n)
        self.put(key, body)
        self.digest_keys.append(key)
        self.previous = {"key": key, "sha256": sha256_hex(body)}
        self.undigested.clear()

    def run(self, writer: str, start: ChainHead, events: int, orgs: tuple[str | None, ...]) -> Run:
        """One process start: seal ``events`` events in batches, object by partition."""
        run = Run(writer, first_seq=start.seq + 1)
        self.runs.append(run)
        chain = EventChain(lambda: start)
        segments: dict[tuple[str, str], list[AuditEvent]] = {}
        limits: dict[tuple[str, str], int] = {}
        made = 0
        while made < events:
            size = min(self.rng.randint(1, 6), events - made)
            batch = []
            for _ in range(size):
                self.built.counter += 1
                org, day = self.rng.choice(orgs), self.rng.choice(DAYS)
                batch.append(_event(self.rng, org, day, self.built.counter))
            made += size
            for event in chain.seal(batch):
                value = "_global" if event.org_id is None else _partition_value(event.org_id)
                partition = (value, event.occurred_at[:10])
                segments.setdefault(partition, []).append(event)
                limits.setdefault(partition, self.rng.randint(2, 6))
            for partition in [p for p, evs in segments.items() if len(evs) >= limits[p]]:
                limits.pop(partition)
                self.seal(run, segments.pop(partition))
        for partition in sorted(segments):
            self.seal(run, segments[partition])
        run.last_seq = chain.head.seq
        run.head = chain.head
        return run


def build_archive(
    put: Callable[[str, bytes], None],
    *,
    seed: int = 0,
    prefix: str = "",
    streams: int = 2,
    runs: int = 2,
    events_per_run: int = 24,
    digest_every: int = 3,
    key: SigningKey | None = KEY,
    keys_per_run: list[SigningKey | None] | None = None,
    fmt: str = "jsonl",
    killed_runs: frozenset[int] = frozenset(),
    bad_restart: bool = False,
    root: Path | None = None,
    orgs: tuple[str | None, ...] = ORGS,
) -> Built:
    """Write a synthetic archive through ``put(key, body)``; see the module docstring.

    ``killed_runs`` end without their shutdown digest (their last objects are digested by the
    next run, as after a SIGKILL and adoption). ``bad_restart`` makes every restart continue
    from a wrong hash (a writer that lost its chain state).
    """
    rng = random.Random(seed)
    built = Built(root, prefix, key, fmt=fmt)
    signers = keys_per_run or [key] * runs
    for signer in {s.fingerprint: s for s in signers if s is not None}.values():
        put(key_object_key(prefix, signer.fingerprint), signer.public.pem())
    for s in range(streams):
        stream = f"testhost-{rng.getrandbits(64):016x}"
        writer = _StreamWriter(built, put, rng, stream, digest_every)
        head = ChainHead(stream)
        for r in range(runs):
            writer.signer = signers[r]
            start = ChainHead(stream, head.seq, "f" * 64) if bad_restart and r else head
            name = f"testhost-{1000 + 10 * s + r}-{rng.getrandbits(24):06x}"
            head = writer.run(name, start, events_per_run, orgs).head
            if r not in killed_runs:
                writer.write_digest()  # at shutdown
        writer.write_digest()  # a killed last run: the next start would digest its objects
    return built


def local_archive(root: Path, **options: Any) -> Built:
    def put(key: str, body: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    return build_archive(put, root=root, **options)


def kinds(report: VerifyReport) -> set[str]:
    return {finding.kind for finding in report.findings}


def read_lines(path: Path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(gzip.compress(b"".join(lines), mtime=0))


@pytest.fixture
def archive(tmp_path: Path) -> Built:
    return local_archive(tmp_path / "archive", seed=1)


# -- clean archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_untouched_archive_verifies_clean(tmp_path: Path, fmt: str) -> None:
    built = local_archive(tmp_path, seed=2, fmt=fmt, streams=3, runs=3)
    report = built.verify()
    assert report.findings == []
    assert report.ok
    assert report.complete
    assert report.objects == len(built.objects)
    assert report.events == 3 * 3 * 24
    assert report.digests == sum(len(d) for d in built.digests.values())
    assert report.streams == 3
    assert report.notices == []


def test_keys_from_the_archive_are_a_notice(archive: Built) -> None:
    report = verify_archive(str(archive.root), now=LATER)
    assert report.ok
    assert [n.kind for n in report.notices] == ["keys_from_archive"]
    assert "pin" in report.notices[0].message


def test_empty_and_missing_archives(tmp_path: Path) -> None:
    report = verify_archive(str(tmp_path), public_keys={})
    assert report.ok
    assert report.objects == report.events == report.digests == 0
    with pytest.raises(ValueError, match="no archive at"):  # a typo must not verify clean
        verify_archive(str(tmp_path / "missing"))
    assert main(["verify", str(tmp_path / "missing")]) == 2


def test_chain_survives_a_kill_and_restart(tmp_path: Path) -> None:
    """A run killed before its shutdown digest: the next run's first digest lists its objects."""
    built = local_archive(tmp_path, seed=3, runs=3, killed_runs=frozenset({0, 1}))
    assert built.verify().findings == []


def test_restart_that_lost_its_chain_state_is_a_broken_chain(tmp_path: Path) -> None:
    built = local_archive(tmp_path, seed=4, streams=1, runs=2, bad_restart=True)
    report = built.verify()
    assert kinds(report) == {"broken_chain"}
    (finding,) = report.findings
    stream = next(iter(built.streams))
    a, b = built.streams[stream]
    assert f"across a restart from writer {a.writer} to writer {b.writer}" in finding.message
    assert finding.location.seq == b.first_seq
    assert finding.location.stream == stream
    assert finding.location.key is not None
    assert b.writer in finding.location.key


def test_pending_objects_within_the_grace_window(tmp_path: Path) -> None:
    built = local_archive(tmp_path, seed=5, streams=1, runs=1, killed_runs=frozenset({0}))
    # the killed run's trailing objects were digested by write_digest at the end: drop that
    last_digest = built.digests[next(iter(built.streams))][-1]
    listed = {o["key"] for o in parse_digest(built.path(last_digest).read_bytes())["objects"]}
    built.path(last_digest).unlink()
    fresh = built.verify(now=None)  # files were just written: within the default two hours
    assert fresh.ok
    assert {n.location.key for n in fresh.notices if n.kind == "pending_object"} == listed
    late = built.verify()
    assert kinds(late) == {"undigested_object"}
    assert {f.location.key for f in late.findings} == listed
    assert built.verify(now=None, open_grace=0).findings == late.findings


def test_unsigned_digests(tmp_path: Path) -> None:
    built = local_archive(tmp_path, seed=6, key=None)
    report = built.verify(public_keys={})
    assert kinds(report) == {"unsigned_digest"}
    assert len(report.findings) == report.digests


def test_key_rotation_keeps_old_digests_verifiable(tmp_path: Path) -> None:
    old, new = generate_signing_key(), generate_signing_key()
    built = local_archive(tmp_path, seed=7, runs=2, keys_per_run=[old, new])
    both = {k.fingerprint: k.public for k in (old, new)}
    assert built.verify(public_keys=both).findings == []
    assert verify_archive(str(tmp_path), now=LATER).ok  # both keys are published
    only_new = built.verify(public_keys={new.fingerprint: new.public})
    assert kinds(only_new) == {"unknown_key"}
    assert all(old.fingerprint in f.message for f in only_new.findings)


# -- single tampers, precisely located -----------------------------------------------------------


def test_modified_event_is_located(archive: Built) -> None:
    key = archive.objects[4]
    lines = read_lines(archive.path(key))
    row = orjson.loads(lines[0])
    row["actor"]["id"] = "mallory"
    lines[0] = orjson.dumps(row) + b"\n"
    write_lines(archive.path(key), lines)
    report = archive.verify()
    assert kinds(report) == {"modified_event", "modified_object"}
    event = next(f for f in report.findings if f.kind == "modified_event")
    assert event.location == Location(key, 1, row["integrity"]["stream"], row["integrity"]["seq"])
    assert str(event.location) == (
        f"{key}:1, stream {row['integrity']['stream']} seq {row['integrity']['seq']}"
    )


def test_deleted_event_names_the_gap(archive: Built) -> None:
    key = next(k for k in archive.objects if len(read_lines(archive.path(k))) >= 3)
    lines = read_lines(archive.path(key))
    gone = orjson.loads(lines[1])["integrity"]
    write_lines(archive.path(key), lines[:1] + lines[2:])
    report = archive.verify()
    assert kinds(report) == {"deleted_event", "modified_object"}
    deleted = next(f for f in report.findings if f.kind == "deleted_event")
    assert deleted.location.seq == gone["seq"]
    assert deleted.location == Location(None, None, gone["stream"], gone["seq"])
    assert f"event seq {gone['seq']} is missing: the chain jumps from seq" in deleted.message


def test_partial_scope_relies_on_digests(archive: Built) -> None:
    key = next(k for k in archive.objects if "org_id=acme/" in k and "dt=2026-11-01" in k)
    lines = read_lines(archive.path(key))
    write_lines(archive.path(key), lines[1:])
    acme = archive.verify(org_id="acme")
    assert not acme.complete
    assert kinds(acme) == {"modified_object"}
    assert [n.kind for n in acme.notices] == ["partial_scope"]
    assert archive.verify(org_id="globex").ok
    day = archive.verify(since="2026-11-01T00:00:00Z", until="2026-11-02T00:00:00Z")
    assert kinds(day) == {"modified_object"}
    assert archive.verify(since="2026-11-02T00:00:00Z").ok
    assert kinds(archive.verify()) == {"modified_object", "deleted_event"}


def test_deleted_object_in_scope(archive: Built) -> None:
    key = next(k for k in archive.objects if "org_id=a%2Fb/" in k)
    archive.path(key).unlink()
    report = archive.verify(org_id="a/b")
    assert kinds(report) == {"deleted_object"}
    assert report.findings[0].location.key == key
    assert archive.verify(org_id="acme").ok


def test_stream_scope(archive: Built) -> None:
    first, second = archive.streams
    report = archive.verify(stream=first)
    assert report.ok
    assert report.complete
    assert report.streams == 1
    assert report.events == 2 * 24
    assert report.objects == sum(len(run.objects) for run in archive.streams[first])
    key = archive.streams[second][0].objects[0]
    archive.path(key).unlink()
    assert archive.verify(stream=first).ok
    assert "deleted_object" in kinds(archive.verify(stream=second))


def test_misplaced_event(archive: Built) -> None:
    source = next(k for k in archive.objects if "org_id=acme/" in k)
    target = next(k for k in archive.objects if "org_id=globex/" in k)
    lines = read_lines(archive.path(source))
    moved = lines.pop()
    write_lines(archive.path(source), lines)
    write_lines(archive.path(target), [*read_lines(archive.path(target)), moved])
    report = archive.verify()
    assert "misplaced_event" in kinds(report)
    assert kinds(report) <= {"misplaced_event", "modified_object", "reordered_events"}


def test_replaced_digest_is_missing(archive: Built) -> None:
    keys = archive.digests[next(iter(archive.streams))]
    archive.path(keys[2]).write_bytes(archive.path(keys[1]).read_bytes())
    report = archive.verify()
    assert "missing_digest" in kinds(report)
    assert any(f.location.key == keys[2] for f in report.findings)


def test_chain_head_mismatch(tmp_path: Path) -> None:
    """A digest (correctly signed) naming a head the archive does not hold."""
    built = local_archive(tmp_path, seed=8, streams=1, runs=1)
    stream = next(iter(built.streams))
    key = built.digests[stream][0]
    doc = parse_digest(built.path(key).read_bytes())
    entries = doc["objects"]
    top = max(entries, key=lambda o: o["last_seq"])
    top["last_hash"] = "e" * 64
    body = make_digest(
        stream=stream,
        digest_seq=1,
        previous=None,
        created_at=doc["created_at"],
        objects=entries,
        key=KEY,
    )
    built.path(key).write_bytes(body)
    report = built.verify()
    assert "chain_head_mismatch" in kinds(report)
    assert kinds(report) <= {"chain_head_mismatch", "modified_object", "missing_digest"}


def test_unreadable_objects(archive: Built) -> None:
    key = archive.objects[0]
    archive.path(key).write_bytes(b"not gzip")
    lines = read_lines(archive.path(archive.objects[1]))
    write_lines(archive.path(archive.objects[1]), [b"{not json\n", *lines])
    digest = archive.digests[next(iter(archive.streams))][1]
    archive.path(digest).write_bytes(b"[]")
    report = archive.verify()
    unreadable = {f.location.key for f in report.findings if f.kind == "unreadable_object"}
    assert unreadable == {key, archive.objects[1], digest}


def test_unchained_event_is_reported(archive: Built) -> None:
    key = archive.objects[2]
    lines = read_lines(archive.path(key))
    row = orjson.loads(lines[0])
    row["integrity"] = None
    row["id"] = uuid7()
    write_lines(archive.path(key), [orjson.dumps(row) + b"\n", *lines])
    report = archive.verify()
    assert "inserted_event" in kinds(report)
    assert any("not chained" in f.message for f in report.findings)


def test_archive_copied_under_another_prefix(tmp_path: Path) -> None:
    """Digests name keys with the writer's prefix; a copy elsewhere still verifies."""
    store = tmp_path / "bucket"
    built = local_archive(store, seed=9, prefix="audit/v1")
    report = verify_archive(str(store / "audit" / "v1"), now=LATER)
    assert report.ok
    assert report.objects == len(built.objects)


def test_progress_callback(archive: Built) -> None:
    seen: list[tuple[int, int]] = []
    archive.verify(progress=lambda done, total: seen.append((done, total)))
    total = len(archive.objects) + sum(len(d) for d in archive.digests.values())
    assert seen[0] == (0, total)
    assert seen[-1] == (total, total)
    assert [done for done, _ in seen] == list(range(total + 1))


def test_argument_checks(archive: Built) -> None:
    with pytest.raises(ValueError, match="timezone"):
        archive.verify(since="2026-11-01T00:00:00")
    with pytest.raises(ValueError, match="open_grace"):
        archive.verify(open_grace=-1)
    with pytest.raises(ValueError, match="stream"):
        archive.verify(stream="a/b")
    with pytest.raises(ValueError, match="org_id"):
        archive.verify(org_id="")


def test_report_json_shape(archive: Built) -> None:
    archive.path(archive.objects[0]).unlink()
    data = json.loads(json.dumps(archive.verify().to_dict()))
    assert data["ok"] is False
    assert data["checked"]["objects"] == len(archive.objects) - 1
    assert set(data["counts"]) <= set(FINDING_KINDS)
    assert data["findings"][0]["location"]["key"] == archive.objects[0]
    assert str(Finding("x", "y")) == "x: archive: y"


# -- log copies ----------------------------------------------------------------------------------


def _sealed_events(n: int, seed: int = 0) -> list[AuditEvent]:
    rng = random.Random(seed)
    chain = EventChain()
    return chain.seal([_event(rng, rng.choice(ORGS), DAYS[0], i) for i in range(n)])


def _log_lines(events: list[AuditEvent], **options: Any) -> list[bytes]:
    out = io.BytesIO()
    exporter = StructlogExporter(output=out, **options)
    exporter.export(events)
    return out.getvalue().splitlines()


def test_verify_events_from_structlog_output() -> None:
    events = _sealed_events(30)
    lines = _log_lines(events, processors=[structlog.processors.TimeStamper(fmt="iso")])
    assert orjson.loads(lines[0])["event"] == events[0].action
    report = verify_events([*lines, lines[3], b"", b"plain text", b'{"level": "info"}'])
    assert report.ok
    assert report.events == 31
    assert report.streams == 1
    assert [n.kind for n in report.notices] == ["skipped_lines"]


def test_verify_events_finds_tampering() -> None:
    lines = _log_lines(_sealed_events(20))
    row = orjson.loads(lines[5])
    row["outcome"] = "failure"
    tampered = [*lines[:5], orjson.dumps(row), *lines[6:12], *lines[13:]]
    report = verify_events(tampered, source="audit.log")
    assert kinds(report) == {"modified_event", "deleted_event"}
    modified = next(f for f in report.findings if f.kind == "modified_event")
    assert modified.location.key == "audit.log"
    assert modified.location.line == 6
    assert verify_events(lines[3:17]).ok  # a window of the log: no leading/trailing gaps
    assert "deleted_event" not in kinds(verify_events(tampered, gaps=False))


def test_verify_events_inside_a_log_platform_wrapper() -> None:
    events = _sealed_events(5)
    wrapped = [json.dumps({"message": e.decode(), "host": "h"}) for e in _log_lines(events)]
    assert verify_events(wrapped).events == 5
    dicts = [orjson.dumps(e.to_dict()) for e in events]
    assert verify_events(dicts).ok
    otel = [orjson.dumps({"body": e.to_dict(), "attributes": {"audit.action": 1}}) for e in events]
    assert verify_events(otel).events == 5


# -- S3 ------------------------------------------------------------------------------------------


def _s3_archive(endpoint: S3Endpoint, client: Any, **options: Any) -> Built:
    client.create_bucket(Bucket="audit-verify")

    def put(key: str, body: bytes) -> None:
        client.put_object(Bucket="audit-verify", Key=key, Body=body)

    return build_archive(put, prefix="audit", **options)


def _s3_options(endpoint: S3Endpoint) -> dict[str, Any]:
    return {
        "endpoint_override": f"127.0.0.1:{endpoint.port}",
        "scheme": "http",
        "access_key": CREDENTIALS["aws_access_key_id"],
        "secret_key": CREDENTIALS["aws_secret_access_key"],
        "region": "us-east-1",
    }


def test_s3_archive(endpoint: S3Endpoint, s3: Any, tmp_path: Path) -> None:
    built = _s3_archive(endpoint, s3, seed=10)
    pinned = {KEY.fingerprint: KEY.public}
    options = _s3_options(endpoint)
    url = "s3://audit-verify/audit"
    report = verify_archive(url, public_keys=pinned, now=LATER, s3_client_options=options)
    assert report.ok
    assert report.objects == len(built.objects)
    assert report.events == 96
    # every object was stored just now: within the grace window, an undigested one is pending
    gone = built.digests[next(iter(built.streams))][-1]
    s3.delete_object(Bucket="audit-verify", Key=gone)
    fresh = verify_archive(url, public_keys=pinned, s3_client_options=options)
    assert fresh.ok
    assert any(n.kind == "pending_object" for n in fresh.notices)
    s3.delete_object(Bucket="audit-verify", Key=built.objects[3])
    report = verify_archive(url, public_keys=pinned, now=LATER, s3_client_options=options)
    assert {"deleted_object", "undigested_object"} <= kinds(report)
    assert any(f.location.key == built.objects[3] for f in report.findings)


def test_cli_over_s3(endpoint: S3Endpoint, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _s3_archive(endpoint, s3, seed=11)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    assert main(["verify", "s3://audit-verify/audit", "--no-progress"]) == 0
    assert main(["verify", "s3://no-such-bucket/audit", "--no-progress"]) == 2


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "signing.pem"
    path.write_bytes(KEY.public.pem())
    return path


def test_cli_clean(archive: Built, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["verify", str(archive.root), "--public-key", str(key_file), "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 0
    assert "OK: no findings." in out
    assert f"checked {len(archive.objects)} object(s), 96 event(s)" in out
    assert err == ""


def test_cli_findings(archive: Built, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive.path(archive.objects[5]).unlink()
    status = main(["verify", str(archive.root), "--public-key", str(key_file)])
    out, _ = capsys.readouterr()
    assert status == 1
    assert "FAILED:" in out
    assert f"deleted_object: {archive.objects[5]}" in out


def test_cli_json(archive: Built, capsys: pytest.CaptureFixture[str]) -> None:
    archive.path(archive.objects[0]).write_bytes(b"x")
    assert main(["verify", str(archive.root), "--json", "--open-grace", "0"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {"unreadable_object", "modified_object"} <= set(data["counts"])
    assert data["notices"][0]["kind"] == "keys_from_archive"


def test_cli_progress_bar(archive: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(archive.root), "--progress", "--open-grace", "0"]) == 0
    err = capsys.readouterr().err
    total = len(archive.objects) + sum(len(d) for d in archive.digests.values())
    assert err.startswith("\rverifying [")
    assert err.endswith(f"[{'#' * 30}] {total}/{total} objects\n")


def test_cli_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.log"
    lines = _log_lines(_sealed_events(8))
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["verify", "--events", str(path)]) == 0
    path.write_bytes(b"\n".join(lines[:3] + lines[4:]) + b"\n")
    assert main(["verify", "--events", str(path)]) == 1
    assert "deleted_event: " in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["verify"],
        ["verify", "dir", "--events", "x"],
        ["verify", "--events", "x", "--org", "acme"],
        ["verify", "DIR", "--since", "yesterday"],
        ["verify", "DIR", "--public-key", "/nonexistent.pem"],
        ["verify", "DIR", "--open-grace", "-1"],
        ["verify", "DIR", "--progress", "--no-progress"],
        ["verify", "ftp://host/x"],
    ],
)
def test_cli_usage_errors(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("audit-log")


def test_cli_rejects_a_bad_public_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    assert main(["verify", str(tmp_path), "--public-key", str(bad)]) == 2


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str], archive: Built) -> None:
    out_file = tmp_path / "keys" / "digest.pem"
    out_file.parent.mkdir()
    assert main(["keygen", "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    key = SigningKey.from_text(out_file.read_bytes())
    public = Path(f"{out_file}.pub.pem")
    assert f"fingerprint: {key.fingerprint}" in printed
    assert str(public) in printed
    from audit_middleware.integrity._keys import load_public_key

    assert load_public_key(public.read_bytes()).fingerprint == key.fingerprint
    assert main(["keygen", "--out", str(out_file)]) == 2  # never overwrites by accident
    assert SigningKey.from_text(out_file.read_bytes()).fingerprint == key.fingerprint
    os.chmod(out_file, 0o644)
    assert main(["keygen", "--out", str(out_file), "--force"]) == 0
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    # the archive was signed with another key: pinning this one fails every digest
    assert main(["verify", str(archive.root), "--public-key", str(public)]) == 1


def test_public_key_from_private_pem(archive: Built, tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(KEY.pem())
    assert main(["verify", str(archive.root), "--public-key", str(private)]) == 0


def _declare_crash_gap(built: Built, first: int, last: int, signer: SigningKey) -> str:
    stream = next(iter(built.streams))
    key = built.digests[stream][-1]
    doc = parse_digest(built.path(key).read_bytes())
    body = make_digest(
        stream=stream,
        digest_seq=doc["digest_seq"],
        previous=doc.get("previous_digest"),
        created_at=doc["created_at"],
        objects=doc["objects"],
        crash_gaps=[{"after_seq": first - 1, "through_seq": last, "declared_by": "w"}],
        key=signer,
    )
    built.path(key).write_bytes(body)
    return stream


def _delete_seqs(built: Built, seqs: set[int]) -> None:
    for key in built.objects:
        lines = read_lines(built.path(key))
        kept = [line for line in lines if orjson.loads(line)["integrity"]["seq"] not in seqs]
        write_lines(built.path(key), kept)


def test_declared_crash_gaps_are_notices(tmp_path: Path) -> None:
    """Seqs a signed digest declares lost in a crash are notices; other gaps stay findings."""
    built = local_archive(tmp_path, seed=12, streams=1, runs=2, digest_every=100)
    stream = _declare_crash_gap(built, 20, 22, KEY)
    # the events were never uploaded: rewrite their objects, and their digest entries
    _delete_seqs(built, {20, 21, 22})
    report = built.verify()
    assert kinds(report) == {"modified_object"}  # only because this test rewrote objects
    (notice,) = report.notices
    assert notice.kind == "crash_gap"
    assert notice.location == Location(None, None, stream, 20)
    assert "events seq 20..22 are missing, declared lost in a writer crash" in notice.message
    _delete_seqs(built, {23, 30})
    deleted = [f for f in built.verify().findings if f.kind == "deleted_event"]
    assert [f.location.seq for f in deleted] == [23, 30]


def test_crash_gaps_of_untrusted_digests_are_ignored(tmp_path: Path) -> None:
    built = local_archive(tmp_path, seed=13, streams=1, runs=2, digest_every=100)
    _declare_crash_gap(built, 5, 6, generate_signing_key())
    _delete_seqs(built, {5, 6})
    report = built.verify()
    assert {"unknown_key", "deleted_event"} <= kinds(report)
    assert report.notices == []
