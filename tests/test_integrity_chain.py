"""The writer side of tamper evidence: the event chain, its persistence with the spool across
restarts (clean and SIGKILL), and the signed digests the archive writes."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_middleware import Actor, AuditConfigError, Auditor, Target
from audit_middleware._config import Delivery
from audit_middleware._event import ANONYMOUS, AuditEvent, ClientInfo, ErrorInfo, RequestInfo
from audit_middleware.integrity import GENESIS, EventChain, canonical_bytes, event_hash
from audit_middleware.integrity._digest import parse_digest, sha256_hex, signature_status
from audit_middleware.integrity._keys import SigningKey, generate_signing_key, load_public_key
from audit_middleware.integrity._verify import verify_archive
from audit_middleware.query import _with_org
from exporters._parquet import decode_parquet
from exporters.archive import ArchiveExporter

ROOT = Path(__file__).resolve().parents[1]


def _events(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(object key, event) for every event object of a local archive, in file order."""
    out = []
    for path in sorted(root.rglob("org_id=*/dt=*/*")):
        if path.name.startswith("."):  # a local store's temporary file of a killed upload
            continue
        key = path.relative_to(root).as_posix()
        if path.name.endswith(".jsonl.gz"):
            rows = [orjson.loads(x) for x in gzip.decompress(path.read_bytes()).splitlines()]
        else:  # Parquet rows carry org_id only in their partition
            org = unquote(path.parent.parent.name.removeprefix("org_id="))
            rows = [_with_org(row, org) for row in decode_parquet(path.read_bytes())]
        out += [(key, row) for row in rows]
    return out


def _crash_gaps(root: Path) -> list[tuple[int, int]]:
    """The (after_seq, through_seq] ranges digests declare as possibly lost in a crash."""
    gaps = []
    for path in root.glob("_integrity/digests/stream=*/*.json"):
        gaps += [
            (g["after_seq"], g["through_seq"])
            for g in parse_digest(path.read_bytes()).get("crash_gaps", [])
        ]
    return gaps


def _check_chains(root: Path) -> dict[str, list[int]]:
    """Assert every event hash is right and each stream is gapless except where a digest
    declares a crash; return the seqs present per stream."""
    by_stream: dict[str, dict[int, dict[str, Any]]] = {}
    last_in_object: dict[str, int] = {}
    for key, event in _events(root):
        integrity = event["integrity"]
        stream, seq, prev = integrity["stream"], integrity["seq"], integrity["prev"]
        assert event_hash(event, stream, seq, prev) == integrity["hash"], (key, seq)
        assert seq > last_in_object.get(key, 0), f"{key}: events out of chain order"
        last_in_object[key] = seq
        assert by_stream.setdefault(stream, {}).setdefault(seq, integrity) == integrity
    gaps = _crash_gaps(root)
    for stream, chain in by_stream.items():
        seqs = sorted(chain)
        missing = set(range(1, seqs[-1] + 1)) - set(seqs)
        unexplained = [m for m in missing if not any(a < m <= b for a, b in gaps)]
        assert not unexplained, f"{stream}: seqs {unexplained} missing"
        assert chain[1]["prev"] == GENESIS
        for seq in seqs[1:]:
            if seq - 1 in chain:
                assert chain[seq]["prev"] == chain[seq - 1]["hash"], (stream, seq)
    return {stream: sorted(chain) for stream, chain in by_stream.items()}


def _check_digests(root: Path, key: SigningKey | None) -> dict[str, list[dict[str, Any]]]:
    """Assert digests cover every event object exactly as stored; return them per stream."""
    keys = {} if key is None else {key.fingerprint: key.public}
    covered: set[str] = set()
    per_stream: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(root.glob("_integrity/digests/stream=*/*.json")):
        doc = parse_digest(path.read_bytes())
        assert signature_status(doc, keys) == ("unsigned" if key is None else "valid")
        per_stream.setdefault(doc["stream"], []).append(doc)
        for entry in doc["objects"]:
            body = (root / entry["key"]).read_bytes()
            assert sha256_hex(body) == entry["sha256"]
            assert entry["bytes"] == len(body)
            covered.add(entry["key"])
    for stream, docs in per_stream.items():
        assert [d["digest_seq"] for d in docs] == list(range(1, len(docs) + 1)), stream
        for before, after in itertools.pairwise(docs):
            stored = root / after["previous_digest"]["key"]
            assert after["previous_digest"]["sha256"] == sha256_hex(stored.read_bytes())
            assert before["digest_seq"] + 1 == after["digest_seq"]
    objects = {k for k, _ in _events(root)}
    assert covered == objects, objects ^ covered
    return per_stream


