"""Latency of archive queries (``ArchiveReader`` and the HTTP retrieval API) on a large archive.

A synthetic archive is built on local disk: by default 10,000,000 events, 100 orgs x 90 days,
one object per ``org_id=<org>/dt=<day>`` partition, written twice with the archive's own
layout and encodings, under ``<dir>/jsonl`` (gzip JSON Lines, level 6 as the exporter writes
them) and ``<dir>/parquet`` (``exporters._parquet.encode_parquet``). Events are valid for the
JSON Schema: UUIDv7 ids and RFC 3339 timestamps from ``audit_middleware._ids``, 50 users per
org (mildly skewed activity) plus API keys and services, realistic actions, outcomes, request
and client fields. Orgs are generated in parallel, one ``multiprocessing`` worker per core.

The question asked, in every measurement: *"one org, the last 7 days, one actor: the newest
100 events"* (first page, ``limit=100``). Each repetition picks another org and actor. The
variants run interleaved (the order rotates every repetition) and are summarised by medians:

a. ``ArchiveReader(root).get_audit_logs(org, actor=, since=, until=, limit=100)`` on the
   Parquet archive and on the JSON-lines archive (partition pruning by org and day);
b. the same question as a full scan without partition pruning: pyarrow reads the needed
   columns (plus the file name) of *every* Parquet file of the archive, no filter pushed into
   the scan (so neither paths nor row-group statistics skip anything), then filters org (taken
   from the file's path), actor (``actor.id`` or ``actor.email``, as the reader does) and the
   time range in memory and sorts for the newest 100;
c. the retrieval API over HTTP: uvicorn on loopback (in a thread of this process) serving
   ``audit_log_router(reader, authorize=lambda request, org: True)`` on the Parquet archive,
   one keep-alive ``httpx`` client, ``GET /orgs/{org}/audit-logs`` (first page);
d. ``DuckDBEngine(root).get_audit_logs(...)``, the embedded engine (same pruning, then a
   pyarrow scan with projection and pushdown, then DuckDB), on both archives, and the HTTP
   API serving it (Parquet).

Correctness is checked once: (a), (c) and (d) must return exactly the ids of the full scan's
newest 100, in the same order. A mismatch exits non-zero. Timings are
reported against targets (PASS / MISS) but never fail the run. Files are read warm from the
page cache (the archive was just written); S3 latency is not part of this benchmark.

Run::

    .venv/bin/python -m benchmarks.query                    # 10M events (build ~minutes)
    .venv/bin/python -m benchmarks.query --events 1000000   # quick run
    .venv/bin/python -m benchmarks.query --dir /tmp/arch --keep   # keep and reuse the archive

A temporary archive is deleted at the end unless ``--keep``. An archive in ``--dir`` is never
deleted, and is reused by a later run with the same ``--events`` (its ``manifest.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import uvicorn
from starlette.requests import Request

from audit_middleware._ids import format_timestamp, uuid7
from audit_middleware.duckdb_engine import DuckDBEngine
from audit_middleware.query import ArchiveReader
from audit_middleware.retrieval import audit_log_router
from exporters._parquet import encode_parquet
from exporters.archive import _partition_value

__all__ = ["main"]

ORGS: Final = 100
DAYS: Final = 90
USERS_PER_ORG: Final = 50
API_KEYS_PER_ORG: Final = 5
LAST_DAY: Final = datetime(2025, 6, 30, tzinfo=UTC)  # the archive's newest day
WINDOW: Final = timedelta(days=7)
LIMIT: Final = 100
TARGET_P50_S: Final = 1.0
TARGET_SPEEDUP: Final = 20.0
WRITER: Final = "bench0000"
DAY_NS: Final = 86_400 * 1_000_000_000

# (action, method, route, weight): what a B2B SaaS audit log mostly holds.
ACTIONS: Final = (
    ("user.login", "POST", "/login", 14),
    ("user.login.failed", "POST", "/login", 3),
    ("user.logout", "POST", "/logout", 6),
    ("doc.created", "POST", "/orgs/{org_id}/docs", 10),
    ("doc.updated", "PATCH", "/orgs/{org_id}/docs/{doc_id}", 30),
    ("doc.deleted", "DELETE", "/orgs/{org_id}/docs/{doc_id}", 4),
    ("doc.shared", "POST", "/orgs/{org_id}/docs/{doc_id}/shares", 6),
    ("member.invited", "POST", "/orgs/{org_id}/members", 2),
    ("member.removed", "DELETE", "/orgs/{org_id}/members/{member_id}", 1),
    ("role.updated", "PUT", "/orgs/{org_id}/members/{member_id}/role", 1),
    ("api_key.created", "POST", "/orgs/{org_id}/api-keys", 1),
    ("api_key.revoked", "DELETE", "/orgs/{org_id}/api-keys/{key_id}", 1),
    ("settings.updated", "PATCH", "/orgs/{org_id}/settings", 2),
    ("export.requested", "POST", "/orgs/{org_id}/exports", 2),
    ("billing.invoice.viewed", "GET", "/orgs/{org_id}/invoices/{invoice_id}", 3),
)
OUTCOMES: Final = (("success", 90), ("denied", 4), ("failure", 4), ("error", 2))
STATUS: Final = {"success": (200, 201, 204), "denied": (401, 403), "failure": (404, 409, 422)}
USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "python-httpx/0.27.0",
    "acme-cli/2.3.1",
)


def org_id(index: int) -> str:
    return f"org-{index:03d}"


def user_id(org: int, k: int) -> str:
    return f"usr_{org:03d}{k:02d}"


# -- building the archive ----------------------------------------------------------------------


def _event(rng: random.Random, org: int, unix_ns: int, day_seq: int) -> dict[str, Any]:
    action, method, route, _ = rng.choices(ACTIONS, weights=_ACTION_WEIGHTS)[0]
    outcome = rng.choices(_OUTCOME_NAMES, weights=_OUTCOME_WEIGHTS)[0]
    roll = rng.random()
    if roll < 0.87:  # users, mildly skewed: a few are much busier than the rest
        k = min(int(USERS_PER_ORG * rng.random() ** 1.6), USERS_PER_ORG - 1)
        actor: dict[str, Any] = {
            "id": user_id(org, k),
            "type": "user",
            "email": f"user{k}@org{org:03d}.example.com",
            "name": f"User {k} of Org {org}",
        }
    elif roll < 0.97:
        actor = {"id": f"key_{org:03d}{rng.randrange(API_KEYS_PER_ORG)}", "type": "api_key"}
    else:
        actor = {"id": "svc_scheduler", "type": "service"}
    doc = f"doc_{rng.randrange(100_000):05d}"
    path = route.replace("{org_id}", org_id(org)).replace("{doc_id}", doc)
    path = path.replace("{member_id}", f"mem_{rng.randrange(500)}")
    path = path.replace("{key_id}", f"key_{rng.randrange(50)}").replace("{invoice_id}", "inv_1")
    status = 500 if outcome == "error" else rng.choice(STATUS[outcome])
    ip = f"198.51.{org % 256}.{rng.randrange(1, 255)}"
    traced = rng.random() < 0.5
    return {
        "schema_version": 1,
        "id": uuid7(unix_ns),
        "occurred_at": format_timestamp(unix_ns),
        "action": action,
        "outcome": outcome,
        "org_id": org_id(org),
        "actor": actor,
        "target": {"type": action.split(".", 1)[0], "id": doc},
        "request": {
            "id": f"req-{org:03d}-{unix_ns // DAY_NS}-{day_seq}",
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": round(rng.expovariate(1 / 40), 3),
            "completed": True,
            "query": {},
            "headers": {"content-type": "application/json"} if method != "GET" else {},
        },
        "client": {"ip": ip, "peer": "10.0.0.12", "user_agent": rng.choice(USER_AGENTS)},
        "error": {"type": "TimeoutError"} if outcome == "error" else None,
        "metadata": {"revision": rng.randrange(1, 400)} if action == "doc.updated" else {},
        "trace": (
            {"trace_id": f"{rng.getrandbits(128):032x}", "span_id": f"{rng.getrandbits(64):016x}"}
            if traced
            else None
        ),
        "integrity": None,
    }


_ACTION_WEIGHTS: Final = [a[3] for a in ACTIONS]
_OUTCOME_NAMES: Final = [o[0] for o in OUTCOMES]
_OUTCOME_WEIGHTS: Final = [o[1] for o in OUTCOMES]


@dataclass
class Built:
    events: int = 0
    raw_bytes: int = 0
    jsonl_bytes: int = 0
    parquet_bytes: int = 0
    objects: int = 0


def _days() -> list[datetime]:
    return [LAST_DAY - timedelta(days=DAYS - 1 - d) for d in range(DAYS)]


def build_org(task: tuple[str, int, list[int]]) -> Built:
    """Write one org's partitions (both formats); ``counts[d]`` events on day ``d``."""
    root, org, counts = task
    built = Built()
    value = _partition_value(org_id(org))
    for day, count in zip(_days(), counts, strict=True):
        rng = random.Random(org * 1_000 + day.toordinal())
        start_ns = int(day.timestamp()) * 1_000_000_000
        times = sorted(start_ns + rng.randrange(DAY_NS) for _ in range(count))
        lines = b"".join(orjson.dumps(_event(rng, org, t, i)) + b"\n" for i, t in enumerate(times))
        dt = day.strftime("%Y-%m-%d")
        name = f"{WRITER}-{1:010d}"
        for fmt, suffix, data in (
            ("jsonl", ".jsonl.gz", gzip.compress(lines, compresslevel=6, mtime=0)),
            ("parquet", ".parquet", encode_parquet(lines)),
        ):
            directory = os.path.join(root, fmt, f"org_id={value}", f"dt={dt}")
            os.makedirs(directory, exist_ok=True)
            with open(os.path.join(directory, name + suffix), "wb") as f:
                f.write(data)
            if fmt == "jsonl":
                built.jsonl_bytes += len(data)
            else:
                built.parquet_bytes += len(data)
        built.events += count
        built.raw_bytes += len(lines)
        built.objects += 1
    return built


