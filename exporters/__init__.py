"""Exporters: where audit events go. Each honours ``export`` / ``force_flush`` / ``shutdown``.

Select them by name in ``AUDIT_LOG_EXPORTERS`` (comma-separated) or pass instances to
``AuditMiddleware(app, exporters=[...])``. Heavy optional dependencies are imported lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from audit_middleware._export import Exporter, ExportResult
from exporters.log import StructlogExporter
from exporters.memory import InMemoryExporter

if TYPE_CHECKING:
    from audit_middleware._config import AuditConfig
    from audit_middleware.integrity._keys import SigningKey

__all__ = [
    "EXPORTER_NAMES",
    "ExportResult",
    "Exporter",
    "InMemoryExporter",
    "StructlogExporter",
    "create_exporter",
]

#: Names accepted in ``AUDIT_LOG_EXPORTERS``.
EXPORTER_NAMES = ("log", "otlp", "archive")


def create_exporter(
    name: str, config: AuditConfig, environ: Mapping[str, str] | None = None
) -> Exporter:
    """Build the exporter called ``name`` from the resolved configuration (and ``OTEL_*``)."""
    if name == "log":
        return StructlogExporter(output=config.log_output)
    if name == "otlp":
        from exporters.otel import from_environment

        return from_environment(environ)
    if name == "archive":
        from exporters.archive import ArchiveExporter

        if not config.archive_url:
            raise ValueError(
                "AUDIT_LOG_EXPORTERS names 'archive' but AUDIT_LOG_ARCHIVE_URL is empty"
            )
        lock = None if config.object_lock == "off" else config.object_lock
        return ArchiveExporter(
            config.archive_url,
            spool_dir=config.spool_dir or None,
            spool_max_bytes=config.spool_max_bytes,
            max_events=config.archive_max_events,
            max_bytes=config.archive_max_bytes,
            max_age=config.archive_max_age,
            retention_days=config.retention_days,
            object_lock=lock if lock in (None, "auto") else lock.upper(),
            format=config.archive_format,
            gzip_level=config.archive_gzip_level,
            gzip_engine=config.archive_gzip_engine,
            uploads=config.archive_uploads,
            signing_key=_signing_key(environ),
            digest_interval=config.digest_interval,
        )
    raise ValueError(
        f"unknown exporter {name!r} in AUDIT_LOG_EXPORTERS: expected one of {EXPORTER_NAMES}"
    )


def _signing_key(environ: Mapping[str, str] | None) -> SigningKey | None:
    from audit_middleware.integrity._keys import signing_key_from_env

    return signing_key_from_env(environ)
