"""Compile the request path's, the dispatcher's and the archive's hot modules with mypyc, in place.

The compiled build runs the same source as the pure-Python one, about a fifth fewer
instructions per audited request (``benchmarks/instructions.py``). It is optional: without a C
compiler this prints why and leaves the pure-Python modules in charge. An extension module
shadows the ``.py`` beside it, so a compiled module older than any source of the packages is
stale: ``--check`` reports that, and ``make`` rebuilds. ``AUDIT_LOG_PURE_PYTHON=1`` runs the
pure-Python modules even where compiled ones exist.

In these modules, a module-level value read per request or per event is ``Final``: compiled code
reads a ``Final`` value directly, and any other global (a function or class imported from an
uncompiled module included) through a lookup in the module's dict at every use. Hence aliases
such as ``_dumps: Final = orjson.dumps``.

Usage: ``python scripts/compile.py [--if-needed | --check | --clean] [--require]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The modules every audited request runs through, in the request and in the dispatcher, and the
# archive's Parquet reader of a segment's lines. The event model (_event.py) stays interpreted:
# compiled classes cannot be pickled or subclassed.
HOT_MODULES = (
    "audit_middleware/_asgi.py",
    "audit_middleware/_builder.py",
    "audit_middleware/_context.py",
    "audit_middleware/_ids.py",
    "audit_middleware/_lines.py",
    "audit_middleware/_partition.py",
    "audit_middleware/_sanitize.py",
    "audit_middleware/_views.py",
    "audit_middleware/_wire.py",
    "audit_middleware/integrity/_document.py",
    "audit_middleware/integrity/_seal.py",
    "exporters/_parquet_columns.py",
)
GROUP = "audit_middleware_hot"
_PACKAGES = ("audit_middleware", "exporters")
_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def compiled_path(source: str) -> Path:
    """Where the extension module compiled from ``source`` lives."""
    return ROOT / (source.removesuffix(".py") + _SUFFIX)


def _compiled_files() -> list[Path]:
    """Every compiled module in the packages, and the library they share."""
    found = [p for package in _PACKAGES for p in (ROOT / package).rglob("*.so")]
    return [*found, *ROOT.glob(f"{GROUP}__mypyc*.so")]


def stale() -> list[str]:
    """Compiled modules that may not match the sources: not a hot module's, or older than any
    module of the packages (compiled code relies on the types it imports, such as the event's
    named tuples, not only on its own source)."""
    newest = max(p.stat().st_mtime for package in _PACKAGES for p in (ROOT / package).rglob("*.py"))
    hot = {compiled_path(m) for m in HOT_MODULES}
    return [
        str(path.relative_to(ROOT))
        for path in _compiled_files()
        if (path not in hot and not path.name.startswith(GROUP)) or path.stat().st_mtime < newest
    ]


def clean() -> None:
    """Remove every compiled module: the pure-Python ones take over."""
    for path in _compiled_files():
        path.unlink()


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


def build() -> None:
    """Compile :data:`HOT_MODULES` in a scratch directory and move the results into place."""
    with tempfile.TemporaryDirectory(prefix="audit-mypyc-") as scratch:
        # In a scratch directory, so setuptools does not read this project's pyproject.toml
        # (it is built by hatchling); mypy still reads its [tool.mypy] settings.
        script = (
            "import sys\n"
            "from setuptools import setup\n"
            "from mypyc.build import mypycify\n"
            "paths = sys.argv[1:]\n"
            "sys.argv = [sys.argv[0], 'build_ext', '--build-lib', 'out']\n"
            f"setup(name={GROUP!r}, py_modules=[], ext_modules=mypycify(\n"
            "    ['--config-file', " + repr(str(ROOT / "pyproject.toml")) + ", *paths],\n"
            f"    group_name={GROUP!r}, target_dir='c'))\n"
        )
        Path(scratch, "setup.py").write_text(script)
        sources = [str(ROOT / m) for m in HOT_MODULES]
        done = subprocess.run(  # noqa: S603 (our interpreter, our sources)
            [sys.executable, "setup.py", *sources],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            clean()  # never leave older compiled modules shadowing the sources
            raise SystemExit(f"mypyc failed (exit {done.returncode}); see above")
        clean()
        for module in HOT_MODULES:
            built = Path(scratch, "out", compiled_path(module).relative_to(ROOT))
            shutil.move(built, compiled_path(module))
        shared = f"{GROUP}__mypyc{_SUFFIX}"
        shutil.move(Path(scratch, "out", shared), ROOT / shared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a compiled module is stale")
    mode.add_argument("--clean", action="store_true", help="remove the compiled modules")
    mode.add_argument(
        "--if-needed", action="store_true", help="compile only if a module is missing or stale"
    )
    parser.add_argument("--require", action="store_true", help="fail without a C compiler")
    args = parser.parse_args(argv)
    if args.clean:
        clean()
        return 0
    if args.check:
        old = stale()
        for path in old:
            print(f"stale compiled module: {path} (run `make compiled` or `make pure`)")
        return 1 if old else 0
    if _compiler() is None:
        message = "no C compiler found: the pure-Python modules run (install gcc to compile)"
        if args.require:
            raise SystemExit(message)
        print(message)
        clean()
        return 0
    if args.if_needed and all(p.exists() for p in map(compiled_path, HOT_MODULES)) and not stale():
        print("compiled hot modules are up to date")
        return 0
    build()
    print(f"compiled {len(HOT_MODULES)} hot modules with mypyc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