def build_archive(root: str, events: int) -> Built:
    partitions = ORGS * DAYS
    base, extra = divmod(events, partitions)
    tasks = []
    for org in range(ORGS):
        counts = [base + (1 if org * DAYS + d < extra else 0) for d in range(DAYS)]
        tasks.append((root, org, counts))
    total = Built()
    workers = max(1, min(os.cpu_count() or 1, 8))
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for done, part in enumerate(pool.imap_unordered(build_org, tasks), 1):
            total.events += part.events
            total.raw_bytes += part.raw_bytes
            total.jsonl_bytes += part.jsonl_bytes
            total.parquet_bytes += part.parquet_bytes
            total.objects += part.objects
            if done % 10 == 0 or done == ORGS:
                elapsed = time.perf_counter() - started
                print(f"  built {done}/{ORGS} orgs, {total.events:,} events, {elapsed:.0f} s")
    return total


# -- the queries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    org: str
    actor: str
    since: datetime
    until: datetime


def questions(reps: int) -> list[Question]:
    until = LAST_DAY + timedelta(days=1)
    since = until - WINDOW
    out = []
    for i in range(reps):
        org = (i * 37 + 11) % ORGS
        k = (i * 7 + 3) % 20  # among the busier users, so most pages are full
        out.append(Question(org_id(org), user_id(org, k), since, until))
    return out


