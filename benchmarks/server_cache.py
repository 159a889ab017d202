"""Per-request instructions and L1 cache misses inside a uvicorn server, simulated by callgrind.

A diagnostic for the HTTP ratio of ``benchmarks/overhead.py``: inside a server the audit costs
several times its in-process CPU, and this host has no hardware counters to say why. Here the
server runs under valgrind's callgrind with its cache simulation (32 KiB L1 instruction and
data caches), and a client in this process sends keep-alive requests one at a time. Each
figure is the difference between a run of 300 and one of 1,300 requests (after 200 warm-up
requests), divided by 1,000, so start-up cancels out. The counts repeat within about 0.3%.

Variants: ``bare`` (the hello-world app), ``path`` (with ``AuditMiddleware`` whose queue is a
no-op: the request path alone) and ``audit`` (everything, as in ``overhead.py``). A server
request runs about 700,000 instructions of uvicorn, asyncio and Starlette between two audited
ones, so the audit's code and data have left the L1 caches by the next request: an L1 miss
costs about ten times an instruction, and the misses added per request explain why the
in-process figures understate the cost inside a server.

Needs Debian's ``valgrind`` package; takes about 90 seconds per variant.
Usage: ``python -m benchmarks.server_cache [variant ...]``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from audit_middleware._build import build_summary

VARIANTS = ("bare", "path", "audit")
EVENTS = ("Ir", "I1mr", "D1mr", "D1mw")
_WARM = 200


def serve(variant: str, port: int) -> None:
    """Child (under valgrind): serve one variant on ``port`` until interrupted."""
    import uvicorn

    from benchmarks import overhead as ob

    v = ob.build_variants(os.devnull)
    if variant == "path":
        v.auditor.pipeline.submit = lambda item: True  # type: ignore[method-assign]
    app = v.apps["bare" if variant == "bare" else "audit"]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(port: int, proc: subprocess.Popen[bytes]) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 300  # imports under valgrind are slow
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.connect()
            return conn
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.5)


def _totals(path: str) -> dict[str, int]:
    """The PROGRAM TOTALS line of a callgrind output file, by event name."""
    text = subprocess.run(
        ["callgrind_annotate", path], capture_output=True, text=True, check=True
    ).stdout
    names_line = re.search(r"^Events recorded:\s*(.*)$", text, re.MULTILINE)
    totals = next(line for line in text.splitlines() if "PROGRAM TOTALS" in line)
    if names_line is None:
        raise RuntimeError(f"no event names in {path}")
    values = [int(v.replace(",", "")) for v in re.findall(r"([\d,]+) \(", totals)]
    return dict(zip(names_line.group(1).split(), values, strict=True))


def count(variant: str, requests: int) -> dict[str, int]:
    """Callgrind's totals for a server of ``variant`` that served ``requests`` (+ warm-up)."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "benchmarks.server_cache",
            "--serve",
            variant,
            str(port),
        ]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            conn = _connect(port, proc)
            for _ in range(_WARM + requests):
                conn.request("POST", "/hello", body=b"x")
                conn.getresponse().read()
            conn.close()
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=600)
        if proc.returncode not in (0, -signal.SIGINT):
            raise RuntimeError(f"{variant} server failed:\n{err.decode()[-2000:]}")
        return _totals(out)


def per_request(variant: str, small: int = 300, large: int = 1300) -> dict[str, float]:
    """Each event per request: the difference of two runs, divided."""
    a, b = count(variant, small), count(variant, large)
    return {name: (b[name] - a[name]) / (large - small) for name in EVENTS}


def main(argv: Sequence[str] | None = None) -> int:
    """Count the variants and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("variants", nargs="*", help=f"default: {' '.join(VARIANTS)}")
    parser.add_argument("--serve", nargs=2, metavar=("VARIANT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print("needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    variants = args.variants or list(VARIANTS)
    if "bare" not in variants:
        variants.insert(0, "bare")
    print("per request inside uvicorn (callgrind, 32 KiB L1 caches simulated; 300 vs 1,300)")
    print(f"build: {build_summary()}")
    results = {variant: per_request(variant) for variant in variants}
    bare = results["bare"]
    print(
        f"{'variant':<10}"
        + "".join(f"{name:>22}" for name in ("instructions", "L1i misses", "L1d misses"))
    )
    for variant, r in results.items():
        cells = (r["Ir"], r["I1mr"], r["D1mr"] + r["D1mw"])
        base = (bare["Ir"], bare["I1mr"], bare["D1mr"] + bare["D1mw"])
        row = ""
        for value, baseline in zip(cells, base, strict=True):
            added = "" if variant == "bare" else f"({value - baseline:+,.0f})"
            row += f"{value:>12,.0f}{added:>11}"
        print(f"{variant:<10}{row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
