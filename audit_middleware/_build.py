"""Which build runs: the hot modules compiled by mypyc (``scripts/compile.py``) or pure Python.

Compiled modules are extension modules beside the ``.py`` files they were compiled from, and
Python imports an extension module ahead of source. ``AUDIT_LOG_PURE_PYTHON=1`` (read once, at
import) puts the ``.py`` files first again: to profile line by line, debug, or compare builds.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from types import ModuleType
from typing import Final

__all__ = ["PURE_PYTHON_ENV", "build_summary", "compiled_modules", "prefer_source_if_asked"]

PURE_PYTHON_ENV: Final = "AUDIT_LOG_PURE_PYTHON"
_PACKAGES: Final = ("audit_middleware.", "exporters.")


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds this library's modules in their ``.py`` files, never in compiled ones."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or not fullname.startswith(_PACKAGES):
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None  # a package, or not ours to find: the usual finders take over


def prefer_source_if_asked() -> None:
    """Import the pure-Python modules when ``AUDIT_LOG_PURE_PYTHON`` is true."""
    value = os.environ.get(PURE_PYTHON_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on") and not any(
        isinstance(f, _SourceFirst) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _SourceFirst())


def compiled_modules() -> tuple[str, ...]:
    """The names of this library's imported modules that run compiled (empty: pure Python)."""
    return tuple(
        sorted(
            name
            for name, module in list(sys.modules.items())
            if name.startswith(_PACKAGES)
            and str(getattr(module, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES))
        )
    )


def build_summary() -> str:
    """One line for benchmark reports: which build of the hot modules this process runs."""
    hot_entries = (
        "audit_middleware._asgi",
        "audit_middleware.integrity._chain",
        "audit_middleware._partition",
    )
    for entry in hot_entries:  # the request path's, the dispatcher's and the archive's
        importlib.import_module(entry)
    compiled = compiled_modules()
    if compiled:
        return f"compiled with mypyc: {len(compiled)} hot modules (scripts/compile.py)"
    if any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        return f"pure Python ({PURE_PYTHON_ENV}=1)"
    return "pure Python (nothing compiled: `make compiled` needs a C compiler)"
