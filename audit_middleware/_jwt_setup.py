"""Assemble a :class:`JWTConfig` from the environment or a rules file's ``[jwt]`` table."""

from __future__ import annotations

from collections.abc import Mapping

from audit_middleware._config import AuditConfig, AuditConfigError
from audit_middleware._jwt import JWTConfig
from audit_middleware._rules_file import RulesConfig

__all__ = ["jwt_from_config", "jwt_from_rules_file"]


def jwt_from_config(config: AuditConfig) -> JWTConfig | None:
    """JWT settings from ``AUDIT_LOG_JWT_*`` (or keywords); None when no key is set."""
    key = config.jwt_key
    if config.jwt_key_file:
        key = _read_key(config.jwt_key_file, "AUDIT_LOG_JWT_KEY_FILE")
    if not key:
        return None
    if not config.jwt_algorithms:
        raise AuditConfigError("AUDIT_LOG_JWT_ALGORITHMS is required with a JWT key, e.g. HS256")
    try:
        return JWTConfig(
            key=key,
            algorithms=config.jwt_algorithms,
            audience=config.jwt_audience or None,
            issuer=config.jwt_issuer or None,
            org_claim=config.jwt_org_claim or None,
        )
    except ValueError as exc:
        raise AuditConfigError(f"JWT settings: {exc}") from exc


def jwt_from_rules_file(loaded: RulesConfig | None, env: Mapping[str, str]) -> JWTConfig | None:
    """JWT settings from a rules file's ``[jwt]`` table, its key read from env or a file."""
    settings = None if loaded is None else loaded.jwt
    if settings is None or loaded is None:
        return None
    if settings.key_env is not None:
        key = env.get(settings.key_env, "")
        if not key:
            raise AuditConfigError(
                f"{loaded.path}: [jwt] key_env names {settings.key_env}, which is not set"
            )
    elif settings.key_file is not None:
        key = _read_key(settings.key_file, f"{loaded.path} [jwt] key_file")
    else:
        key = settings.key or ""
    try:
        return JWTConfig(
            key=key,
            algorithms=settings.algorithms,
            audience=settings.audience,
            issuer=settings.issuer,
            id_claim=settings.id_claim,
            email_claim=settings.email_claim,
            org_claim=settings.org_claim,
            type_claim=settings.type_claim,
            leeway_seconds=settings.leeway_seconds,
        )
    except ValueError as exc:
        raise AuditConfigError(f"{loaded.path}: [jwt] {exc}") from exc


def _read_key(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise AuditConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc
