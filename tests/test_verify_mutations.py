"""The mutation test: tamper with an archive at a random place, over many seeded trials.

Each trial builds a fresh synthetic archive (``tests.test_verify.build_archive``: two streams,
each restarted once, several orgs and days, signed digests), applies one tamper class at a
random place and runs ``verify_archive`` with the signing key pinned. The trial passes when the
expected kind of finding is reported and every finding is one the tamper can explain;
untouched archives must give zero findings.
"""

from __future__ import annotations

import base64
import gzip
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from audit_middleware import Actor, Auditor, Target
from audit_middleware.integrity._canonical import canonical_bytes, event_hash
from audit_middleware.integrity._digest import key_object_key, make_digest, parse_digest
from audit_middleware.integrity._keys import generate_signing_key
from audit_middleware.integrity._verify import VerifyReport, verify_archive
from exporters.archive import ArchiveExporter
from tests.test_verify import (
    KEY,
    LATER,
    Built,
    Run,
    kinds,
    local_archive,
    read_lines,
    write_lines,
)

TRIALS_PER_CLASS = 4
ATTACKER = generate_signing_key()


@dataclass(frozen=True)
class Expect:
    """``any_of``: at least one of these kinds is reported; ``allowed``: no other kind is."""

    any_of: frozenset[str]
    allowed: frozenset[str]
    message: str | None = None  # a text one of the ``any_of`` findings must contain


def expect(any_of: str | set[str], *others: str, message: str | None = None) -> Expect:
    first = {any_of} if isinstance(any_of, str) else any_of
    return Expect(frozenset(first), frozenset(first | set(others)), message)


def _object_with(built: Built, rng: random.Random, min_events: int) -> tuple[str, list[bytes]]:
    keys = [k for k in built.objects if len(read_lines(built.path(k))) >= min_events]
    key = rng.choice(keys)
    return key, read_lines(built.path(key))


def _any_digest(built: Built, rng: random.Random) -> tuple[str, int, bool]:
    """(key, index, whether it is its stream's newest digest)."""
    stream = rng.choice(sorted(built.digests))
    keys = built.digests[stream]
    index = rng.randrange(len(keys))
    return keys[index], index, index == len(keys) - 1


def _resign(built: Built, key: str, doc: dict[str, Any], signer: Any) -> None:
    body = make_digest(
        stream=doc["stream"],
        digest_seq=doc["digest_seq"],
        previous=doc.get("previous_digest"),
        created_at=doc["created_at"],
        objects=doc["objects"],
        key=signer,
    )
    built.path(key).write_bytes(body)


# -- the tamper classes --------------------------------------------------------------------------


def modify_event(built: Built, rng: random.Random) -> Expect:
    key, lines = _object_with(built, rng, 1)
    i = rng.randrange(len(lines))
    row = orjson.loads(lines[i])
    field = rng.choice(["action", "actor", "outcome", "metadata", "target"])
    if field == "action":
        row["action"] = "doc.deleted"
    elif field == "actor":
        row["actor"]["id"] = "mallory"
    elif field == "outcome":
        row["outcome"] = "denied"
    elif field == "metadata":
        row["metadata"]["n"] = -1
    else:
        row["target"]["id"] = "other"
    lines[i] = orjson.dumps(row) + b"\n"
    write_lines(built.path(key), lines)
    return expect("modified_event", "modified_object")


def modify_event_rehashed(built: Built, rng: random.Random) -> Expect:
    """The attacker knows the format and recomputes the altered event's hash."""
    key, lines = _object_with(built, rng, 1)
    i = rng.randrange(len(lines))
    row = orjson.loads(lines[i])
    row["actor"]["id"] = "mallory"
    integrity = row["integrity"]
    integrity["hash"] = event_hash(row, integrity["stream"], integrity["seq"], integrity["prev"])
    lines[i] = orjson.dumps(row) + b"\n"
    write_lines(built.path(key), lines)
    return expect("modified_object", "broken_chain", "chain_head_mismatch")


def delete_event(built: Built, rng: random.Random) -> Expect:
    key, lines = _object_with(built, rng, 1)
    del lines[rng.randrange(len(lines))]
    write_lines(built.path(key), lines)
    return expect("deleted_event", "modified_object")


