"""Instructions per audited request, counted by valgrind's callgrind: repeatable on a noisy host.

This shared machine's timings swing by a factor of two from one minute to the next; the number
of instructions a piece of work executes does not. This script counts, side by side, the
instructions of a bare hello-world Starlette request (the baseline) and what the audit adds: the
request path (in the request, up to the queue) and the background work per event (build, hash
chain, rendering, log export: what the dispatcher and the lane do, here on one thread). The same
app, rules and exporter as ``benchmarks/overhead.py``.

Each figure is the difference between two runs with different request counts, so start-up and
warm-up cancel out. Instructions are not time (cache misses and branch mispredictions are not
counted), but a change that removes instructions removes work: use it to compare commits.

Needs Debian's ``valgrind`` package. Usage: ``python -m benchmarks.instructions``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from audit_middleware._build import build_summary

PHASES = ("bare", "path", "background")
_WARM = 600


def _instrument(on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
        check=True,
        capture_output=True,
    )


async def _child(phase: str, n: int) -> None:
    """Under callgrind: warm up, then count only ``phase`` for ``n`` requests."""
    from benchmarks import overhead as ob

    v = ob.build_variants(os.devnull)
    auditor = v.auditor
    pipeline = auditor.pipeline
    export = pipeline._lanes[0].exporter.export
    captured: list[object] = []
    pipeline.submit = captured.append  # type: ignore[method-assign, assignment]

    def background() -> None:  # what the dispatcher and the lane do, batch by batch
        for first in range(0, len(captured), 512):
            chunk = captured[first : first + 512]
            events = [e for item in chunk for e in auditor._build_unsealed(item)]
            batch, _ = pipeline._finish(events, [True] * len(events))
            export(batch)
        captured.clear()

    await ob._requests(v.apps["audit"], _WARM)
    await ob._requests(v.apps["bare"], _WARM)
    background()
    gc.collect()
    if phase == "bare":
        _instrument(True)
        await ob._requests(v.apps["bare"], n)
        _instrument(False)
    elif phase == "path":
        _instrument(True)
        await ob._requests(v.apps["audit"], n)
        _instrument(False)
    else:
        await ob._requests(v.apps["audit"], n)
        _instrument(True)
        background()
        _instrument(False)


def count(phase: str, n: int) -> int:
    """Instructions callgrind collected for ``phase`` over ``n`` requests (plus a constant)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/callgrind.out",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--child",
                phase,
                str(n),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=False,
        )
    match = re.search(r"Collected\s*:\s*(\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run failed ({phase}, {n}):\n{result.stderr[-2000:]}")
    return int(match.group(1))


def per_request(phase: str, small: int, large: int) -> float:
    """Instructions per request of ``phase``: the difference of two runs, divided."""
    return (count(phase, large) - count(phase, small)) / (large - small)


def main(argv: Sequence[str] | None = None) -> int:
    """Count every phase and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="the difference (2000)")
    parser.add_argument("--child", nargs=2, metavar=("PHASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(_child(args.child[0], int(args.child[1])))
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    small, large = 1000, 1000 + args.requests
    bare, path, background = (per_request(p, small, large) for p in PHASES)
    added = path - bare
    total = added + background
    print(f"instructions per request (callgrind; {small} vs {large} requests, difference)")
    print(f"build: {build_summary()}")
    rows = (
        ("bare Starlette request (baseline)", bare),
        ("audit request path, added", added),
        ("audit background work per event", background),
        ("audit total per event", total),
    )
    for label, value in rows:
        print(f"  {label:<38} {value:10,.0f}   {value / bare:5.2f} x bare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