def _archive(tmp_path: Path, **options: Any) -> ArchiveExporter:
    options.setdefault("spool_dir", tmp_path / "spool")
    options.setdefault("max_age", 3600)
    return ArchiveExporter(str(tmp_path / "archive"), **options)


def _record(auditor: Auditor, n: int, *, orgs: int = 3, start: int = 0) -> None:
    for i in range(start, start + n):
        auditor.record(
            "document.updated",
            actor=Actor(f"user_{i % 5}"),
            org_id=f"org_{i % orgs}",
            target=Target("document", str(i)),
        )


# -- the chain ----------------------------------------------------------------------------------


def test_every_event_is_chained_and_the_hash_matches_its_documented_definition(
    make_auditor: Any,
) -> None:
    auditor = make_auditor()
    _record(auditor, 5)
    events = auditor.wait_for(5)
    chain = [e.integrity for e in events]
    assert all(c is not None for c in chain)
    assert [c["seq"] for c in chain] == [1, 2, 3, 4, 5]
    assert chain[0]["prev"] == GENESIS
    assert len({c["stream"] for c in chain}) == 1
    for event in events:
        data = event.to_dict()
        integrity = data["integrity"]
        # SHA-256 of the canonical JSON (nulls and empty objects dropped, keys sorted)
        data["integrity"] = {k: integrity[k] for k in ("stream", "seq", "prev")}
        expected = sha256_hex(canonical_bytes(data))
        assert integrity["hash"] == expected == event_hash(data, **data["integrity"])
    for before, after in itertools.pairwise(chain):
        assert after["prev"] == before["hash"]


def test_canonical_form_ignores_how_absence_is_spelled_but_not_content() -> None:
    a = {"b": 1, "a": {"y": None, "x": "é"}, "metadata": {}, "target": None}
    b = {"a": {"x": "é"}, "b": 1}
    assert canonical_bytes(a) == canonical_bytes(b) == '{"a":{"x":"é"},"b":1}'.encode()
    assert canonical_bytes({"a": {"x": "e"}, "b": 1}) != canonical_bytes(b)
    assert canonical_bytes({"b": 1.0}) != canonical_bytes({"b": 1})


def test_integrity_can_be_turned_off(make_auditor: Any) -> None:
    auditor = make_auditor(integrity=False)
    _record(auditor, 2)
    assert [e.integrity for e in auditor.wait_for(2)] == [None, None]
    assert make_auditor(environ={"AUDIT_LOG_INTEGRITY": "false"}).chain is None


