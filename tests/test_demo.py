"""`make demo` end to end: S3 on loopback, the wrapped app, traffic, archive, query, verify."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_runs_end_to_end_and_verifies_clean(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "[7/7" in out
    assert "OK: no findings." in out
    assert "verification: OK, 0 findings" in out
    assert "security.brute_force.suspected" in out
    assert "Object Lock COMPLIANCE 90 days" in out
    assert "/demo/sign-in/" in out
    assert (tmp_path / "demo-output" / "audit.jsonl").stat().st_size > 0