def insert_forged_event(built: Built, rng: random.Random) -> Expect:
    """A copy of an event with altered content and, half the time, a correct hash."""
    key, lines = _object_with(built, rng, 1)
    i = rng.randrange(len(lines))
    row = orjson.loads(lines[i])
    row["action"] = "user.login"
    row["actor"]["id"] = "forged"
    rehash = rng.random() < 0.5
    if rehash:
        integrity = row["integrity"]
        integrity["hash"] = event_hash(
            row, integrity["stream"], integrity["seq"], integrity["prev"]
        )
    lines.insert(i + 1, orjson.dumps(row) + b"\n")
    write_lines(built.path(key), lines)
    extra = () if rehash else ("modified_event",)
    return expect("inserted_event", "modified_object", *extra)


def swap_events(built: Built, rng: random.Random) -> Expect:
    key, lines = _object_with(built, rng, 2)
    i, j = sorted(rng.sample(range(len(lines)), 2))
    lines[i], lines[j] = lines[j], lines[i]
    write_lines(built.path(key), lines)
    return expect("reordered_events", "modified_object")


def delete_object(built: Built, rng: random.Random) -> Expect:
    built.path(rng.choice(built.objects)).unlink()
    return expect("deleted_object", "deleted_event")


def replace_object_bytes(built: Built, rng: random.Random) -> Expect:
    """Same events, other bytes (another gzip header): only the digest can tell."""
    key = rng.choice(built.objects)
    path = built.path(key)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), mtime=rng.randrange(1, 9)))
    return expect("modified_object")


def truncate_object(built: Built, rng: random.Random) -> Expect:
    key = rng.choice(built.objects)
    path = built.path(key)
    body = path.read_bytes()
    path.write_bytes(body[: rng.randrange(1, len(body) - 8)])
    return expect("unreadable_object", "modified_object", "deleted_event")


def add_object(built: Built, rng: random.Random) -> Expect:
    """An object nobody digested: a re-upload under another writer's name, or forged events."""
    key = rng.choice(built.objects)
    folder = key.rsplit("/", 1)[0]
    copy = built.path(f"{folder}/evil-1-abcdef-0000000001.jsonl.gz")
    copy.write_bytes(built.path(key).read_bytes())
    return expect("undigested_object")


def move_event(built: Built, rng: random.Random) -> Expect:
    source, lines = _object_with(built, rng, 1)
    org = source.split("/")[0]
    target = rng.choice([k for k in built.objects if not k.startswith(org + "/")])
    moved = lines.pop(rng.randrange(len(lines)))
    write_lines(built.path(source), lines)
    others = read_lines(built.path(target))
    others.insert(rng.randrange(len(others) + 1), moved)
    write_lines(built.path(target), others)
    return expect("misplaced_event", "modified_object", "reordered_events")


def delete_digest(built: Built, rng: random.Random) -> Expect:
    key, _, newest = _any_digest(built, rng)
    built.path(key).unlink()
    if newest:  # nothing follows it: its objects are simply undigested now
        return expect("undigested_object")
    return expect("missing_digest", "undigested_object")


def strip_signature(built: Built, rng: random.Random) -> Expect:
    key, _, _ = _any_digest(built, rng)
    doc = parse_digest(built.path(key).read_bytes())
    del doc["signature"], doc["signing"]
    built.path(key).write_bytes(canonical_bytes(doc) + b"\n")
    return expect("unsigned_digest", "missing_digest")


def alter_signed_digest(built: Built, rng: random.Random) -> Expect:
    """Change a signed digest, keeping its signature."""
    key, _, _ = _any_digest(built, rng)
    doc = parse_digest(built.path(key).read_bytes())
    entry = rng.choice(doc["objects"])
    how = rng.choice(["sha256", "events", "created_at", "drop"])
    if how == "sha256":
        entry["sha256"] = "0" * 64
    elif how == "events":
        entry["events"] += 1
    elif how == "created_at":
        doc["created_at"] = "2020-01-01T00:00:00Z"
    else:
        doc["objects"].remove(entry)
    built.path(key).write_bytes(canonical_bytes(doc) + b"\n")
    return expect("bad_signature", "modified_object", "missing_digest", "undigested_object")


