"""Configuration: keyword arguments, then ``AUDIT_LOG_*`` environment variables, then defaults.

Every environment variable the library reads is named in this module (``ENV``), resolved once
when an :class:`~audit_middleware.Auditor` is built. A bad keyword raises ``ValueError`` or
``TypeError``; a bad environment value raises :class:`AuditConfigError` naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar, cast

from audit_middleware._client_ip import ProxyTrust
from audit_middleware._rules import UNMATCHED_POLICIES, UnmatchedPolicy

__all__ = ["ENV", "AuditConfig", "AuditConfigError", "Delivery", "IpPrivacy", "OverflowPolicy"]

OverflowPolicy = Literal["drop_newest", "drop_oldest"]
IpPrivacy = Literal["full", "truncate", "omit"]
OVERFLOW_POLICIES: Final[tuple[OverflowPolicy, ...]] = ("drop_newest", "drop_oldest")
IP_PRIVACY_MODES: Final[tuple[IpPrivacy, ...]] = ("full", "truncate", "omit")
Delivery = Literal["thread", "process"]
DELIVERY_MODES: Final[tuple[Delivery, ...]] = ("thread", "process")

#: Every environment variable, with its default as written in the environment.
ENV: Final[Mapping[str, str]] = {
    "AUDIT_LOG_ENABLED": "true",
    "AUDIT_LOG_EXPORTERS": "log",
    "AUDIT_LOG_LOG_OUTPUT": "stdout",
    "AUDIT_LOG_UNMATCHED": "state_changing",
    "AUDIT_LOG_TRUSTED_PROXIES": "",
    "AUDIT_LOG_FORWARDED_HEADER": "x-forwarded-for",
    "AUDIT_LOG_IP_PRIVACY": "full",
    "AUDIT_LOG_USER_AGENT_MAX_LENGTH": "512",
    "AUDIT_LOG_HEADERS": "host,origin,content-type,content-length,accept-language",
    "AUDIT_LOG_REDACT_KEYS": "",
    "AUDIT_LOG_ORG_PARAMS": "org_id,organization_id,tenant_id",
    "AUDIT_LOG_QUEUE_SIZE": "10000",
    "AUDIT_LOG_OVERFLOW": "drop_newest",
    "AUDIT_LOG_BATCH_SIZE": "512",
    "AUDIT_LOG_BATCH_INTERVAL": "0.5",
    "AUDIT_LOG_LOOP_BUILD": "64",
    "AUDIT_LOG_DELIVERY": "thread",
    "AUDIT_LOG_DELIVERY_PROCESSES": "1",
    "AUDIT_LOG_EXPORT_RETRIES": "5",
    "AUDIT_LOG_SHUTDOWN_TIMEOUT": "5",
    "AUDIT_LOG_RULES": "",
    "AUDIT_LOG_ORG_SOURCES": "",
    "AUDIT_LOG_JWT_KEY": "",
    "AUDIT_LOG_JWT_KEY_FILE": "",
    "AUDIT_LOG_JWT_ALGORITHMS": "",
    "AUDIT_LOG_JWT_AUDIENCE": "",
    "AUDIT_LOG_JWT_ISSUER": "",
    "AUDIT_LOG_JWT_ORG_CLAIM": "org_id",
    "AUDIT_LOG_BRUTE_FORCE_THRESHOLD": "10",
    "AUDIT_LOG_BRUTE_FORCE_WINDOW": "300",
    "AUDIT_LOG_TRACE_CONTEXT": "auto",
    "AUDIT_LOG_ARCHIVE_URL": "",
    "AUDIT_LOG_ARCHIVE_FORMAT": "jsonl",
    "AUDIT_LOG_ARCHIVE_MAX_EVENTS": "10000",
    "AUDIT_LOG_ARCHIVE_MAX_BYTES": "8388608",
    "AUDIT_LOG_ARCHIVE_MAX_AGE": "60",
    "AUDIT_LOG_ARCHIVE_GZIP_LEVEL": "3",
    "AUDIT_LOG_ARCHIVE_GZIP_ENGINE": "auto",
    "AUDIT_LOG_ARCHIVE_UPLOADS": "4",
    "AUDIT_LOG_SPOOL_DIR": "",
    "AUDIT_LOG_SPOOL_MAX_BYTES": "1073741824",
    "AUDIT_LOG_RETENTION_DAYS": "90",
    "AUDIT_LOG_OBJECT_LOCK": "auto",
    "AUDIT_LOG_STRICT": "false",
    "AUDIT_LOG_INTEGRITY": "true",
    "AUDIT_LOG_SIGNING_KEY": "",
    "AUDIT_LOG_SIGNING_KEY_FILE": "",
    "AUDIT_LOG_DIGEST_INTERVAL": "3600",
}


class AuditConfigError(ValueError):
    """A configuration value (keyword argument or environment variable) is invalid."""


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Resolved settings; build with :meth:`resolve`."""

    enabled: bool
    exporters: tuple[str, ...]
    log_output: str
    unmatched: UnmatchedPolicy
    trusted_proxies: ProxyTrust
    ip_privacy: IpPrivacy
    user_agent_max_length: int
    headers: tuple[str, ...]
    redact_keys: tuple[str, ...]
    org_params: tuple[str, ...]
    queue_size: int
    overflow: OverflowPolicy
    batch_size: int
    batch_interval: float
    loop_build: int
    delivery: Delivery
    delivery_processes: int
    export_retries: int
    shutdown_timeout: float
    rules_file: str
    org_sources: tuple[str, ...]
    jwt_key: str
    jwt_key_file: str
    jwt_algorithms: tuple[str, ...]
    jwt_audience: str
    jwt_issuer: str
    jwt_org_claim: str
    brute_force_threshold: int
    brute_force_window: float
    trace_context: Literal["auto", "on", "off"]
    archive_url: str
    archive_format: Literal["jsonl", "parquet"]
    archive_max_events: int
    archive_max_bytes: int
    archive_max_age: float
    archive_gzip_level: int
    archive_gzip_engine: Literal["auto", "isal", "zlib"]
    archive_uploads: int
    spool_dir: str
    spool_max_bytes: int
    retention_days: int
    object_lock: Literal["auto", "off", "compliance", "governance"]
    strict: bool
    integrity: bool
    digest_interval: float

    @classmethod
    def resolve(
        cls, overrides: Mapping[str, object], environ: Mapping[str, str] | None = None
    ) -> AuditConfig:
        """Combine keyword ``overrides`` (None = not given), the environment and defaults."""
        env = os.environ if environ is None else environ
        r = _Resolver(overrides, env)
        forwarded_header = r.get("forwarded_header", "AUDIT_LOG_FORWARDED_HEADER", _text)
        trust = r.get(
            "trusted_proxies",
            "AUDIT_LOG_TRUSTED_PROXIES",
            lambda s: ProxyTrust.parse(s, header=forwarded_header),
        )
        if not isinstance(trust, ProxyTrust):
            raise TypeError("trusted_proxies must be a ProxyTrust or a string like '1,10.0.0.0/8'")
        return cls(
            enabled=r.get("enabled", "AUDIT_LOG_ENABLED", _bool),
            exporters=r.get("exporters", "AUDIT_LOG_EXPORTERS", _names),
            log_output=r.get("log_output", "AUDIT_LOG_LOG_OUTPUT", _nonempty),
            unmatched=r.get("unmatched", "AUDIT_LOG_UNMATCHED", _choice(UNMATCHED_POLICIES)),
            trusted_proxies=trust,
            ip_privacy=r.get("ip_privacy", "AUDIT_LOG_IP_PRIVACY", _choice(IP_PRIVACY_MODES)),
            user_agent_max_length=r.get(
                "user_agent_max_length", "AUDIT_LOG_USER_AGENT_MAX_LENGTH", _int(16, 65536)
            ),
            headers=r.get("headers", "AUDIT_LOG_HEADERS", _names),
            redact_keys=r.get("redact_keys", "AUDIT_LOG_REDACT_KEYS", _names),
            org_params=r.get("org_params", "AUDIT_LOG_ORG_PARAMS", _names),
            queue_size=r.get("queue_size", "AUDIT_LOG_QUEUE_SIZE", _int(1, 10_000_000)),
            overflow=r.get("overflow", "AUDIT_LOG_OVERFLOW", _choice(OVERFLOW_POLICIES)),
            batch_size=r.get("batch_size", "AUDIT_LOG_BATCH_SIZE", _int(1, 100_000)),
            batch_interval=r.get("batch_interval", "AUDIT_LOG_BATCH_INTERVAL", _seconds),
            loop_build=r.get("loop_build", "AUDIT_LOG_LOOP_BUILD", _int(0, 100_000)),
            delivery=r.get("delivery", "AUDIT_LOG_DELIVERY", _choice(DELIVERY_MODES)),
            delivery_processes=r.get(
                "delivery_processes", "AUDIT_LOG_DELIVERY_PROCESSES", _int(1, 64)
            ),
            export_retries=r.get("export_retries", "AUDIT_LOG_EXPORT_RETRIES", _int(0, 100)),
            shutdown_timeout=r.get("shutdown_timeout", "AUDIT_LOG_SHUTDOWN_TIMEOUT", _seconds),
            rules_file=r.get("rules_file", "AUDIT_LOG_RULES", _text),
            org_sources=r.get("org_sources", "AUDIT_LOG_ORG_SOURCES", _sources),
            jwt_key=r.get("jwt_key", "AUDIT_LOG_JWT_KEY", _raw),
            jwt_key_file=r.get("jwt_key_file", "AUDIT_LOG_JWT_KEY_FILE", _text),
            jwt_algorithms=r.get("jwt_algorithms", "AUDIT_LOG_JWT_ALGORITHMS", _algorithms),
            jwt_audience=r.get("jwt_audience", "AUDIT_LOG_JWT_AUDIENCE", _text),
            jwt_issuer=r.get("jwt_issuer", "AUDIT_LOG_JWT_ISSUER", _text),
            jwt_org_claim=r.get("jwt_org_claim", "AUDIT_LOG_JWT_ORG_CLAIM", _text),
            brute_force_threshold=r.get(
                "brute_force_threshold", "AUDIT_LOG_BRUTE_FORCE_THRESHOLD", _threshold
            ),
            brute_force_window=r.get(
                "brute_force_window", "AUDIT_LOG_BRUTE_FORCE_WINDOW", _seconds
            ),
            trace_context=r.get(
                "trace_context", "AUDIT_LOG_TRACE_CONTEXT", _choice(("auto", "on", "off"))
            ),
            archive_url=r.get("archive_url", "AUDIT_LOG_ARCHIVE_URL", _text),
            archive_format=r.get(
                "archive_format", "AUDIT_LOG_ARCHIVE_FORMAT", _choice(("jsonl", "parquet"))
            ),
            archive_max_events=r.get(
                "archive_max_events", "AUDIT_LOG_ARCHIVE_MAX_EVENTS", _int(1, 10_000_000)
            ),
            archive_max_bytes=r.get(
                "archive_max_bytes", "AUDIT_LOG_ARCHIVE_MAX_BYTES", _int(1024, 5 << 30)
            ),
            archive_max_age=r.get("archive_max_age", "AUDIT_LOG_ARCHIVE_MAX_AGE", _seconds),
            archive_gzip_level=r.get(
                "archive_gzip_level", "AUDIT_LOG_ARCHIVE_GZIP_LEVEL", _int(1, 9)
            ),
            archive_gzip_engine=r.get(
                "archive_gzip_engine",
                "AUDIT_LOG_ARCHIVE_GZIP_ENGINE",
                _choice(("auto", "isal", "zlib")),
            ),
            archive_uploads=r.get("archive_uploads", "AUDIT_LOG_ARCHIVE_UPLOADS", _int(1, 64)),
            spool_dir=r.get("spool_dir", "AUDIT_LOG_SPOOL_DIR", _text),
            spool_max_bytes=r.get("spool_max_bytes", "AUDIT_LOG_SPOOL_MAX_BYTES", _int(1, 1 << 50)),
            retention_days=r.get("retention_days", "AUDIT_LOG_RETENTION_DAYS", _int(1, 36500)),
            object_lock=r.get(
                "object_lock",
                "AUDIT_LOG_OBJECT_LOCK",
                _choice(("auto", "off", "compliance", "governance")),
            ),
            strict=r.get("strict", "AUDIT_LOG_STRICT", _bool),
            integrity=r.get("integrity", "AUDIT_LOG_INTEGRITY", _bool),
            digest_interval=r.get("digest_interval", "AUDIT_LOG_DIGEST_INTERVAL", _seconds),
        )