def ask_reader(reader: ArchiveReader, q: Question) -> list[str]:
    page = reader.get_audit_logs(q.org, actor=q.actor, since=q.since, until=q.until, limit=LIMIT)
    return [str(e["id"]) for e in page.events]


def ask_http(client: httpx.Client, base: str, q: Question) -> list[str]:
    params = {
        "actor": q.actor,
        "since": q.since.isoformat(),
        "until": q.until.isoformat(),
        "limit": str(LIMIT),
    }
    response = client.get(f"{base}/orgs/{q.org}/audit-logs", params=params)
    response.raise_for_status()
    return [str(e["id"]) for e in response.json()["data"]]


def full_scan(root: str, q: Question) -> list[str]:
    """Read every Parquet file (no pruning, nothing pushed down), filter in memory."""
    dataset = ds.dataset(root, format="parquet")  # no partitioning: org/dt are not columns
    scanner = dataset.scanner(
        columns={
            "id": ds.field("id"),
            "occurred_at_text": ds.field("occurred_at_text"),
            "actor_id": ds.field("actor", "id"),
            "actor_email": ds.field("actor", "email"),
        },
        use_threads=True,
    )
    since, until = _text(q.since), _text(q.until)
    marker = f"/org_id={_partition_value(q.org)}/"
    hits = []
    for tagged in scanner.scan_batches():  # every batch of every file is read and decoded
        batch = tagged.record_batch
        if marker not in tagged.fragment.path:  # the org lives only in the path
            continue
        actor = pc.or_kleene(
            pc.equal(batch["actor_id"], q.actor), pc.equal(batch["actor_email"], q.actor)
        )
        when = pc.and_kleene(
            pc.greater_equal(batch["occurred_at_text"], since),
            pc.less(batch["occurred_at_text"], until),
        )
        hits.append(batch.filter(pc.fill_null(pc.and_kleene(actor, when), False)))
    if not hits:
        return []
    table = pa.Table.from_batches(hits)
    order = pc.sort_indices(
        table, sort_keys=[("occurred_at_text", "descending"), ("id", "descending")]
    )
    ids: list[str] = table.take(order[:LIMIT])["id"].to_pylist()
    return ids


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on loopback in a thread; yield its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def allow_all(request: Request, org: str) -> bool:
    return True


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Timings:
    samples: dict[str, list[float]] = field(default_factory=dict)
    hits: dict[str, list[int]] = field(default_factory=dict)

    def add(self, name: str, seconds: float, hits: int) -> None:
        self.samples.setdefault(name, []).append(seconds)
        self.hits.setdefault(name, []).append(hits)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def rotations(names: Sequence[str], rounds: int) -> Iterator[list[str]]:
    for r in range(rounds):
        shift = r % len(names)
        yield list(names[shift:]) + list(names[:shift])