def resign_with_other_key(built: Built, rng: random.Random) -> Expect:
    """Hide a deleted object: drop it from its digest, re-sign with the attacker's key (and
    publish that key in the archive, which pinning makes useless)."""
    key, _, _ = _any_digest(built, rng)
    doc = parse_digest(built.path(key).read_bytes())
    entry = rng.choice(doc["objects"])
    doc["objects"].remove(entry)
    built.path(entry["key"]).unlink()
    _resign(built, key, doc, ATTACKER)
    published = built.path(key_object_key(built.prefix, ATTACKER.fingerprint))
    published.write_bytes(ATTACKER.public.pem())
    return expect("unknown_key", "missing_digest", "deleted_event", "chain_head_mismatch")


def drop_restart_boundary(built: Built, rng: random.Random) -> Expect:
    """Delete the last events before a restart and the first ones after it."""
    stream = rng.choice(sorted(built.streams))
    before, after = built.streams[stream][:2]
    drop_before = rng.randint(1, 3)
    drop_after = rng.randint(0, 3)
    doomed = set(range(before.last_seq - drop_before + 1, before.last_seq + 1))
    doomed |= set(range(after.first_seq, after.first_seq + drop_after))
    for key in before.objects + after.objects:
        lines = read_lines(built.path(key))
        kept = [line for line in lines if orjson.loads(line)["integrity"]["seq"] not in doomed]
        if len(kept) != len(lines):
            write_lines(built.path(key), kept)
    return expect(
        "deleted_event",
        "modified_object",
        message=f"across a restart from writer {before.writer} to writer {after.writer}",
    )


TAMPERS: dict[str, Callable[[Built, random.Random], Expect]] = {
    f.__name__: f
    for f in (
        modify_event,
        modify_event_rehashed,
        delete_event,
        insert_forged_event,
        swap_events,
        delete_object,
        replace_object_bytes,
        truncate_object,
        add_object,
        move_event,
        delete_digest,
        strip_signature,
        alter_signed_digest,
        resign_with_other_key,
        drop_restart_boundary,
    )
}
TRIALS = [(name, seed) for name in TAMPERS for seed in range(TRIALS_PER_CLASS)]


def check(report: VerifyReport, expected: Expect, context: str) -> None:
    found = kinds(report)
    summary = "\n".join(str(f) for f in report.findings)
    assert found & expected.any_of, f"{context}: expected {set(expected.any_of)}, got:\n{summary}"
    assert found <= expected.allowed, f"{context}: unexpected kinds {found - expected.allowed}"
    if expected.message is not None:
        assert any(
            expected.message in f.message for f in report.findings if f.kind in expected.any_of
        ), f"{context}: no finding says {expected.message!r}:\n{summary}"


@pytest.mark.parametrize(("tamper", "seed"), TRIALS, ids=[f"{n}-{s}" for n, s in TRIALS])
def test_every_tamper_is_detected(tmp_path: Path, tamper: str, seed: int) -> None:
    rng = random.Random(f"{tamper}/{seed}")
    built = local_archive(tmp_path, seed=rng.randrange(1 << 30), runs=2)
    assert built.verify().findings == [], "the untouched archive must verify clean"
    expected = TAMPERS[tamper](built, rng)
    check(built.verify(), expected, f"{tamper} seed {seed}")