class _Resolver:
    def __init__(self, overrides: Mapping[str, object], env: Mapping[str, str]) -> None:
        self._overrides = overrides
        self._env = env

    def get(self, key: str, env_name: str, parse: Callable[[str], T]) -> T:
        value = self._overrides.get(key)
        if value is not None:
            if isinstance(value, str) or not _is_parsed(value):
                text = value if isinstance(value, str) else _join(value)
                try:
                    return parse(text)
                except (ValueError, TypeError) as exc:
                    raise AuditConfigError(f"invalid {key}={value!r}: {exc}") from exc
            return cast(T, _check_parsed(key, value, parse))
        raw = self._env.get(env_name)
        text = ENV[env_name] if raw is None else raw
        try:
            return parse(text)
        except (ValueError, TypeError) as exc:
            raise AuditConfigError(
                f"environment variable {env_name}={text!r} is invalid: {exc}"
            ) from exc


def _is_parsed(value: object) -> bool:
    return not isinstance(value, (list, tuple, set, frozenset))


def _join(value: object) -> str:
    items = cast("list[object] | tuple[object, ...]", value)
    if not all(isinstance(v, str) for v in items):
        raise TypeError(f"expected a sequence of strings, got {value!r}")
    return ",".join(cast("list[str]", list(items)))


