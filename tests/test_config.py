"""Configuration: keywords over environment over defaults; clear errors for bad values."""

from __future__ import annotations

from typing import Any

import pytest

from audit_middleware import ENV, AuditConfig, AuditConfigError, Auditor, ProxyTrust
from audit_middleware._config import AuditConfig as _Config


def test_defaults_with_an_empty_environment() -> None:
    config = AuditConfig.resolve({}, environ={})
    assert config.enabled is True
    assert config.exporters == ("log",)
    assert config.unmatched == "state_changing"
    assert config.trusted_proxies == ProxyTrust()
    assert config.ip_privacy == "full"
    assert config.queue_size == 10_000
    assert config.overflow == "drop_newest"


def test_environment_is_read() -> None:
    env = {
        "AUDIT_LOG_TRUSTED_PROXIES": "1, 10.0.0.0/8",
        "AUDIT_LOG_IP_PRIVACY": "TRUNCATE",
        "AUDIT_LOG_QUEUE_SIZE": "42",
        "AUDIT_LOG_BATCH_INTERVAL": "0.25",
        "AUDIT_LOG_ENABLED": "off",
        "AUDIT_LOG_HEADERS": "Host, X-Tenant",
    }
    config = AuditConfig.resolve({}, environ=env)
    assert config.trusted_proxies.hops == 1
    assert [str(n) for n in config.trusted_proxies.networks] == ["10.0.0.0/8"]
    assert config.ip_privacy == "truncate"
    assert config.queue_size == 42
    assert config.batch_interval == 0.25
    assert config.enabled is False
    assert config.headers == ("host", "x-tenant")


def test_keywords_override_the_environment() -> None:
    env = {"AUDIT_LOG_QUEUE_SIZE": "42", "AUDIT_LOG_IP_PRIVACY": "omit"}
    config = AuditConfig.resolve({"queue_size": 7, "ip_privacy": "full"}, environ=env)
    assert (config.queue_size, config.ip_privacy) == (7, "full")


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        pytest.param("AUDIT_LOG_QUEUE_SIZE", "lots", "whole number", id="int"),
        pytest.param("AUDIT_LOG_QUEUE_SIZE", "0", "from 1 to", id="range"),
        pytest.param("AUDIT_LOG_OVERFLOW", "block", "drop_newest, drop_oldest", id="choice"),
        pytest.param("AUDIT_LOG_ENABLED", "maybe", "true/false", id="bool"),
        pytest.param("AUDIT_LOG_BATCH_INTERVAL", "-1", "positive", id="seconds"),
        pytest.param("AUDIT_LOG_BATCH_INTERVAL", "nan", "positive", id="nan"),
        pytest.param("AUDIT_LOG_TRUSTED_PROXIES", "10.0.0.0/33", "invalid item", id="cidr"),
        pytest.param("AUDIT_LOG_UNMATCHED", "some", "state_changing", id="policy"),
        pytest.param("AUDIT_LOG_EXPORTERS", "log,log", "must not repeat", id="repeat"),
    ],
)
def test_bad_environment_values_name_the_variable(name: str, value: str, hint: str) -> None:
    with pytest.raises(AuditConfigError) as info:
        AuditConfig.resolve({}, environ={name: value})
    message = str(info.value)
    assert name in message
    assert repr(value) in message
    assert hint in message


def test_unknown_exporter_name_is_reported() -> None:
    with pytest.raises(AuditConfigError, match="'carrier_pigeon' in AUDIT_LOG_EXPORTERS"):
        Auditor(environ={"AUDIT_LOG_EXPORTERS": "log,carrier_pigeon"})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"queue_size": 0}, ValueError, id="range"),
        pytest.param({"queue_size": "ten"}, ValueError, id="string-int"),
        pytest.param({"queue_size": True}, TypeError, id="bool-for-int"),
        pytest.param({"batch_interval": -1.0}, ValueError, id="negative"),
        pytest.param({"overflow": "block"}, ValueError, id="choice"),
        pytest.param({"trusted_proxies": 3.5}, ValueError, id="trust-float"),
        pytest.param({"trusted_proxies": object()}, TypeError, id="trust-type"),
        pytest.param({"headers": ["host", "authorization"]}, ValueError, id="secret-header"),
        pytest.param({"headers": [1, 2]}, TypeError, id="header-type"),
    ],
)
def test_bad_keywords_raise_at_construction(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Auditor(environ={}, exporters=[], **kwargs)


def test_every_environment_variable_is_documented_in_the_readme() -> None:
    with open("README.md", encoding="utf-8") as f:
        readme = f.read()
    missing = [name for name in ENV if f"`{name}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}"


def test_trusted_proxies_keyword_forms() -> None:
    assert AuditConfig.resolve({"trusted_proxies": 2}, environ={}).trusted_proxies.hops == 2
    trust = ProxyTrust(hops=1)
    assert AuditConfig.resolve({"trusted_proxies": trust}, environ={}).trusted_proxies is trust


def test_config_is_frozen() -> None:
    config = _Config.resolve({}, environ={})
    with pytest.raises(AttributeError):
        config.queue_size = 1  # type: ignore[misc]
