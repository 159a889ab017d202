"""`make demo`: the example SaaS API wrapped in one line, driven over real HTTP.

Starts uvicorn on loopback with ``examples/saas_fastapi.py`` (an app with no audit code) wrapped
by ``AuditMiddleware(app, rules_file="examples/audit-rules.toml")``, drives every audited API
call (``examples/scenario.py``) plus a burst of failed logins that trips the brute-force
signal, and prints the audit events that came out of the structured-log exporter.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import secrets
import socket
import threading
import time
from pathlib import Path

import httpx
import orjson
import uvicorn

from audit_middleware import AuditMiddleware, Auditor
from examples.saas_fastapi import RULES_FILE, create_app
from examples.scenario import drive_all_events
from exporters import InMemoryExporter, StructlogExporter

OUT_DIR = Path("demo-output")
USER_AGENT = "Mozilla/5.0 (demo browser)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _burst(base: str, email: str, attempts: int) -> None:
    """Password guessing against one account: the brute-force signal's job to notice."""
    with httpx.Client(base_url=base, headers={"user-agent": "curl/8.5 (attacker)"}) as c:
        for i in range(attempts):
            c.post("/auth/login", json={"email": email, "password": f"guess-{i}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help="keep the server running afterwards")
    args = parser.parse_args()

    OUT_DIR.mkdir(exist_ok=True)
    log_path = OUT_DIR / "audit.jsonl"
    log_path.unlink(missing_ok=True)
    secret = secrets.token_urlsafe(32)
    memory = InMemoryExporter()
    auditor = Auditor(
        rules_file=RULES_FILE,
        exporters=[StructlogExporter(output=str(log_path)), memory],
        batch_interval=0.1,
        brute_force_threshold=5,
        environ={"SAAS_JWT_SECRET": secret},
    )
    app = AuditMiddleware(create_app(jwt_secret=secret), auditor=auditor)  # the one line

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    started = time.perf_counter()
    print(f"[1/4] uvicorn on {base}: examples.saas_fastapi + AuditMiddleware + {RULES_FILE.name}")
    thread.start()
    while not server.started:
        time.sleep(0.02)

    print("[2/4] driving every audited call: sign-up, logins, 2FA, orgs, keys, flags, invites ...")
    journal = drive_all_events(base, user_agent=USER_AGENT)
    print(
        f"[3/4] {len(journal.audited_steps)} audited calls made; now 8 failed logins in a row ..."
    )
    _burst(base, "victim@example.test", 8)
    delivered = auditor.force_flush(timeout=10)

    events = memory.events
    counts = collections.Counter((e.action, e.outcome) for e in events)
    print(f"[4/4] {len(events)} audit events, delivered to every exporter: {delivered}\n")
    print(f"{'action':<34} {'outcome':<8} count")
    for (action, outcome), n in sorted(counts.items()):
        print(f"{action:<34} {outcome:<8} {n:>5}")
    alerts = [e for e in events if e.action == "security.brute_force.suspected"]
    for alert in alerts:
        target = f"{alert.target.type}:{alert.target.id}" if alert.target else "-"
        print(f"\nbrute force suspected on {target}: {alert.metadata.get('failures')} failures")
    lines = log_path.read_bytes().splitlines()
    sample = next(orjson.loads(line) for line in lines if b"org.api_key.created" in line)
    print(f"\n{len(lines)} JSON lines in {log_path}; the API key creation, as logged:")
    print(orjson.dumps(sample, option=orjson.OPT_INDENT_2).decode())
    stats = auditor.stats()
    print(
        f"\npipeline: processed {stats.processed}, dropped {stats.dropped}; "
        f"took {time.perf_counter() - started:.1f} s"
    )

    if args.serve:
        print(f"\nserving on {base} (Ctrl+C to stop)")
        with contextlib.suppress(KeyboardInterrupt):
            thread.join()
    server.should_exit = True
    thread.join(timeout=10)
    auditor.shutdown()
    if stats.dropped or not delivered or len(lines) != len(events) or not alerts:
        raise SystemExit("demo failed: audit events were lost or the brute-force signal is missing")


if __name__ == "__main__":
    main()