def test_concurrent_recording_from_many_threads_gives_one_gapless_chain(make_auditor: Any) -> None:
    auditor = make_auditor()
    threads = [threading.Thread(target=_record, args=(auditor, 200)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = auditor.wait_for(1600)
    assert sorted(e.integrity["seq"] for e in events if e.integrity) == list(range(1, 1601))


def test_already_chained_events_pass_through_unchanged() -> None:
    chain = EventChain()
    event = AuditEvent(
        id="x", occurred_at="2026-01-01T00:00:00.000000Z", action="a.b", outcome="success",
        actor=Actor("u"),
    )  # fmt: skip
    (first,) = chain.seal([event])
    assert chain.seal([first]) == [first]
    assert chain.head.seq == 1


def test_the_chain_fields_reach_the_log_exporter(capsys: pytest.CaptureFixture[str]) -> None:
    auditor = Auditor(exporters=["log"], environ={}, batch_interval=0.01)
    _record(auditor, 1)
    auditor.shutdown(timeout=2)
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    integrity = line["integrity"]
    assert event_hash(line, integrity["stream"], 1, GENESIS) == integrity["hash"]


# -- the archive: objects, restarts, digests -------------------------------------------------------


@pytest.mark.parametrize("format", ["jsonl", "parquet"])
def test_archived_events_verify_in_both_formats_with_signed_digests(
    tmp_path: Path, format: str
) -> None:
    key = generate_signing_key()
    archive = _archive(tmp_path, format=format, signing_key=key)
    auditor = Auditor(exporters=[archive], environ={}, batch_interval=0.01)
    _record(auditor, 120, orgs=4)
    auditor.shutdown(timeout=10)
    root = tmp_path / "archive"
    assert _check_chains(root) == {next(iter(_check_chains(root))): list(range(1, 121))}
    digests = _check_digests(root, key)
    (docs,) = digests.values()
    assert docs[-1]["chain_head"]["seq"] == 120
    published = root / "_integrity" / "keys" / f"{key.fingerprint}.pem"
    assert load_public_key(published.read_bytes()).fingerprint == key.fingerprint


@pytest.mark.parametrize("delivery", ["thread", "process"])
def test_a_clean_restart_continues_the_stream_and_the_digest_chain(
    tmp_path: Path, delivery: Delivery
) -> None:
    """With process delivery, the delivery process seals and archives: the app's process hands
    it the spool (and the stream it adopted from the last run) before forking it."""
    key = generate_signing_key()
    for run in range(3):
        auditor = Auditor(
            exporters=[_archive(tmp_path, signing_key=key)],
            environ={},
            batch_interval=0.01,
            delivery=delivery,
        )
        _record(auditor, 40, start=40 * run)
        assert auditor.shutdown(timeout=10)
    root = tmp_path / "archive"
    seqs = _check_chains(root)
    assert list(seqs.values()) == [list(range(1, 121))]  # one stream over three processes
    (docs,) = _check_digests(root, key).values()
    assert [d["digest_seq"] for d in docs] == [1, 2, 3]
    report = verify_archive(str(root), public_keys={key.fingerprint: key.public}, open_grace=0)
    assert report.ok
    assert (report.events, report.streams) == (120, 1)
    writers = {k.rsplit("/", 1)[1].rsplit("-", 1)[0] for k, _ in _events(root)}
    assert len(writers) == 3


def test_restarts_with_two_delivery_processes_leave_every_stream_verifiable(
    tmp_path: Path,
) -> None:
    """Each delivery process seals a stream of its own; at each restart the streams the last
    run left are adopted (one continued, the others closed by their final digests)."""
    key = generate_signing_key()
    for run in range(3):
        auditor = Auditor(
            exporters=[_archive(tmp_path, signing_key=key)],
            environ={},
            batch_size=100,
            batch_interval=0.01,
            delivery="process",
            delivery_processes=2,
        )
        _record(auditor, 600, start=600 * run)
        assert auditor.shutdown(timeout=20)
    root = tmp_path / "archive"
    seqs = _check_chains(root)
    assert len(seqs) >= 2
    for stream in seqs.values():
        assert stream == list(range(stream[0], stream[0] + len(stream)))
    targets = sorted(int(event["target"]["id"]) for _, event in _events(root))
    assert targets == list(range(1800))  # every event once
    report = verify_archive(str(root), public_keys={key.fingerprint: key.public}, open_grace=0)
    assert report.ok, report.findings
    assert report.events == 1800


def test_digests_are_written_every_interval_while_running(tmp_path: Path) -> None:
    key = generate_signing_key()
    archive = _archive(tmp_path, signing_key=key, max_age=0.05, digest_interval=0.2)
    auditor = Auditor(exporters=[archive], environ={}, batch_interval=0.01)
    _record(auditor, 10)
    auditor.force_flush(timeout=5)
    digests = tmp_path / "archive" / "_integrity" / "digests"
    for _ in range(100):
        if list(digests.rglob("*.json")):
            break
        threading.Event().wait(0.05)
    assert list(digests.rglob("*.json")), "no digest written within the interval"
    auditor.shutdown(timeout=10)
    _check_digests(tmp_path / "archive", key)


def test_without_a_key_digests_are_unsigned_and_say_so(tmp_path: Path) -> None:
    auditor = Auditor(exporters=[_archive(tmp_path)], environ={}, batch_interval=0.01)
    _record(auditor, 3)
    auditor.shutdown(timeout=10)
    _check_digests(tmp_path / "archive", None)


def test_signing_key_from_the_environment(tmp_path: Path) -> None:
    key = generate_signing_key()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.pem())
    env = {
        "AUDIT_LOG_EXPORTERS": "archive",
        "AUDIT_LOG_ARCHIVE_URL": str(tmp_path / "archive"),
        "AUDIT_LOG_SPOOL_DIR": str(tmp_path / "spool"),
        "AUDIT_LOG_SIGNING_KEY_FILE": str(key_file),
    }
    auditor = Auditor(environ=env, batch_interval=0.01)
    _record(auditor, 3)
    auditor.shutdown(timeout=10)
    _check_digests(tmp_path / "archive", key)
    with pytest.raises(AuditConfigError, match=r"AUDIT_LOG_SIGNING_KEY: .*32"):
        Auditor(environ={**env, "AUDIT_LOG_SIGNING_KEY_FILE": "", "AUDIT_LOG_SIGNING_KEY": "AAAA"})


def test_events_spooled_out_of_chain_order_are_stored_in_chain_order(tmp_path: Path) -> None:
    # Strict mode writes a request's event through to the spool at once, while record() events
    # chained earlier are still queued: the archive must still store objects in chain order.
    archive = _archive(tmp_path)
    chain = EventChain(archive.chain_head)
    events = chain.seal(
        [
            AuditEvent(
                id=f"0190a0b0-0000-7000-8000-{i:012d}", occurred_at="2026-11-27T10:00:00.000000Z",
                action="note.added", outcome="success", actor=Actor("u"), org_id="org_0",
            )
            for i in range(10)
        ]
    )  # fmt: skip
    archive.write_through(events[6:8])
    archive.export(events[0:6])
    archive.export(events[8:])
    archive.shutdown(timeout=10)
    assert _check_chains(tmp_path / "archive") == {chain.head.stream: list(range(1, 11))}
    _check_digests(tmp_path / "archive", None)


_KILLED_WRITER = """
import sys, time
from audit_middleware import Actor, Auditor, Target
from exporters.archive import ArchiveExporter
from audit_middleware.integrity._keys import SigningKey
key = SigningKey.from_text(open(sys.argv[3], "rb").read())
archive = ArchiveExporter(sys.argv[1], spool_dir=sys.argv[2], max_age=0.05, signing_key=key,
                          max_events=7)
a = Auditor(exporters=[archive], batch_interval=0.005, environ={})
print("ready", flush=True)
i = 0
while True:
    a.record("doc.updated", actor=Actor("u1"), org_id=f"org_{i % 3}", target=Target("doc", str(i)))
    i += 1
    if i % 50 == 0:
        time.sleep(0.01)
"""


def _kill_writer_after(archive_dir: Path, spool: Path, key_file: Path, objects: int) -> None:
    """Run ``_KILLED_WRITER`` until the archive holds ``objects`` objects, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(archive_dir), str(spool), str(key_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    deadline = 200
    while deadline and len(list(archive_dir.rglob("*.jsonl.gz"))) < objects:
        threading.Event().wait(0.05)
        deadline -= 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert deadline, "the writer uploaded too few objects before it was killed"


def _survive_and_verify(tmp_path: Path, key: SigningKey) -> dict[str, list[int]]:
    """A new writer adopts what dead ones left, records 10 events and shuts down; the archive
    then holds one stream (the dead writers' continued) and verifies clean."""
    survivor = _archive(tmp_path, signing_key=key)
    auditor = Auditor(exporters=[survivor], environ={}, batch_interval=0.01)
    _record(auditor, 10)
    auditor.shutdown(timeout=10)
    archive_dir = tmp_path / "archive"
    seqs = _check_chains(archive_dir)
    assert len(seqs) == 1, "the survivor continues the dead writers' stream"
    _check_digests(archive_dir, key)
    report = verify_archive(
        str(archive_dir), public_keys={key.fingerprint: key.public}, open_grace=0
    )
    assert report.ok, [str(f) for f in report.findings]
    return seqs


def test_chains_and_digests_survive_sigkill_and_restart(tmp_path: Path) -> None:
    key = generate_signing_key()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.pem())
    archive_dir, spool = tmp_path / "archive", tmp_path / "spool"
    for _ in range(2):  # mid-load: events in memory, in the spool, uploading
        _kill_writer_after(archive_dir, spool, key_file, objects=5)
    seqs = _survive_and_verify(tmp_path, key)
    assert len(next(iter(seqs.values()))) > 10
    # Each gap is small: at most the events the killed process had numbered but not spooled.
    assert all(b - a < 2000 for a, b in _crash_gaps(archive_dir))


class _KilledWhileAdopting(Exception):
    pass


def test_a_process_killed_while_adopting_a_dead_spool_leaves_nothing_undigested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead writer's undigested uploads and chain state outlive its adopter's death."""
    from exporters._archive_digests import DigestKeeper

    key = generate_signing_key()
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.pem())
    archive_dir = tmp_path / "archive"
    _kill_writer_after(archive_dir, tmp_path / "spool", key_file, objects=5)
    assert not list(archive_dir.glob("_integrity/digests/*/*.json")), "digests come at exit"

    def killed(self: DigestKeeper) -> None:
        raise _KilledWhileAdopting  # after the dead directory is merged and deleted

    started = ArchiveExporter._ensure_started
    spools: list[Any] = []

    def started_then_killed(self: ArchiveExporter) -> Any:
        try:
            return started(self)
        except _KilledWhileAdopting:
            spools.append(self._spool)
            raise

    monkeypatch.setattr(DigestKeeper, "choose_stream", killed)
    monkeypatch.setattr(ArchiveExporter, "_ensure_started", started_then_killed)
    with pytest.raises(_KilledWhileAdopting):
        _archive(tmp_path, signing_key=key)  # adopts at construction
    monkeypatch.undo()
    spools[0].close()  # its lock is free: a dead writer's directory
    assert len([d for d in (tmp_path / "spool").iterdir() if d.is_dir()]) == 1

    _survive_and_verify(tmp_path, key)


def test_hashed_fields_are_exactly_the_schema_fields() -> None:
    from audit_middleware.integrity._canonical import EVENT_FIELDS

    schema = json.loads((ROOT / "audit_middleware/schema/audit-event.v1.json").read_text())
    assert set(schema["properties"]) == EVENT_FIELDS


_text = st.text(max_size=8)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)
_events_strategy = st.builds(
    AuditEvent,
    id=st.just("0190a0b0-0000-7000-8000-000000000001") | _text,
    occurred_at=st.just("2026-11-27T10:00:00.000000Z") | _text,
    action=st.sampled_from(["doc.updated", "user.login.failed"]) | _text,
    outcome=st.sampled_from(["success", "denied", "failure", "error"]),
    actor=st.builds(Actor, id=_text, email=st.none() | _text, name=st.none() | _text)
    | st.just(ANONYMOUS),
    org_id=st.none() | _text,
    target=st.none() | st.builds(Target, type=_text, id=st.none() | _text),
    request=st.none()
    | st.builds(
        RequestInfo,
        id=_text,
        method=st.sampled_from(["POST", "GET"]) | _text,
        path=_text,
        route=st.none() | _text,
        status=st.none() | st.integers(100, 599),
        duration_ms=st.none() | st.floats(0, 1e6, allow_nan=False),
        completed=st.none() | st.booleans(),
        query=st.dictionaries(_text, _json, max_size=3),
        headers=st.dictionaries(_text, _text, max_size=3),
    ),
    client=st.none()
    | st.builds(
        ClientInfo, ip=st.none() | _text, peer=st.none() | _text, user_agent=st.none() | _text
    ),
    error=st.none() | st.builds(ErrorInfo, type=_text),
    metadata=st.dictionaries(_text, _json, max_size=4),
    trace=st.none() | st.dictionaries(_text, _text, max_size=2),
    integrity=st.none(),
    schema_version=st.just(1),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=_events_strategy)
def test_the_chain_hashes_exactly_the_documented_canonical_form(event: AuditEvent) -> None:
    (sealed,) = EventChain().seal([event])
    integrity = sealed.integrity
    assert integrity is not None
    # the JSON copy of the event, as any reader of any archive copy would see it
    data = orjson.loads(orjson.dumps(sealed.to_dict()))
    assert event_hash(data, integrity["stream"], 1, GENESIS) == integrity["hash"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(_events_strategy, min_size=1, max_size=3))
def test_lines_rendered_while_sealing_are_exactly_the_events_json(
    events: list[AuditEvent],
) -> None:
    from audit_middleware._batch import batch_lines
    from audit_middleware._lines import event_line, full_document

    sealed = EventChain().seal(events)
    assert sealed.lines is not None
    assert len(sealed.lines) == len(events)
    for event, line in zip(sealed, sealed.lines, strict=True):
        assert line == orjson.dumps(event.to_dict()) + b"\n"
        assert event_line(event) == line
        assert full_document(event) == {
            k: v for k, v in event.to_dict().items() if k != "integrity"
        }
    assert batch_lines(sealed) is sealed.lines
    assert batch_lines(list(sealed)) == sealed.lines  # rendered on demand without them


def test_a_forked_worker_writes_its_own_stream(tmp_path: Path) -> None:
    # gunicorn --preload: the auditor is built in the master and used in forked workers.
    key = generate_signing_key()
    auditor = Auditor(
        exporters=[_archive(tmp_path, signing_key=key)], environ={}, batch_interval=0.01
    )
    _record(auditor, 5)
    auditor.force_flush(timeout=10)
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            _record(auditor, 7, start=100)
            auditor.shutdown(timeout=10)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    auditor.shutdown(timeout=10)
    root = tmp_path / "archive"
    assert sorted(len(seqs) for seqs in _check_chains(root).values()) == [5, 7]
    report = verify_archive(str(root), public_keys={key.fingerprint: key.public}, open_grace=0)
    assert report.ok, [str(f) for f in report.findings]
    assert report.streams == 2
