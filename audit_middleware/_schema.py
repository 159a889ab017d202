"""The published JSON Schema of the audit event, shipped inside the package."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any, cast

__all__ = ["load_schema", "schema_path"]


def schema_path() -> Path:
    """Path of ``audit-event.v1.json``."""
    return Path(str(resources.files("audit_middleware") / "schema" / "audit-event.v1.json"))


@functools.cache
def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every event conforms to."""
    return cast(dict[str, Any], json.loads(schema_path().read_text(encoding="utf-8")))
