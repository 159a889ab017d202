"""Exporters: where audit events go. Each honours ``export`` / ``force_flush`` / ``shutdown``.

Select them by name in ``AUDIT_LOG_EXPORTERS`` (comma-separated) or pass instances to
``AuditMiddleware(app, exporters=[...])``. Heavy optional dependencies are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from audit_middleware._export import Exporter, ExportResult
from exporters.log import StructlogExporter
from exporters.memory import InMemoryExporter

if TYPE_CHECKING:
    from audit_middleware._config import AuditConfig

__all__ = [
    "EXPORTER_NAMES",
    "ExportResult",
    "Exporter",
    "InMemoryExporter",
    "StructlogExporter",
    "create_exporter",
]

#: Names accepted in ``AUDIT_LOG_EXPORTERS``.
EXPORTER_NAMES = ("log",)


def create_exporter(name: str, config: AuditConfig) -> Exporter:
    """Build the exporter called ``name`` from the resolved configuration."""
    if name == "log":
        return StructlogExporter(output=config.log_output)
    raise ValueError(
        f"unknown exporter {name!r} in AUDIT_LOG_EXPORTERS: expected one of {EXPORTER_NAMES}"
    )
