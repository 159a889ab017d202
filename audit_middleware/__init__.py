"""Audit logs for B2B SaaS: ``app = AuditMiddleware(app)`` (ASGI) or ``AuditWSGIMiddleware(app)``
(WSGI) turns requests into audit events.

Capture happens here; delivery lives in the ``exporters`` package.
"""

from audit_middleware._build import compiled_modules, prefer_source_if_asked

prefer_source_if_asked()  # before the first hot module is imported

# ruff: noqa: E402
from audit_middleware._asgi import AuditMiddleware
from audit_middleware._auditor import Auditor, get_default_auditor, record
from audit_middleware._batch import EventBatch, batch_lines
from audit_middleware._bruteforce import BruteForcePolicy
from audit_middleware._client_ip import ProxyTrust
from audit_middleware._config import ENV, AuditConfig, AuditConfigError
from audit_middleware._delivery_process import DeliveryProcess
from audit_middleware._event import (
    SCHEMA_VERSION,
    Actor,
    AuditEvent,
    ClientInfo,
    ErrorInfo,
    RequestInfo,
    Target,
)
from audit_middleware._export import Exporter, ExportResult
from audit_middleware._handler_api import (
    add_metadata,
    set_action,
    set_actor,
    set_org,
    set_target,
    skip_audit,
)
from audit_middleware._jwt import JWTConfig
from audit_middleware._pipeline import ExporterStats, PipelineStats
from audit_middleware._rules import Rule
from audit_middleware._rules_file import RulesFileError, load_rules_file
from audit_middleware._schema import load_schema, schema_path
from audit_middleware._version import __version__
from audit_middleware._wsgi import AuditWSGIMiddleware

__all__ = [
    "ENV",
    "SCHEMA_VERSION",
    "Actor",
    "AuditConfig",
    "AuditConfigError",
    "AuditEvent",
    "AuditMiddleware",
    "AuditWSGIMiddleware",
    "Auditor",
    "BruteForcePolicy",
    "ClientInfo",
    "DeliveryProcess",
    "ErrorInfo",
    "EventBatch",
    "ExportResult",
    "Exporter",
    "ExporterStats",
    "JWTConfig",
    "PipelineStats",
    "ProxyTrust",
    "RequestInfo",
    "Rule",
    "RulesFileError",
    "Target",
    "__version__",
    "add_metadata",
    "batch_lines",
    "compiled_modules",
    "get_default_auditor",
    "load_rules_file",
    "load_schema",
    "record",
    "schema_path",
    "set_action",
    "set_actor",
    "set_org",
    "set_target",
    "skip_audit",
]
