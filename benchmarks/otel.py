"""Cost of the OTLP exporter per audit event, against the loopback test receivers.

For each transport (HTTP/protobuf and gRPC, with and without gzip) the exporter sends ``--batches``
batches of ``--batch-size`` realistic events (the request fields, an actor, a target, metadata and
a trace context) to the receiver of ``tests/otlp_receiver.py`` running in this process. Reported
per event: the CPU time of the exporting thread (mapping to log records, protobuf encoding,
compression, the client side of the request) and the wall time of ``export()`` (which includes
the receiver decoding in this same process, so it is pessimistic). Also reported: the mapping
alone (event → ``LogRecord`` fields, no encoding, no I/O).

Run::

    .venv/bin/python -m benchmarks.otel            # ~10 seconds
    .venv/bin/python -m benchmarks.otel --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from audit_middleware import Actor, AuditEvent, ClientInfo, ExportResult, RequestInfo, Target
from exporters.otel import OTLPExporter
from tests.otlp_receiver import GrpcReceiver, HttpReceiver


def _events(n: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            id=f"01936f3e-8e1c-7cc0-8a6b-{i:012x}",
            occurred_at="2026-11-27T12:00:00.123456Z",
            action="org.api_key.created",
            outcome="success",
            actor=Actor("u_alice", email="alice@acme.test"),
            org_id="org_acme",
            target=Target("api_key", f"key_{i}"),
            request=RequestInfo(
                f"req_{i}",
                "POST",
                "/orgs/org_acme/api-keys",
                "/orgs/{org_id}/api-keys",
                201,
                3.2,
                True,
                {"verbose": "1"},
                {"user-agent": "Mozilla/5.0 (X11; Linux x86_64)"},
            ),
            client=ClientInfo("203.0.113.5", "10.0.0.2", "Mozilla/5.0 (X11; Linux x86_64)"),
            metadata={"plan": "pro", "seats": 3},
            trace={"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
        )
        for i in range(n)
    ]


def _measure(run: Callable[[], None], rounds: int, per_round: int) -> tuple[float, float]:
    """Median µs per event: (thread CPU, wall)."""
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(rounds):
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        run()
        cpu.append((time.thread_time_ns() - c0) / per_round / 1000)
        wall.append((time.perf_counter_ns() - w0) / per_round / 1000)
    return statistics.median(cpu), statistics.median(wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 batches of 128")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.batches = 128, 3
    batch = _events(args.batch_size)
    lost = 0

    probe = OTLPExporter(endpoint="http://127.0.0.1:9/v1/logs", environ={})

    def map_only() -> None:
        for event in batch:
            probe._fields(event)  # the mapping alone: event -> LogRecord fields

    cpu, wall = _measure(map_only, args.batches, len(batch))
    probe.shutdown()
    print(f"{'mapping only':<22} {cpu:8.1f} µs CPU/event {wall:8.1f} µs wall/event")

    for name, receiver_class, protocol in (
        ("http", HttpReceiver, "http/protobuf"),
        ("grpc", GrpcReceiver, "grpc"),
    ):
        for compression in ("none", "gzip"):
            with receiver_class() as receiver:
                exporter = OTLPExporter(
                    endpoint=receiver.endpoint,
                    protocol=protocol,
                    compression=compression,
                    environ={},
                )
                failures = 0

                def send(exporter: OTLPExporter = exporter) -> None:
                    nonlocal failures
                    if exporter.export(batch) is not ExportResult.SUCCESS:
                        failures += 1

                send()  # warm up the connection
                cpu, wall = _measure(send, args.batches, len(batch))
                exporter.shutdown()
                expected = (args.batches + 1) * len(batch)
                lost += failures + expected - len(receiver.records)
                label = f"{name} {compression}"
                print(
                    f"{label:<22} {cpu:8.1f} µs CPU/event {wall:8.1f} µs wall/event "
                    f"({len(receiver.records)}/{expected} received)"
                )
    if lost:
        print(f"LOST {lost} events", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
