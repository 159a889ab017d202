"""The event model, its JSON Schema and its ids."""

from __future__ import annotations

import uuid

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit_middleware import Actor, AuditEvent, load_schema
from audit_middleware._event import outcome_for_status
from audit_middleware._ids import format_timestamp, uuid7


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema())


def test_model_fields_and_schema_properties_are_the_same() -> None:
    event = AuditEvent(
        id=uuid7(),
        occurred_at=format_timestamp(0),
        action="a.b",
        outcome="success",
        actor=Actor("u"),
    )
    assert set(event.to_dict()) == set(load_schema()["properties"])
    assert set(load_schema()["required"]) == set(event.to_dict())


def test_schema_rejects_forged_or_malformed_events() -> None:
    validator = jsonschema.Draft202012Validator(load_schema())
    good = AuditEvent(
        id=uuid7(),
        occurred_at=format_timestamp(0),
        action="a.b",
        outcome="success",
        actor=Actor("u"),
    ).to_dict()
    assert validator.is_valid(good)
    for bad in (
        {**good, "extra": 1},
        {**good, "outcome": "maybe"},
        {**good, "occurred_at": "2026-01-01 00:00:00"},
        {**good, "id": str(uuid.uuid4())},
        {**good, "actor": {"id": "u", "type": "robot"}},
    ):
        assert not validator.is_valid(bad)


@pytest.mark.parametrize(
    ("status", "raised", "outcome"),
    [
        (200, False, "success"),
        (302, False, "success"),
        (401, False, "denied"),
        (403, False, "denied"),
        (404, False, "failure"),
        (422, False, "failure"),
        (500, False, "error"),
        (200, True, "error"),
        (0, False, "error"),
    ],
)
def test_outcome_for_status(status: int, raised: bool, outcome: str) -> None:
    assert outcome_for_status(status, raised=raised) == outcome


def test_uuid7_is_version_7_time_ordered_and_unique() -> None:
    ids = [uuid7() for _ in range(20000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_uuid7_embeds_the_given_time() -> None:
    ns = 1_790_000_000_123_456_789
    assert uuid.UUID(uuid7(ns)).int >> 80 == ns // 1_000_000


def test_format_timestamp() -> None:
    assert format_timestamp(1_790_000_000_123_456_789) == "2026-09-21T14:13:20.123456Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000Z"


@given(st.integers(min_value=0, max_value=253_402_300_799_999_999_999))
def test_format_timestamp_matches_datetime(unix_ns: int) -> None:
    from datetime import UTC, datetime, timedelta

    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=unix_ns // 1000)
    assert format_timestamp(unix_ns) == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_actor_validation() -> None:
    with pytest.raises(ValueError, match="needs an id"):
        Actor(None, "user")
    assert Actor(None, "anonymous").to_dict() == {"id": None, "type": "anonymous"}
