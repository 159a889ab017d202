"""What a Parquet archive object costs to encode, next to gzip JSON Lines, and what that allows.

The archive seals one object per partition segment (up to ``max_events``, 10,000 by default).
For gzip JSON Lines the seal compresses the segment's lines; for Parquet it parses them back
into columns and writes the file. This benchmark takes one realistic 10,000-event segment (the
events of ``benchmarks/archive.py``, sealed into the hash chain and rendered as the archive's
lines, all of one organization) and times, interleaved round by round, medians, in CPU µs per
event (the process's, every thread):

* ``gzip``: the archive's default compression of the segment (ISA-L when installed, level 3);
* ``encode_parquet``: the archive's Parquet encoding (parse, check, columns, write);
* ``pyarrow alone``: the floor of any encoder on pyarrow: Arrow arrays from column values that
  are already built (no parsing, no checks), then the same file written with the same options;
* ``write alone``: only the writing of an already built Arrow table.

With ``--pipeline-us`` (the CPU per event of the gzip JSON Lines archive with two delivery
processes: the "With 2 delivery processes" line of ``benchmarks/archive.py``), it also prints
the most events/s ``--cores`` cores (default: every CPU) could carry with Parquet instead,
each way: the pipeline minus ``gzip`` plus the Parquet cost, every one of those cores busy. A
bound, not a measurement of the archive.

Run: ``.venv/bin/python -m benchmarks.parquet_floor [--pipeline-us 15 [--cores 1.7]]`` (about
10 seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from audit_middleware import Target
from audit_middleware._lines import event_line
from audit_middleware.testing import capture_audit_events
from benchmarks.archive import FIELDS, TARGET_EPS, NullExporter, make_auditor
from exporters._gzip import gzip_encoder
from exporters._parquet import _lines, arrow_schema, decode_parquet, encode_parquet, write_table
from exporters._parquet_columns import columns

EVENTS: Final = 10_000  # ArchiveExporter's default max_events: one full object


def segment(n: int) -> bytes:
    """``n`` events as an archive segment of one partition: the lines the spool holds."""
    auditor = make_auditor(NullExporter(), 0)
    with capture_audit_events() as captured:
        for i in range(n):
            auditor.record(
                "doc.updated",
                org_id="org_0",
                target=Target("doc", str(i)),
                metadata={"field": FIELDS[i % 4], "revision": i % 97},
            )
        auditor.force_flush(timeout=30)
    auditor.shutdown(timeout=5)
    lines = [event_line(event) for event in captured]  # each ends in a newline
    if len(lines) != n or not all(b'"integrity":{' in line for line in lines):
        raise SystemExit("the benchmark's events were not all sealed into the hash chain")
    return b"".join(lines)


def cpu_us_per_event(work: Callable[[], object], events: int) -> float:
    """CPU µs per event of one call of ``work``: this process's, every thread (pyarrow's
    thread pool included)."""
    start = time.process_time_ns()
    work()
    return (time.process_time_ns() - start) / 1000 / events


def main(argv: Sequence[str] | None = None) -> int:
    """Time the encoders and print the table (and the bound, given ``--pipeline-us``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="rounds (15)")
    parser.add_argument(
        "--pipeline-us",
        type=float,
        help="CPU µs per event of the gzip JSON Lines archive with 2 delivery processes",
    )
    parser.add_argument(
        "--cores",
        type=float,
        default=float(os.cpu_count() or 1),
        help="cores the pipeline can use (default: every CPU; the archive benchmark's delivery "
        "processes use about 1.7 of 2 next to moto's server)",
    )
    args = parser.parse_args(argv)

    import pyarrow as pa

    data = segment(EVENTS)
    schema = arrow_schema()
    values = columns(_lines(data))

    def build_table() -> Any:  # Arrow arrays from the ready-made column values
        arrays = [pa.array(column, type=f.type) for column, f in zip(values, schema, strict=True)]
        return pa.Table.from_arrays(arrays, schema=schema)

    table = build_table()
    gzip = gzip_encoder("auto", 3)
    # The same file both ways, read back: the floor is a real encoder of this format.
    if decode_parquet(write_table(table)) != decode_parquet(encode_parquet(data)):
        raise SystemExit("the floor's file differs from encode_parquet's")

    ways: dict[str, Callable[[], object]] = {
        "gzip": lambda: gzip(data),
        "encode_parquet": lambda: encode_parquet(data),
        "pyarrow alone": lambda: write_table(build_table()),
        "write alone": lambda: write_table(table),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(args.rounds):
        names = list(ways)
        names = names[r % len(names) :] + names[: r % len(names)]
        for name in names:
            times[name].append(cpu_us_per_event(ways[name], EVENTS))
    med = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"one segment of {EVENTS:,} events ({len(data) / EVENTS:.0f} bytes per line), "
        f"{args.rounds} interleaved rounds, median CPU µs per event (spread)"
    )
    for name, value in med.items():
        low, high = min(times[name]), max(times[name])
        print(f"  {name:<15}{value:>8.2f}   ({low:.2f}-{high:.2f})")
    print(f"encode_parquet / gzip: {med['encode_parquet'] / med['gzip']:.1f}x")
    if args.pipeline_us:
        cores = args.cores
        rest = args.pipeline_us - med["gzip"]
        print(
            f"\nbound on {cores:g} cores, all busy, with the JSON Lines pipeline at "
            f"{args.pipeline_us:.1f} µs per event ({rest:.1f} µs without gzip):"
        )
        for name in ("gzip", "encode_parquet", "pyarrow alone"):
            total = rest + med[name]
            verdict = "reachable" if cores * 1e6 / total >= TARGET_EPS else "out of reach"
            print(
                f"  {name:<15}{total:>6.1f} µs per event: at most {cores * 1e6 / total:>9,.0f} "
                f"events/s ({TARGET_EPS:,.0f}: {verdict})"
            )
        need = cores * 1e6 / TARGET_EPS - rest
        print(f"  {TARGET_EPS:,.0f} events/s needs the encoding at <= {need:.1f} µs per event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