@pytest.mark.parametrize("seed", range(10))
def test_untouched_archives_have_zero_findings(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    built = local_archive(
        tmp_path,
        seed=seed,
        streams=rng.randint(1, 4),
        runs=rng.randint(1, 4),
        events_per_run=rng.randint(1, 40),
        digest_every=rng.randint(1, 5),
        fmt=rng.choice(["jsonl", "parquet"]),
        killed_runs=frozenset(r for r in range(4) if rng.random() < 0.3),
    )
    report = built.verify()
    assert report.findings == []
    assert report.notices == []
    assert verify_archive(str(tmp_path), now=LATER, public_keys=None).findings == []


def test_republished_attacker_key_is_caught_by_the_digest_chain(tmp_path: Path) -> None:
    """Without pinned keys the attacker's published key is trusted: the re-signed digest is
    still caught by its successor's previous_digest link (the newest one would not be)."""
    built = local_archive(tmp_path, seed=5, runs=2)
    stream = sorted(built.digests)[0]
    key = built.digests[stream][0]
    doc = parse_digest(built.path(key).read_bytes())
    doc["objects"].pop()
    _resign(built, key, doc, ATTACKER)
    built.path(key_object_key("", ATTACKER.fingerprint)).write_bytes(ATTACKER.public.pem())
    trusting = verify_archive(str(tmp_path), now=LATER)
    assert "missing_digest" in kinds(trusting)
    assert "unknown_key" not in kinds(trusting)
    assert "keys_from_archive" in {n.kind for n in trusting.notices}
    assert "unknown_key" in kinds(built.verify())


def test_signature_bytes_flipped(tmp_path: Path) -> None:
    built = local_archive(tmp_path, seed=6)
    key = built.digests[sorted(built.digests)[0]][1]
    doc = parse_digest(built.path(key).read_bytes())
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[0] ^= 1
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    built.path(key).write_bytes(canonical_bytes(doc) + b"\n")
    assert kinds(built.verify()) == {"bad_signature", "missing_digest"}
    assert KEY.fingerprint in built.path(key).read_text()


PARQUET_TAMPERS = ["delete_object", "add_object", "delete_digest", "strip_signature"]


@pytest.mark.parametrize("tamper", [*PARQUET_TAMPERS, "modify_row", "replace_bytes"])
def test_parquet_archives(tmp_path: Path, tamper: str) -> None:
    rng = random.Random(tamper)
    built = local_archive(tmp_path, seed=rng.randrange(1 << 30), fmt="parquet")
    assert built.verify().findings == []
    if tamper in PARQUET_TAMPERS:
        if tamper == "add_object":
            key = rng.choice(built.objects)
            folder = key.rsplit("/", 1)[0]
            built.path(f"{folder}/evil-1-abcdef-0000000001.parquet").write_bytes(
                built.path(key).read_bytes()
            )
            expected = expect("undigested_object")
        else:
            expected = TAMPERS[tamper](built, rng)
    else:
        from exporters._parquet import decode_parquet, encode_parquet

        key = rng.choice(built.objects)
        org = key.split("/")[0].removeprefix("org_id=")
        rows = decode_parquet(built.path(key).read_bytes())
        if tamper == "modify_row":
            rows[rng.randrange(len(rows))]["action"] = "doc.deleted"
            expected = expect("modified_event", "modified_object")
        else:
            expected = expect("modified_object")
        restored = [dict(r, org_id=None if org == "_global" else unquote(org)) for r in rows]
        body = encode_parquet(b"".join(orjson.dumps(r) + b"\n" for r in restored))
        if tamper == "replace_bytes":  # the same rows, written with another compression
            import pyarrow as pa
            import pyarrow.parquet as pq

            sink = pa.BufferOutputStream()
            pq.write_table(pq.read_table(pa.BufferReader(body)), sink, compression="snappy")
            body = sink.getvalue().to_pybytes()
            assert body != built.path(key).read_bytes()
        built.path(key).write_bytes(body)
    check(built.verify(), expected, f"parquet {tamper}")


# -- archives written by the real writer ---------------------------------------------------------

REAL_ORGS = ("acme", "globex", "a/b", None)
REAL_RUNS = 3


def record_run(archive: Path, spool: Path, events: int, fmt: str = "jsonl") -> None:
    """One process start of the real writer: Auditor + ArchiveExporter, record, shutdown."""
    exporter = ArchiveExporter(
        str(archive),
        spool_dir=spool,
        signing_key=KEY,
        max_events=4,
        max_age=0.05,
        digest_interval=0.2,
        format=fmt,
    )
    auditor = Auditor(exporters=[exporter], integrity=True, environ={}, batch_interval=0.005)
    try:
        for i in range(events):
            auditor.record(
                "doc.updated",
                actor=Actor(f"u{i % 3}"),
                target=Target("doc", f"d{i}"),
                org_id=REAL_ORGS[i % len(REAL_ORGS)],
                metadata={"i": i},
            )
    finally:
        auditor.shutdown(timeout=10)


def scan_archive(root: Path) -> Built:
    """The tamper functions' view of an archive the real writer produced."""
    built = Built(root, "", KEY)
    runs: dict[str, Run] = {}
    stream_of: dict[str, str] = {}
    for path in sorted(root.glob("org_id=*/dt=*/*.jsonl.gz")):
        key = path.relative_to(root).as_posix()
        writer = path.name.rsplit("-", 1)[0]
        run = runs.setdefault(writer, Run(writer, first_seq=1 << 62))
        run.objects.append(key)
        built.objects.append(key)
        for line in read_lines(path):
            integrity = orjson.loads(line)["integrity"]
            stream_of[writer] = integrity["stream"]
            run.first_seq = min(run.first_seq, integrity["seq"])
            run.last_seq = max(run.last_seq, integrity["seq"])
    for writer, run in sorted(runs.items(), key=lambda item: item[1].first_seq):
        built.streams.setdefault(stream_of[writer], []).append(run)
    for path in sorted(root.glob("_integrity/digests/stream=*/*.json")):
        built.digests.setdefault(path.parent.name[len("stream=") :], []).append(
            path.relative_to(root).as_posix()
        )
    return built


@pytest.fixture(scope="module")
def real_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine archive: one stream written by three successive processes."""
    base = tmp_path_factory.mktemp("real")
    for _ in range(REAL_RUNS):
        record_run(base / "archive", base / "spool", 30)
    return base / "archive"


def test_real_writer_archive_verifies_clean(real_archive: Path) -> None:
    built = scan_archive(real_archive)
    report = built.verify()
    assert report.findings == []
    assert report.events == REAL_RUNS * 30
    assert len(built.streams) == 1  # the stream continued across the restarts
    (runs,) = built.streams.values()
    assert len(runs) == REAL_RUNS
    assert report.digests >= REAL_RUNS


def test_real_writer_parquet_archive_verifies_clean(tmp_path: Path) -> None:
    for _ in range(2):
        record_run(tmp_path / "archive", tmp_path / "spool", 20, fmt="parquet")
    report = verify_archive(
        str(tmp_path / "archive"), public_keys={KEY.fingerprint: KEY.public}, now=LATER
    )
    assert report.findings == []
    assert report.events == 40
    assert report.streams == 1


REAL_TRIALS = [(name, seed) for name in TAMPERS for seed in range(2)]


@pytest.mark.parametrize(("tamper", "seed"), REAL_TRIALS, ids=[f"{n}-{s}" for n, s in REAL_TRIALS])
def test_every_tamper_is_detected_on_a_real_archive(
    real_archive: Path, tmp_path: Path, tamper: str, seed: int
) -> None:
    shutil.copytree(real_archive, tmp_path / "archive")
    built = scan_archive(tmp_path / "archive")
    expected = TAMPERS[tamper](built, random.Random(f"real/{tamper}/{seed}"))
    check(built.verify(), expected, f"real archive: {tamper} seed {seed}")


_CHILD = """
import sys
import time
from audit_middleware import Actor, Auditor
from audit_middleware.integrity._keys import SigningKey
from exporters.archive import ArchiveExporter

archive, spool, key = sys.argv[1:4]
exporter = ArchiveExporter(
    archive, spool_dir=spool, signing_key=SigningKey.from_text(key), max_events=4, max_age=0.05
)
auditor = Auditor(exporters=[exporter], integrity=True, environ={}, batch_interval=0.005)
i = 0
while True:
    auditor.record("doc.updated", actor=Actor("u1"), org_id=("acme", "globex")[i % 2])
    i += 1
    time.sleep(0.001)  # let the pipeline seal, spool and upload while events keep coming
    if i == 40:
        assert auditor.force_flush(timeout=10)
        print("flushed", flush=True)
    elif i == 200:  # killed from here on: events in the queue, the spool and uploads
        print("running", flush=True)
"""


def test_chain_across_sigkill_and_restart_verifies_clean(tmp_path: Path) -> None:
    """A writer killed mid-stream (SIGKILL); the next start adopts its spool and continues."""
    archive, spool = tmp_path / "archive", tmp_path / "spool"
    record_run(archive, spool, 10)
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(archive), str(spool), KEY.pem().decode()],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"flushed\n"
            assert child.stdout.readline() == b"running\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    record_run(archive, spool, 10)
    built = scan_archive(archive)
    report = built.verify()
    assert report.findings == [], "\n".join(map(str, report.findings))
    assert set(built.streams) == {
        orjson.loads(read_lines(archive / built.objects[0])[0])["integrity"]["stream"]
    }
    assert report.events >= 60  # 10 + at least the 40 flushed + 10
    assert {n.kind for n in report.notices} <= {"crash_gap"}
