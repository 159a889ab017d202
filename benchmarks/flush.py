"""How long a flush of many organizations' partitions takes, by number of uploader threads.

Every partition (one per organization and day) is an object of its own, so a flush, a
shutdown, or a minute's ``AUDIT_LOG_ARCHIVE_MAX_AGE`` seals one object per active
organization, each one S3 ``PUT``. This benchmark spools ``--orgs`` organizations' events
(``--per-org`` each) into an ``ArchiveExporter`` with a disk spool, then times
``force_flush()``: sealing every partition and uploading every object, with 1, 4 (the default)
and 8 uploader threads (``AUDIT_LOG_ARCHIVE_UPLOADS``), interleaved round by round, medians.

Two endpoints:

* ``moto``: moto's S3 server in a child process on loopback. A ``PUT`` there costs moto's CPU
  (a few ms), on the same two cores as the exporter; no network latency.
* ``moto +30ms``: the same, with 30 ms of waiting added before each ``PUT``, as a model of the
  round trip to real S3 from inside its region (a model: the wait is a ``time.sleep``).

Every flush must report success and upload every object; the run exits non-zero otherwise.

Run: ``.venv/bin/python -m benchmarks.flush`` (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Final

from audit_middleware import AuditEvent, Target
from audit_middleware.testing import capture_audit_events
from benchmarks.archive import NullExporter, S3Process, make_auditor, wait_configured
from exporters.archive import DEFAULT_UPLOADS, ArchiveExporter

UPLOADS: Final = (1, DEFAULT_UPLOADS, 8)
ENDPOINTS: Final = {"moto": 0.0, "moto +30ms": 0.030}


def make_events(orgs: int, per_org: int) -> list[AuditEvent]:
    """``orgs * per_org`` sealed events, spread round-robin over ``orgs`` organizations."""
    auditor = make_auditor(NullExporter(), 0)
    with capture_audit_events() as captured:
        for i in range(orgs * per_org):
            auditor.record("doc.updated", org_id=f"org_{i % orgs}", target=Target("doc", str(i)))
    auditor.shutdown(timeout=5)
    return list(captured)


def with_latency(archive: ArchiveExporter, seconds: float) -> None:
    """Make each of the archive's uploads wait ``seconds`` first (a model of a round trip)."""
    if not seconds:
        return
    put = archive.store.put

    def slow_put(key: str, body: bytes) -> None:
        time.sleep(seconds)
        put(key, body)

    archive.store.put = slow_put  # type: ignore[method-assign]


def one_flush(
    s3: S3Process, bucket: str, events: Sequence[AuditEvent], uploads: int, latency: float
) -> tuple[float, list[str]]:
    """Seconds of ``force_flush()`` after spooling ``events``, and any problems found."""
    s3.make_bucket(bucket)
    with tempfile.TemporaryDirectory(prefix="audit-bench-flush-") as spool:
        archive = ArchiveExporter(
            f"s3://{bucket}", s3_client=s3.client(), spool_dir=spool, uploads=uploads
        )
        wait_configured(archive)
        with_latency(archive, latency)
        archive.export(events)
        start = time.perf_counter()
        flushed = archive.force_flush(timeout=300)
        seconds = time.perf_counter() - start
        stats = archive.stats()
        archive.shutdown(timeout=10)
    problems = []
    if not flushed or stats.uploaded_events != len(events):
        problems.append(
            f"{bucket}: flushed={flushed}, {stats.uploaded_events} of {len(events)} uploaded"
        )
    return seconds, problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orgs", type=int, default=500, help="organizations (500)")
    parser.add_argument("--per-org", type=int, default=10, help="events per organization (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    args = parser.parse_args(argv)
    events = make_events(args.orgs, args.per_org)
    print(
        f"flush of {args.orgs} partitions ({len(events):,} events, one object each), "
        f"{args.rounds} rounds, medians"
    )
    s3 = S3Process()
    s3.start()
    times: dict[tuple[str, int], list[float]] = {}
    problems: list[str] = []
    try:
        for r in range(args.rounds):
            for name, latency in ENDPOINTS.items():
                order = UPLOADS[r % len(UPLOADS) :] + UPLOADS[: r % len(UPLOADS)]
                for uploads in order:
                    bucket = f"flush-r{r}-u{uploads}-{'lat' if latency else 'lo'}"
                    seconds, more = one_flush(s3, bucket, events, uploads, latency)
                    problems += more
                    times.setdefault((name, uploads), []).append(seconds)
                    print(f"  round {r + 1} {name:<11} uploads={uploads}: {seconds:6.2f} s")
    finally:
        s3.stop()
    print(f"\n{'endpoint':<12}" + "".join(f"{f'uploads={u}':>12}" for u in UPLOADS) + "   speed-up")
    for name in ENDPOINTS:
        medians = [statistics.median(times[name, u]) for u in UPLOADS]
        cells = "".join(f"{m:>10.2f} s" for m in medians)
        print(f"{name:<12}{cells}   {medians[0] / medians[1]:.2f}x with {UPLOADS[1]}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