def verdict(ok: bool) -> str:
    """PASS or MISS (a missed timing target never fails the run)."""
    return "PASS" if ok else "MISS"


def measure(root: str, reps: int) -> tuple[Timings, list[str]]:
    parquet = ArchiveReader(os.path.join(root, "parquet"))
    jsonl = ArchiveReader(os.path.join(root, "jsonl"))
    duck_parquet = DuckDBEngine(os.path.join(root, "parquet"))
    duck_jsonl = DuckDBEngine(os.path.join(root, "jsonl"))
    router = audit_log_router(parquet, authorize=allow_all)
    duck_router = audit_log_router(duck_parquet, authorize=allow_all)
    problems: list[str] = []
    timings = Timings()
    with (
        serve(router) as base,
        serve(duck_router) as duck_base,
        httpx.Client(timeout=120) as client,
    ):
        runs: dict[str, Callable[[Question], list[str]]] = {
            "a_parquet": lambda q: ask_reader(parquet, q),
            "a_jsonl": lambda q: ask_reader(jsonl, q),
            "b_full_scan": lambda q: full_scan(os.path.join(root, "parquet"), q),
            "c_http": lambda q: ask_http(client, base, q),
            "d_parquet": lambda q: ask_reader(duck_parquet, q),
            "d_jsonl": lambda q: ask_reader(duck_jsonl, q),
            "d_http": lambda q: ask_http(client, duck_base, q),
        }
        # Warm-up and the correctness check, on a question of its own.
        first = questions(1)[0]
        check = Question(org_id(ORGS - 1), user_id(ORGS - 1, 0), first.since, first.until)
        expected = runs["b_full_scan"](check)
        for name in runs:
            if name == "b_full_scan":
                continue
            got = runs[name](check)
            if got != expected:
                problems.append(
                    f"{name}: its {len(got)} ids differ from the full scan's newest "
                    f"{len(expected)} ({len(set(got) ^ set(expected))} ids not in both)"
                )
        print(
            f"correctness: {check.org}/{check.actor}: full scan newest {len(expected)} ids; "
            + (
                "(a), (c) and (d), Parquet and JSONL, return the same ids in the same order"
                if not problems
                else "MISMATCH"
            )
        )
        for q, order in zip(questions(reps), rotations(list(runs), reps), strict=True):
            for name in order:
                started = time.perf_counter()
                ids = runs[name](q)
                timings.add(name, time.perf_counter() - started, len(ids))
    return timings, problems


def print_table(t: Timings, reps: int) -> None:
    a = t.median("a_parquet")
    b = t.median("b_full_scan")
    d = t.median("d_parquet")
    speedup = b / a
    target = f"p50 < {TARGET_P50_S:g} s"
    rows = [
        ("(a) ArchiveReader, Parquet", "a_parquet", target, a < TARGET_P50_S),
        ("(a) ArchiveReader, JSONL gzip", "a_jsonl", "-", None),
        ("(b) full scan, Parquet, no pruning", "b_full_scan", "-", None),
        ("(c) HTTP API (uvicorn), Parquet", "c_http", "-", None),
        ("(d) DuckDBEngine, Parquet", "d_parquet", target, d < TARGET_P50_S),
        ("(d) DuckDBEngine, JSONL gzip", "d_jsonl", "-", None),
        ("(d) HTTP API over DuckDBEngine", "d_http", "-", None),
    ]
    print()
    print(f"One org, last 7 days, one actor, newest {LIMIT} (medians of {reps} repetitions)")
    header = f"{'measurement':<36} {'p50':>9} {'min':>9} {'max':>9} {'hits p50':>8}"
    print(f"{header}  {'target':<12} verdict")
    for label, name, target, ok in rows:
        s = t.samples[name]
        hits = int(statistics.median(t.hits[name]))
        line = f"{label:<36} {a_fmt(statistics.median(s))} {a_fmt(min(s))} {a_fmt(max(s))}"
        print(f"{line} {hits:>8}  {target:<12} {'' if ok is None else verdict(ok)}")
    label = "speed-up (b) / (a) Parquet"
    print(
        f"{label:<36} {speedup:>8.1f}x {'':>9} {'':>9} {'':>8}  "
        f">= {TARGET_SPEEDUP:g}x{'':<7} {verdict(speedup >= TARGET_SPEEDUP)}"
    )
    label = "speed-up (b) / (d) DuckDB Parquet"
    print(
        f"{label:<36} {b / d:>8.1f}x {'':>9} {'':>9} {'':>8}  "
        f">= {TARGET_SPEEDUP:g}x{'':<7} {verdict(b / d >= TARGET_SPEEDUP)}"
    )
    label = "(a) Parquet / (d) DuckDB Parquet"
    print(f"{label:<36} {a / d:>8.2f}x")
    label = "(a) JSONL / (d) DuckDB JSONL"
    print(f"{label:<36} {t.median('a_jsonl') / t.median('d_jsonl'):>8.2f}x")
    label = "(a) JSONL / (a) Parquet"
    print(f"{label:<36} {t.median('a_jsonl') / a:>8.2f}x")
    label = "(c) HTTP / (a) Parquet"
    print(f"{label:<36} {t.median('c_http') / a:>8.2f}x")


def a_fmt(seconds: float) -> str:
    return f"{seconds * 1000:>7.1f}ms" if seconds < 10 else f"{seconds:>8.2f}s"


def directory_bytes(path: str) -> int:
    total = 0
    for parent, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(parent, f)) for f in files)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--events", type=int, default=10_000_000, help="events to generate (default 10,000,000)"
    )
    parser.add_argument("--dir", help="build (or reuse) the archive here; never deleted")
    parser.add_argument("--keep", action="store_true", help="keep the temporary archive")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (>= 7 advised)")
    args = parser.parse_args(argv)
    if args.events < ORGS * DAYS:
        parser.error(f"--events must be at least {ORGS * DAYS}")
    root = args.dir or tempfile.mkdtemp(prefix="audit-query-bench-")
    print(
        f"archive: {root}  ({args.events:,} events, {ORGS} orgs x {DAYS} days, "
        f"{USERS_PER_ORG} users/org, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"pyarrow {pa.__version__})"
    )
    try:
        manifest = os.path.join(root, "manifest.json")
        reuse = False
        if args.dir and os.path.exists(manifest):
            with open(manifest) as f:
                reuse = json.load(f).get("events") == args.events
        if reuse:
            print("reusing the archive built earlier in this directory")
        else:
            for fmt in ("jsonl", "parquet"):
                shutil.rmtree(os.path.join(root, fmt), ignore_errors=True)
            started = time.perf_counter()
            built = build_archive(root, args.events)
            elapsed = time.perf_counter() - started
            with open(manifest, "w") as f:
                json.dump({"events": built.events}, f)
            print(
                f"build: {built.events:,} events in {built.objects:,} partitions x 2 formats, "
                f"{elapsed:.1f} s ({built.events / elapsed:,.0f} events/s)"
            )
            print(f"  raw JSON lines {built.raw_bytes / 1e9:.2f} GB")
        n = args.events
        for fmt in ("jsonl", "parquet"):
            size = directory_bytes(os.path.join(root, fmt))
            print(f"  {fmt:<8} {size / 1e6:>9.1f} MB  {size / n:>6.1f} bytes/event")
        timings, problems = measure(root, args.reps)
        print_table(timings, args.reps)
        for problem in problems:
            print(f"ERROR: {problem}")
        return 1 if problems else 0
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif not args.dir:
            print(f"kept the archive in {root}")


if __name__ == "__main__":
    sys.exit(main())