def _check_parsed(key: str, value: object, parse: Callable[[str], object]) -> object:
    """Validate a non-string keyword value by round-tripping it through the parser's rules."""
    if isinstance(value, ProxyTrust):
        return value
    if isinstance(value, bool):
        if parse is not _bool:
            raise TypeError(f"{key} must not be a bool")
        return value
    if isinstance(value, (int, float)):
        try:
            return parse(repr(value))
        except ValueError as exc:
            raise ValueError(f"invalid {key}={value!r}: {exc}") from exc
    raise TypeError(f"invalid type for {key}: {type(value).__name__}")


def _text(s: str) -> str:
    return s.strip()


def _raw(s: str) -> str:
    return s


def _sources(s: str) -> tuple[str, ...]:
    from audit_middleware._rules import Source

    specs = tuple(p.strip() for p in s.split(",") if p.strip())
    for spec in specs:
        Source.parse(spec)
    return specs


def _algorithms(s: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in s.split(",") if p.strip())
    if any(n.lower() == "none" for n in names):
        raise ValueError("the 'none' algorithm is never accepted")
    return names


def _threshold(s: str) -> int:
    n = _int(0, 1_000_000)(s)
    if n == 1:
        raise ValueError("expected 0 (off) or a whole number of at least 2")
    return n


def _nonempty(s: str) -> str:
    s = s.strip()
    if not s:
        raise ValueError("must not be empty")
    return s


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false, 1/0, yes/no or on/off")


def _names(s: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in s.split(",") if p.strip())
    if len(set(names)) != len(names):
        raise ValueError("names must not repeat")
    return names


def _choice(options: tuple[T, ...]) -> Callable[[str], T]:
    def parse(s: str) -> T:
        v = s.strip().lower()
        for option in options:
            if v == option:
                return option
        raise ValueError(f"expected one of {', '.join(map(str, options))}")

    return parse


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            n = int(s.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= n <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return n

    return parse


def _seconds(s: str) -> float:
    try:
        n = float(s.strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(n) or n <= 0:
        raise ValueError("expected a positive number of seconds")
    return n
