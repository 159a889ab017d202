"""`make demo`: the example SaaS API under the audit middleware, driven over real HTTP.

Starts uvicorn on loopback with the example app wrapped in one line, sends a realistic burst of
requests (failed and successful logins, API keys, settings changes, a forbidden cross-tenant
attempt), then prints the audit events that came out of the structured-log exporter.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import orjson
import uvicorn

from audit_middleware import AuditMiddleware, Auditor
from examples.saas_app import RULES, create_app
from exporters import InMemoryExporter, StructlogExporter

OUT_DIR = Path("demo-output")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drive(base: str) -> int:
    """Send the demo traffic; return the number of requests."""
    sent = 0
    ua = {"user-agent": "Mozilla/5.0 (demo browser)"}
    with httpx.Client(base_url=base, headers=ua, timeout=10) as c:

        def call(method: str, path: str, **kw: object) -> httpx.Response:
            nonlocal sent
            sent += 1
            return c.request(method, path, **kw)  # type: ignore[arg-type]

        for password in ("123456", "password", "letmein"):
            call("POST", "/auth/login", json={"email": "alice@acme.test", "password": password})
        alice = call(
            "POST", "/auth/login", json={"email": "alice@acme.test", "password": "correct horse"}
        )
        bob = call("POST", "/auth/login", json={"email": "bob@acme.test", "password": "hunter2"})
        a = {"authorization": f"Bearer {alice.json()['token']}"}
        b = {"authorization": f"Bearer {bob.json()['token']}"}
        key = call("POST", "/orgs/org_acme/api-keys", json={"name": "ci"}, headers=a).json()
        call("GET", "/orgs/org_acme/api-keys", headers=a)
        call("PATCH", "/orgs/org_acme/settings", json={"sso_required": True}, headers=a)
        call("PATCH", "/orgs/org_acme/settings", json={"sso_required": False}, headers=b)
        call("POST", "/orgs/org_globex/api-keys", json={"name": "sneaky"}, headers=b)
        call("POST", "/orgs/org_acme/exports", headers=a)
        call("DELETE", f"/orgs/org_acme/api-keys/{key['id']}", headers=a)
        call("GET", "/health")
        call("POST", "/auth/logout", headers=b)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep the server running afterwards")
    args = parser.parse_args()

    OUT_DIR.mkdir(exist_ok=True)
    log_path = OUT_DIR / "audit.jsonl"
    log_path.unlink(missing_ok=True)
    memory = InMemoryExporter()
    auditor = Auditor(
        rules=RULES,
        exporters=[StructlogExporter(output=str(log_path)), memory],
        batch_interval=0.1,
        environ=dict(os.environ),
    )
    app = AuditMiddleware(create_app(), auditor=auditor)  # the one line

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    print(f"[1/3] starting uvicorn on http://127.0.0.1:{port} with AuditMiddleware(app) ...")
    thread.start()
    while not server.started:
        time.sleep(0.02)

    print(
        "[2/3] driving traffic: logins (3 failed), API keys, settings, a cross-tenant attempt ..."
    )
    sent = _drive(f"http://127.0.0.1:{port}")
    delivered = auditor.force_flush(timeout=10)

    events = memory.events
    print(f"[3/3] {sent} requests -> {len(events)} audit events, delivered: {delivered}\n")
    header = (
        f"{'time (UTC)':<16} {'action':<26} {'outcome':<8} {'actor':<9} {'org':<11} "
        f"{'target':<18} ip"
    )
    print(header)
    print("-" * len(header))
    for e in events:
        target = f"{e.target.type}:{e.target.id}" if e.target else "-"
        print(
            f"{e.occurred_at[11:26]:<16} {e.action:<26} {e.outcome:<8} {e.actor.id or 'anon':<9} "
            f"{e.org_id or '-':<11} {target[:18]:<18} {e.client.ip if e.client else '-'}"
        )
    lines = log_path.read_bytes().splitlines()
    print(
        f"\n{len(lines)} JSON lines written by the structlog exporter to {log_path}; the first one:"
    )
    print(orjson.dumps(orjson.loads(lines[0]), option=orjson.OPT_INDENT_2).decode())
    stats = auditor.stats()
    print(f"\npipeline: processed {stats.processed}, dropped {stats.dropped}")

    if args.serve:
        print(f"\nserving on http://127.0.0.1:{port} (Ctrl+C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            thread.join()
    server.should_exit = True
    thread.join(timeout=10)
    auditor.shutdown()
    if stats.dropped or not delivered or len(lines) != len(events):
        raise SystemExit("demo failed: audit events were lost")


if __name__ == "__main__":
    main()
