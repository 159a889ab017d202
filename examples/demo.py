"""`make demo`: the whole library, end to end, on loopback.

1. Starts an S3 endpoint on loopback (moto's server) and creates an audit bucket the way
   ``audit-log bucket create`` does: versioning, Object Lock, retention lifecycle, encryption.
2. Wraps the example SaaS app (``examples/saas_fastapi.py``, no audit code of its own) in one
   line, ``AuditMiddleware(app, auditor=...)``, serving it with uvicorn.
3. Drives realistic traffic over HTTP: three organizations with their users (sign-ups, logins,
   invitations, role changes, API keys...) and a password-guessing burst that trips the
   brute-force signal.
4. Archives every event to S3 (gzip JSON Lines, hash-chained, with a signed digest), queries it
   back with the embedded engine, runs ``audit-log verify`` and prints a summary with the
   Security Activity dashboard's URL. ``--serve`` keeps the app and the dashboard up.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from audit_middleware import AuditMiddleware, Auditor
from audit_middleware.cli import main as audit_log
from audit_middleware.integrity._keys import generate_signing_key
from examples.demo_dashboard import mount_dashboard
from examples.demo_s3 import LoopbackS3, bucket_settings
from examples.saas_domain import Store, TokenService
from examples.saas_fastapi import RULES_FILE, create_app
from examples.scenario import Journal, drive_all_events
from exporters import InMemoryExporter, StructlogExporter
from exporters.archive import ArchiveExporter
from exporters.s3_bucket import create_bucket

OUT_DIR = Path("demo-output")
BUCKET = "audit-demo"
PREFIX = "audit"
RETENTION_DAYS = 90
ORGS = 3
BURST = 12
USER_AGENT = "Mozilla/5.0 (demo browser)"


class _Progress:
    def __init__(self, steps: int) -> None:
        self.steps, self.step, self.started = steps, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.step += 1
        elapsed = time.perf_counter() - self.started
        print(f"[{self.step}/{self.steps} {elapsed:5.1f}s] {text}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _burst(base: str, org_id: str, email: str) -> None:
    """Password guessing against an org member, on the org's sign-in page."""
    with httpx.Client(base_url=base, headers={"user-agent": "curl/8.5 (attacker)"}) as client:
        for i in range(BURST):
            body = {"email": email, "password": f"guess-{i}"}
            client.post("/auth/login", params={"org_id": org_id}, json=body)


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep the app and dashboard up")
    args = parser.parse_args()
    progress = _Progress(7)
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    OUT_DIR.mkdir()

    s3 = LoopbackS3()
    s3.start()
    progress(f"S3 endpoint (moto server) on {s3.url}")
    client = s3.client()
    for line in create_bucket(
        client, BUCKET, retention_days=RETENTION_DAYS, lock_mode="COMPLIANCE", prefix=PREFIX
    ):
        print(f"      {line}")
    progress(f"bucket s3://{BUCKET} ready: Object Lock, versioning, lifecycle, encryption")

    key = generate_signing_key()
    key_path = OUT_DIR / "signing-key.pem"
    key_path.write_bytes(key.pem())
    key_path.chmod(0o600)
    public_path = OUT_DIR / "signing-key.pub.pem"
    public_path.write_bytes(key.public.pem())
    archive = ArchiveExporter(
        f"s3://{BUCKET}/{PREFIX}",
        spool_dir=OUT_DIR / "spool",
        max_age=2.0,
        retention_days=RETENTION_DAYS,
        signing_key=key,
    )
    memory = InMemoryExporter()
    secret = secrets.token_urlsafe(32)
    auditor = Auditor(
        rules_file=RULES_FILE,
        exporters=[StructlogExporter(output=str(OUT_DIR / "audit.jsonl")), archive, memory],
        batch_interval=0.05,
        brute_force_threshold=5,
        environ={"SAAS_JWT_SECRET": secret},
    )
    store, tokens = Store.seeded(), TokenService(secret)
    inner = create_app(store, jwt_secret=secret)
    reader = _engine(f"s3://{BUCKET}/{PREFIX}")
    sign_in_link = mount_dashboard(inner, reader, store, tokens)
    app = AuditMiddleware(inner, auditor=auditor)  # the one line
    server, thread, base = _serve(app)
    progress(f"example SaaS app wrapped by AuditMiddleware, serving on {base}")

    journals: list[Journal] = []
    for n in range(ORGS):
        journals.append(drive_all_events(base, user_agent=USER_AGENT))
        print(f"      org {n + 1}/{ORGS}: {journals[-1].org_id}, {len(journals[-1].steps)} calls")
    first = journals[0]
    _burst(base, first.org_id, first.owner_email)
    progress(f"traffic: {ORGS} orgs, {sum(len(j.steps) for j in journals)} calls, {BURST} guesses")

    delivered = _settle(auditor) and archive.write_digests()
    objects = [
        item
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for item in page.get("Contents", [])
    ]
    data_objects = [o for o in objects if "/_integrity/" not in o["Key"]]
    settings = bucket_settings(client, BUCKET)
    progress(f"archived: {len(data_objects)} event objects + signed digest in s3://{BUCKET}")

    page = reader.get_audit_logs(first.org_id, limit=1000)
    failed = reader.get_audit_logs(first.org_id, action="user.login.failed", limit=1000).events
    across = reader.search(action="security.brute_force.suspected", limit=1000).events
    progress(
        f"queried back ({type(reader).__name__}): org {first.org_id} has {len(page.events)} "
        f"events, {len(failed)} failed logins; {len(across)} brute-force alerts across orgs"
    )

    command = ["verify", f"s3://{BUCKET}/{PREFIX}", "--public-key", str(public_path)]
    progress(f"audit-log {' '.join(command)}")
    verified = audit_log([*command, "--no-progress"]) == 0

    events = memory.events
    print(f"\n{'action':<34} {'outcome':<8} count")
    for (action, outcome), n in sorted(
        collections.Counter((e.action, e.outcome) for e in events).items()
    ):
        print(f"{action:<34} {outcome:<8} {n:>5}")
    stats = auditor.stats()
    print(
        f"\n{len(events)} events; pipeline processed {stats.processed}, dropped {stats.dropped}\n"
        f"S3 objects: {len(data_objects)} event objects, "
        f"{sum(o['Size'] for o in data_objects):,} bytes, "
        f"{len(objects) - len(data_objects)} digest/key objects\n"
        f"bucket: versioning {settings['versioning']}, Object Lock {settings['object_lock']}, "
        f"lifecycle rules {', '.join(settings['lifecycle'])}\n"
        f"verification: {'OK, 0 findings' if verified else 'FINDINGS (see above)'}; signing key "
        f"{key.fingerprint[:16]}... ({key_path}, public key {public_path})"
    )
    dashboard = base + sign_in_link(first.owner_id, first.org_id)
    print(f"\nSecurity Activity dashboard for {first.org_id}: {dashboard}")
    print(f"took {time.perf_counter() - progress.started:.1f} s")

    alerts = [e for e in events if e.action == "security.brute_force.suspected"]
    problems = [
        text
        for failed_check, text in [
            (not delivered, "not every event reached S3 with its digest"),
            (bool(stats.dropped), f"{stats.dropped} events dropped"),
            (not verified, "verification findings"),
            (not alerts, "no brute-force alert"),
            (len(failed) < BURST, f"only {len(failed)} failed logins in {first.org_id}"),
        ]
        if failed_check
    ]
    ok = not problems
    if args.serve and ok:
        print("serving the app and the dashboard (Ctrl+C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            thread.join()
    server.should_exit = True
    thread.join(timeout=10)
    auditor.shutdown()
    s3.stop()
    if not ok:
        sys.exit(f"demo failed: {'; '.join(problems)}")


def _settle(auditor: Auditor) -> bool:
    """Flush until no new event arrives: a request's event is queued just after its response,
    so the client may see the last response a moment before the server queued its event."""
    seen = -1
    while True:
        flushed = auditor.force_flush(timeout=30)
        processed = auditor.stats().processed
        if processed == seen or not flushed:
            return flushed
        seen = processed
        time.sleep(0.1)


def _engine(url: str) -> Any:
    """The embedded engine: DuckDB when installed, else the pure-Python reader."""
    try:
        from audit_middleware.duckdb_engine import DuckDBEngine

        return DuckDBEngine(url)
    except ImportError:
        from audit_middleware.query import ArchiveReader

        return ArchiveReader(url)


if __name__ == "__main__":
    main()
