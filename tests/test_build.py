"""The compiled build (``scripts/compile.py``, mypyc) and the pure-Python one behave alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.build_probe import HOT
from tests.conftest import compile_script

ROOT = Path(__file__).resolve().parent.parent


def _probe(pure: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "AUDIT_LOG_PURE_PYTHON"}
    if pure:
        env["AUDIT_LOG_PURE_PYTHON"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "tests.build_probe"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture(scope="module")
def pure() -> dict[str, Any]:
    return _probe(pure=True)


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    return _probe(pure=False)


def test_probe_names_the_modules_the_compile_script_compiles() -> None:
    modules = {m.removesuffix(".py").replace("/", ".") for m in compile_script.HOT_MODULES}
    assert modules == set(HOT)


def test_pure_python_switch_imports_every_module_from_source(pure: dict[str, Any]) -> None:
    assert pure["compiled"] == []
    assert set(pure["files"]) == set(HOT)
    assert all(path.endswith(".py") for path in pure["files"].values()), pure["files"]


def test_the_compiled_build_runs_where_a_compiler_built_it(default: dict[str, Any]) -> None:
    built = [m for m in compile_script.HOT_MODULES if compile_script.compiled_path(m).exists()]
    if compile_script._compiler() is not None and not built:
        pytest.fail("a C compiler is here but nothing is compiled: run `make compiled`")
    expected = sorted(m.removesuffix(".py").replace("/", ".") for m in built)
    assert default["compiled"] == expected


def test_both_builds_produce_identical_bytes(pure: dict[str, Any], default: dict[str, Any]) -> None:
    for part in ("canonical", "lines", "middleware", "partitions", "parquet"):
        assert default[part] == pure[part], part
    assert len(pure["lines"]) == 3
    assert len(pure["parquet"][0]) == 3  # the Parquet fast path read every line
    assert pure["parquet_unvouched"] == default["parquet_unvouched"] == "not vouched"
    # the sealed events, reversed, grouped by org and day: each group back in chain order
    assert [(key, ids) for key, ids, _ in pure["partitions"]] == [
        (["None", "2026-11-27"], ["e1", "e3"]),
        (["acme", "2026-11-27"], ["e2"]),
    ]
    assert pure["partitions"][0][2] == [pure["lines"][0], pure["lines"][2]]
    assert len(pure["middleware"]) == 2  # the health check is a read no rule names
    login = pure["middleware"][0]
    assert login["action"] == "user.login.failed"
    assert login["request"]["query"]["token"] == "[REDACTED]"
    assert "\x1b" not in login["client"]["user_agent"]


def test_no_compiled_module_here_is_stale() -> None:
    assert compile_script.stale() == []


def test_stale_compiled_modules_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiled module shadows the source beside it: one older than any source of the
    package (its own, or a module whose types it was compiled against) or one that is not a
    hot module's is stale."""
    monkeypatch.setattr(compile_script, "ROOT", tmp_path)
    for module in compile_script.HOT_MODULES:
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text("")
    event = tmp_path / "audit_middleware" / "_event.py"
    event.write_text("")
    os.utime(event, (1_000, 1_000))
    for module in compile_script.HOT_MODULES:
        os.utime(tmp_path / module, (1_000, 1_000))
        compile_script.compiled_path(module).write_bytes(b"")
    assert compile_script.stale() == []

    os.utime(event, (3_000_000_000, 3_000_000_000))  # the event model changed after compiling
    assert len(compile_script.stale()) == len(compile_script.HOT_MODULES)
    os.utime(event, (1_000, 1_000))

    plan = tmp_path / "exporters" / "_parquet.py"  # the Parquet reader's plan, in exporters
    plan.write_text("")
    os.utime(plan, (3_000_000_000, 3_000_000_000))
    assert len(compile_script.stale()) == len(compile_script.HOT_MODULES)
    os.utime(plan, (1_000, 1_000))

    orphan = tmp_path / "audit_middleware" / f"_gone{compile_script._SUFFIX}"
    orphan.write_bytes(b"")
    assert compile_script.stale() == [str(orphan.relative_to(tmp_path))]


def test_public_classes_stay_picklable_and_subclassable() -> None:
    """What compiling a class would take away (the event model is never compiled)."""
    import copy
    import pickle

    from audit_middleware import Actor, AuditMiddleware, ClientInfo, ErrorInfo, Target

    for value in (Actor("u1", email="a@b"), Target("doc", "d1"), ErrorInfo("KeyError"),
                  ClientInfo("203.0.113.9", "10.0.0.1", "ua")):  # fmt: skip
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value

    class Named(AuditMiddleware):
        name = "mine"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    wrapped = Named(app, exporters=[], environ={})
    try:
        assert wrapped.name == "mine"
        assert wrapped.app is app
    finally:
        wrapped.auditor.shutdown(timeout=1.0)


def test_the_compiled_wheel_compiles_the_same_modules() -> None:
    """pyproject.toml's mypyc build hook (compiled wheels) and scripts/compile.py agree."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    hook = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["mypyc"]
    assert hook["enable-by-default"] is False  # plain installs stay pure Python
    assert sorted(p.removeprefix("/") for p in hook["include"]) == sorted(
        compile_script.HOT_MODULES
    )
