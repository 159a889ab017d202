"""The S3 archive bucket helpers against a real S3 endpoint (moto's server on loopback).

What moto cannot show (see docs/s3-archive.md): lifecycle rules are stored but never executed,
and moto accepts shortening a COMPLIANCE retention that AWS refuses. These tests therefore check
the configuration we send and read back, and Object Lock's refusal to delete a locked version.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from exporters.s3_bucket import (
    INSTALL_HINT,
    MAX_LIFECYCLE_RULES,
    apply_retention,
    botocore_exceptions,
    create_bucket,
    error_code,
    inspect_bucket,
    make_client,
    object_lock_retain_until,
    parse_archive_url,
    plan_retention,
    retention_rules,
)
from tests.s3_server import S3Endpoint

EXPIRE = "audit-log-middleware:audit:expire"
DELETE_MARKERS = "audit-log-middleware:audit:delete-markers"
FOREIGN_RULE: dict[str, Any] = {
    "ID": "analytics-tiering",
    "Status": "Enabled",
    "Filter": {"And": {"Prefix": "analytics/", "Tags": [{"Key": "tier", "Value": "cold"}]}},
    "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}],
    "NoncurrentVersionExpiration": {"NoncurrentDays": 7},
}


class RecordingClient:
    """Passes every call to the client; records lifecycle puts."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lifecycle_puts: list[dict[str, Any]] = []

    def put_bucket_lifecycle_configuration(self, **kwargs: Any) -> Any:
        self.lifecycle_puts.append(kwargs)
        return self._client.put_bucket_lifecycle_configuration(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def lifecycle(s3: Any, bucket: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return rules


def by_id(rules: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["ID"]: rule for rule in rules}


def client_error_code(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return error_code(excinfo.value)


ClientError = botocore_exceptions().ClientError


# --------------------------------------------------------------------------------------------
# retention_rules and validation


def test_retention_rules_for_a_prefix() -> None:
    expire, markers = retention_rules("audit/", 90)
    assert expire == {
        "ID": EXPIRE,
        "Filter": {"Prefix": "audit/"},
        "Status": "Enabled",
        "Expiration": {"Days": 90},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    # S3 refuses ExpiredObjectDeleteMarker together with Days, hence a second rule.
    assert markers == {
        "ID": DELETE_MARKERS,
        "Filter": {"Prefix": "audit/"},
        "Status": "Enabled",
        "Expiration": {"ExpiredObjectDeleteMarker": True},
    }
    assert retention_rules("logs/app", 1)[0]["Filter"] == {"Prefix": "logs/app/"}


@pytest.mark.parametrize("days", [0, -1, 36501])
def test_retention_days_out_of_range(days: int) -> None:
    with pytest.raises(ValueError, match="between 1 and 36500"):
        retention_rules("audit", days)


@pytest.mark.parametrize("days", [True, 9.5, "90"])
def test_retention_days_must_be_an_int(days: Any) -> None:
    with pytest.raises(TypeError):
        retention_rules("audit", days)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("/", "must not start with '/'"),
        ("/audit", "must not start with '/'"),
        ("audit/../secrets", "'..'"),
        ("..", "'..'"),
        ("a//b", "empty path segments"),
        ("audit\nx", "printable"),
        ("audit\x00", "printable"),
        ("a" * 220, "too long"),
    ],
)
def test_bad_prefixes_are_refused(prefix: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retention_rules(prefix, 90)


def test_an_empty_prefix_means_the_whole_bucket() -> None:
    expire, markers = retention_rules("", 90)
    assert expire["ID"] == "audit-log-middleware::expire"
    assert markers["ID"] == "audit-log-middleware::delete-markers"
    assert expire["Filter"] == markers["Filter"] == {"Prefix": ""}


def test_longest_accepted_prefix_fits_a_rule_id() -> None:
    rules = retention_rules("a" * 219, 90)
    assert max(len(rule["ID"]) for rule in rules) == 255


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://archive/audit", ("archive", "audit")),
        ("s3://archive/logs/app/", ("archive", "logs/app")),
        ("s3://archive", ("archive", "")),
        ("s3://archive/", ("archive", "")),
        ("S3://archive/x", ("archive", "x")),
    ],
)
def test_parse_archive_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_archive_url(url) == expected


@pytest.mark.parametrize("url", ["archive/audit", "https://archive/audit", "s3:///audit"])
def test_parse_archive_url_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="archive URL"):
        parse_archive_url(url)


# --------------------------------------------------------------------------------------------
# Lifecycle merge


def test_merge_keeps_a_foreign_rule_intact(s3: Any) -> None:
    s3.create_bucket(Bucket="shared")
    s3.put_bucket_lifecycle_configuration(
        Bucket="shared", LifecycleConfiguration={"Rules": [FOREIGN_RULE]}
    )
    before = s3.get_bucket_lifecycle_configuration(Bucket="shared")
    recorder = RecordingClient(s3)

    plan = apply_retention(recorder, "shared", "audit", 90)

    assert plan.applied
    assert plan.added == (EXPIRE, DELETE_MARKERS)
    assert plan.foreign == ("'analytics-tiering'",)
    assert plan.warnings == ()  # another prefix: no overlap
    (put,) = recorder.lifecycle_puts
    # The whole merged configuration is written, the foreign rule first and exactly as read.
    assert put["LifecycleConfiguration"]["Rules"] == [
        before["Rules"][0],
        *retention_rules("audit", 90),
    ]
    assert put["TransitionDefaultMinimumObjectSize"] == before["TransitionDefaultMinimumObjectSize"]
    after = lifecycle(s3, "shared")
    foreign_after = by_id(after)["analytics-tiering"]
    assert json.dumps(foreign_after) == json.dumps(before["Rules"][0])
    assert foreign_after == FOREIGN_RULE
    assert by_id(after)[EXPIRE] == retention_rules("audit", 90)[0]
    assert by_id(after)[DELETE_MARKERS] == retention_rules("audit", 90)[1]


def test_applying_twice_is_a_no_op(s3: Any) -> None:
    s3.create_bucket(Bucket="archive")
    apply_retention(s3, "archive", "audit", 90)
    recorder = RecordingClient(s3)

    plan = apply_retention(recorder, "archive", "audit", 90)

    assert not plan.has_changes
    assert not plan.applied
    assert plan.unchanged == (EXPIRE, DELETE_MARKERS)
    assert recorder.lifecycle_puts == []
    assert "No changes" in plan.describe()[-1]


def test_changing_days_updates_only_our_rule(s3: Any) -> None:
    s3.create_bucket(Bucket="shared")
    s3.put_bucket_lifecycle_configuration(
        Bucket="shared", LifecycleConfiguration={"Rules": [FOREIGN_RULE]}
    )
    apply_retention(s3, "shared", "audit", 90)
    before = lifecycle(s3, "shared")

    plan = apply_retention(s3, "shared", "audit", 30)

    assert plan.added == ()
    assert [change.rule_id for change in plan.changed] == [EXPIRE]
    assert plan.changed[0].differences == ("Expiration.Days: 90 -> 30",)
    assert plan.unchanged == (DELETE_MARKERS,)
    after = lifecycle(s3, "shared")
    assert [rule["ID"] for rule in after] == [rule["ID"] for rule in before]  # order kept
    assert by_id(after)[EXPIRE]["Expiration"] == {"Days": 30}
    assert by_id(after)[DELETE_MARKERS] == by_id(before)[DELETE_MARKERS]
    assert by_id(after)["analytics-tiering"] == by_id(before)["analytics-tiering"]
    assert "  ~ change     " + EXPIRE in plan.describe()


def test_a_tampered_rule_of_ours_is_restored(s3: Any) -> None:
    s3.create_bucket(Bucket="archive")
    disabled = {**retention_rules("audit", 90)[0], "Status": "Disabled"}
    s3.put_bucket_lifecycle_configuration(
        Bucket="archive", LifecycleConfiguration={"Rules": [disabled]}
    )

    plan = apply_retention(s3, "archive", "audit", 90)

    assert plan.changed[0].differences == ("Status: 'Disabled' -> 'Enabled'",)
    assert plan.added == (DELETE_MARKERS,)
    assert by_id(lifecycle(s3, "archive"))[EXPIRE]["Status"] == "Enabled"


def test_rules_of_another_archive_prefix_are_foreign(s3: Any) -> None:
    s3.create_bucket(Bucket="archive")
    apply_retention(s3, "archive", "tenant-a", 365)

    plan = apply_retention(s3, "archive", "tenant-b", 30)

    assert plan.foreign == (
        "'audit-log-middleware:tenant-a:expire'",
        "'audit-log-middleware:tenant-a:delete-markers'",
    )
    rules = by_id(lifecycle(s3, "archive"))
    assert rules["audit-log-middleware:tenant-a:expire"]["Expiration"] == {"Days": 365}
    assert rules["audit-log-middleware:tenant-b:expire"]["Expiration"] == {"Days": 30}


def test_dry_run_changes_nothing(s3: Any) -> None:
    s3.create_bucket(Bucket="archive")
    recorder = RecordingClient(s3)

    plan = apply_retention(recorder, "archive", "audit", 90, dry_run=True)

    assert plan.dry_run
    assert not plan.applied
    assert plan.added == (EXPIRE, DELETE_MARKERS)
    assert plan.merged_rules == tuple(retention_rules("audit", 90))
    assert recorder.lifecycle_puts == []
    with pytest.raises(ClientError) as excinfo:
        s3.get_bucket_lifecycle_configuration(Bucket="archive")
    assert client_error_code(excinfo) == "NoSuchLifecycleConfiguration"
    assert plan.describe()[-1] == "Dry run: nothing was written."


def test_dry_run_of_a_change_leaves_the_old_rule(s3: Any) -> None:
    s3.create_bucket(Bucket="archive")
    apply_retention(s3, "archive", "audit", 90)

    plan = apply_retention(s3, "archive", "audit", 7, dry_run=True)

    assert plan.has_changes
    assert by_id(lifecycle(s3, "archive"))[EXPIRE]["Expiration"] == {"Days": 90}


def test_plan_reads_an_absent_configuration_as_empty(s3: Any) -> None:
    s3.create_bucket(Bucket="archive")
    plan = plan_retention(s3, "archive", "audit", 90)
    assert plan.current_rules == ()
    assert plan.has_changes
    assert plan.describe()[0] == (
        "Lifecycle retention for s3://archive/audit/: 90 days (bucket has 0 rule(s), will have 2)"
    )


def _foreign_rules(n: int) -> list[dict[str, Any]]:
    return [
        {"ID": f"team-{i}", "Status": "Enabled", "Filter": {"Prefix": f"team-{i}/"}}
        | {"Expiration": {"Days": 30}}
        for i in range(n)
    ]


def test_more_than_1000_rules_are_refused(s3: Any) -> None:
    s3.create_bucket(Bucket="crowded")
    rules = _foreign_rules(MAX_LIFECYCLE_RULES - 1)
    s3.put_bucket_lifecycle_configuration(Bucket="crowded", LifecycleConfiguration={"Rules": rules})
    recorder = RecordingClient(s3)

    with pytest.raises(ValueError, match=r"1001 lifecycle rules .* at most 1000"):
        apply_retention(recorder, "crowded", "audit", 90)

    assert recorder.lifecycle_puts == []
    assert len(lifecycle(s3, "crowded")) == MAX_LIFECYCLE_RULES - 1


def test_exactly_1000_rules_are_accepted(s3: Any) -> None:
    s3.create_bucket(Bucket="crowded")
    rules = _foreign_rules(MAX_LIFECYCLE_RULES - 2)
    s3.put_bucket_lifecycle_configuration(Bucket="crowded", LifecycleConfiguration={"Rules": rules})

    plan = apply_retention(s3, "crowded", "audit", 90)

    assert len(plan.merged_rules) == MAX_LIFECYCLE_RULES
    assert "  . keep       ... and 988 more rules not ours" in plan.describe()
    assert len(plan.describe()) == 1 + 2 + 10 + 1 + 1
    assert len(lifecycle(s3, "crowded")) == MAX_LIFECYCLE_RULES


def test_an_overlapping_foreign_rule_is_reported(s3: Any) -> None:
    s3.create_bucket(Bucket="shared")
    whole_bucket = {"ID": "purge-all", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 7}}
    s3.put_bucket_lifecycle_configuration(
        Bucket="shared", LifecycleConfiguration={"Rules": [whole_bucket]}
    )

    plan = apply_retention(s3, "shared", "audit", 90)

    (warning,) = plan.warnings
    assert "'purge-all' also acts on audit/ (Expiration)" in warning
    assert by_id(lifecycle(s3, "shared"))["purge-all"] == whole_bucket  # reported, not touched


def test_whole_bucket_rules_overlap_every_foreign_rule(s3: Any) -> None:
    s3.create_bucket(Bucket="archive")
    s3.put_bucket_lifecycle_configuration(
        Bucket="archive", LifecycleConfiguration={"Rules": [FOREIGN_RULE]}
    )

    plan = apply_retention(s3, "archive", "", 90)

    assert plan.describe()[0].startswith("Lifecycle retention for s3://archive (whole bucket)")
    (warning,) = plan.warnings
    assert "'analytics-tiering' also acts on the whole bucket" in warning
    assert by_id(lifecycle(s3, "archive"))["audit-log-middleware::expire"]["Filter"] == {
        "Prefix": ""
    }


def test_missing_bucket_raises_no_such_bucket(s3: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        plan_retention(s3, "missing", "audit", 90)
    assert client_error_code(excinfo) == "NoSuchBucket"


# --------------------------------------------------------------------------------------------
# create_bucket and Object Lock


def test_create_bucket_configures_everything(s3: Any) -> None:
    lines = create_bucket(s3, "archive", retention_days=30)

    assert s3.get_bucket_versioning(Bucket="archive")["Status"] == "Enabled"
    lock = s3.get_object_lock_configuration(Bucket="archive")["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    assert lock["Rule"]["DefaultRetention"]["Days"] == 30
    block = s3.get_public_access_block(Bucket="archive")["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    encryption = s3.get_bucket_encryption(Bucket="archive")["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"
    }
    assert lifecycle(s3, "archive") == retention_rules("", 30)  # the whole bucket by default

    settings = [line.split(":", 1)[0] for line in lines]
    assert settings == [
        "Bucket s3",
        "Versioning",
        "Object Lock default retention",
        "Public access block",
        "Default encryption",
        "Lifecycle rules for the whole bucket",
    ]
    assert "created" in lines[0]
    assert "COMPLIANCE 30 days" in lines[2]
    assert "auditors" in lines[2]
    assert "31 to 32 days" in lines[5]
    assert inspect_bucket(s3, "archive", retention_days=30, prefix="") == []


def test_create_bucket_twice_changes_nothing(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=30)
    recorder = RecordingClient(s3)

    lines = create_bucket(recorder, "archive", retention_days=30)

    assert "exists" in lines[0]
    assert "already enabled" in lines[1]
    assert "already COMPLIANCE 30 days" in lines[2]
    assert "already on" in lines[3]
    assert "already AES256" in lines[4]
    assert "0 added, 0 updated, 2 unchanged" in lines[5]
    assert recorder.lifecycle_puts == []


def test_archived_version_is_locked_and_cannot_be_deleted(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=1)
    before = datetime.now(UTC)
    version = s3.put_object(Bucket="archive", Key="audit/batch-1.jsonl.gz", Body=b"{}\n")[
        "VersionId"
    ]

    head = s3.head_object(Bucket="archive", Key="audit/batch-1.jsonl.gz", VersionId=version)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"]
    assert before + timedelta(days=1) - timedelta(seconds=5) <= until
    assert until <= datetime.now(UTC) + timedelta(days=1, seconds=5)

    # Deleting the archived version itself is refused inside the retention period...
    with pytest.raises(ClientError) as excinfo:
        s3.delete_object(Bucket="archive", Key="audit/batch-1.jsonl.gz", VersionId=version)
    assert client_error_code(excinfo) == "AccessDenied"
    # ...even when asking to bypass governance: this is COMPLIANCE mode.
    with pytest.raises(ClientError) as excinfo:
        s3.delete_object(
            Bucket="archive",
            Key="audit/batch-1.jsonl.gz",
            VersionId=version,
            BypassGovernanceRetention=True,
        )
    assert client_error_code(excinfo) == "AccessDenied"

    # A plain delete "succeeds" but only adds a delete marker; the locked version survives.
    deleted = s3.delete_object(Bucket="archive", Key="audit/batch-1.jsonl.gz")
    assert deleted["DeleteMarker"] is True
    listed = s3.list_objects_v2(Bucket="archive", Prefix="audit/")
    assert listed["KeyCount"] == 0
    versions = s3.list_object_versions(Bucket="archive", Prefix="audit/")
    assert [v["VersionId"] for v in versions["Versions"]] == [version]
    assert [m["IsLatest"] for m in versions["DeleteMarkers"]] == [True]
    body = s3.get_object(Bucket="archive", Key="audit/batch-1.jsonl.gz", VersionId=version)["Body"]
    assert body.read() == b"{}\n"


def test_governance_mode_can_be_bypassed_with_the_permission(s3: Any) -> None:
    lines = create_bucket(s3, "archive", retention_days=1, lock_mode="GOVERNANCE")
    assert "GOVERNANCE 1 days" in lines[2]
    version = s3.put_object(Bucket="archive", Key="audit/b.jsonl", Body=b"x")["VersionId"]

    with pytest.raises(ClientError) as excinfo:
        s3.delete_object(Bucket="archive", Key="audit/b.jsonl", VersionId=version)
    assert client_error_code(excinfo) == "AccessDenied"
    s3.delete_object(
        Bucket="archive", Key="audit/b.jsonl", VersionId=version, BypassGovernanceRetention=True
    )
    assert "Versions" not in s3.list_object_versions(Bucket="archive")


def test_per_object_retention_with_retain_until(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=1)
    until = object_lock_retain_until(datetime.now(UTC), 3)
    s3.put_object(
        Bucket="archive",
        Key="audit/explicit.jsonl",
        Body=b"x",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    head = s3.head_object(Bucket="archive", Key="audit/explicit.jsonl")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] == until


def test_create_bucket_completes_an_existing_plain_bucket(s3: Any) -> None:
    s3.create_bucket(Bucket="legacy")
    s3.put_bucket_lifecycle_configuration(
        Bucket="legacy", LifecycleConfiguration={"Rules": [FOREIGN_RULE]}
    )

    lines = create_bucket(s3, "legacy", retention_days=30, prefix="logs")

    assert "exists" in lines[0]
    assert "enabled now" in lines[1]
    assert "Object Lock enabled on the existing bucket" in lines[2]
    lock = s3.get_object_lock_configuration(Bucket="legacy")["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"]["Days"] == 30
    rules = by_id(lifecycle(s3, "legacy"))
    assert rules["analytics-tiering"] == FOREIGN_RULE
    assert "audit-log-middleware:logs:expire" in rules
    assert inspect_bucket(s3, "legacy", retention_days=30, prefix="logs") == []


def test_create_bucket_never_weakens_an_existing_lock(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=365)

    lines = create_bucket(s3, "archive", retention_days=90, lock_mode="GOVERNANCE")

    assert "kept COMPLIANCE 365 days" in lines[2]
    lock = s3.get_object_lock_configuration(Bucket="archive")["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    assert lock["Rule"]["DefaultRetention"]["Days"] == 365


def test_create_bucket_extends_a_shorter_lock(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=7, lock_mode="GOVERNANCE")

    lines = create_bucket(s3, "archive", retention_days=30)

    assert "set to COMPLIANCE 30 days (was GOVERNANCE 7 days)" in lines[2]
    lock = s3.get_object_lock_configuration(Bucket="archive")["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"] == {"Mode": "COMPLIANCE", "Days": 30, "Years": 0}


def test_create_bucket_keeps_kms_encryption(s3: Any) -> None:
    s3.create_bucket(Bucket="archive", ObjectLockEnabledForBucket=True)
    kms = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]}
    s3.put_bucket_encryption(Bucket="archive", ServerSideEncryptionConfiguration=kms)

    lines = create_bucket(s3, "archive", retention_days=30)

    assert "already aws:kms, kept" in lines[4]
    encryption = s3.get_bucket_encryption(Bucket="archive")["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"


def test_create_bucket_validates_before_touching_s3(s3: Any) -> None:
    with pytest.raises(ValueError, match="lock mode"):
        create_bucket(s3, "archive", retention_days=30, lock_mode="STRICT")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 1 and 36500"):
        create_bucket(s3, "archive", retention_days=0)
    assert s3.list_buckets()["Buckets"] == []


# --------------------------------------------------------------------------------------------
# inspect_bucket


def codes(findings: list[Any]) -> dict[str, str]:
    return {finding.code: finding.severity for finding in findings}


def test_inspect_a_plain_bucket(s3: Any) -> None:
    s3.create_bucket(Bucket="plain")

    findings = inspect_bucket(s3, "plain", retention_days=90)

    assert codes(findings) == {
        "versioning-disabled": "error",
        "object-lock-missing": "error",
        "encryption-missing": "error",
        "public-access-block-missing": "warning",
    }
    for finding in findings:
        assert "'audit-log bucket create --bucket plain --days 90'" in finding.message

    # With an archive prefix, the suggested commands keep to it.
    findings = inspect_bucket(s3, "plain", retention_days=90, prefix="logs/app")
    assert codes(findings)["lifecycle-missing"] == "warning"
    for finding in findings:
        assert "--bucket plain --prefix logs/app --days 90'" in finding.message


def test_inspect_a_lock_shorter_than_the_retention(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=30)

    findings = inspect_bucket(s3, "archive", retention_days=90)

    assert codes(findings) == {"object-lock-retention-too-short": "error"}
    assert "30 days, shorter than the 90-day" in findings[0].message


@pytest.mark.parametrize(
    ("years", "retention_days", "expected"),
    [
        (1, 400, {"object-lock-retention-too-short": "error"}),
        (1, 365, {}),
        (2, 365, {"object-lock-retention-longer": "warning"}),
    ],
)
def test_inspect_a_lock_in_years(
    s3: Any, years: int, retention_days: int, expected: dict[str, str]
) -> None:
    create_bucket(s3, "archive", retention_days=retention_days)
    s3.put_object_lock_configuration(
        Bucket="archive",
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Years": years}},
        },
    )
    assert codes(inspect_bucket(s3, "archive", retention_days=retention_days)) == expected


def test_inspect_a_correct_bucket(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=90)
    assert inspect_bucket(s3, "archive", retention_days=90) == []
    assert inspect_bucket(s3, "archive", retention_days=90, prefix="") == []
    create_bucket(s3, "prefixed", retention_days=90, prefix="audit")
    assert inspect_bucket(s3, "prefixed", retention_days=90, prefix="audit") == []


def test_inspect_lock_without_default_retention_and_governance(s3: Any) -> None:
    s3.create_bucket(Bucket="bare-lock", ObjectLockEnabledForBucket=True)
    assert codes(inspect_bucket(s3, "bare-lock", retention_days=90))[
        "object-lock-no-default-retention"
    ] == ("warning")

    create_bucket(s3, "gov", retention_days=90, lock_mode="GOVERNANCE")
    assert codes(inspect_bucket(s3, "gov", retention_days=90)) == {
        "object-lock-governance": "warning"
    }


def test_inspect_partial_public_access_block(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=90)
    s3.put_public_access_block(
        Bucket="archive",
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": True,
        },
    )
    (finding,) = inspect_bucket(s3, "archive", retention_days=90)
    assert finding.code == "public-access-block-partial"
    assert "BlockPublicPolicy off" in finding.message


def test_inspect_lifecycle_for_a_prefix(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=90, prefix="audit")

    assert codes(inspect_bucket(s3, "archive", retention_days=90, prefix="other")) == {
        "lifecycle-missing": "warning"
    }
    s3.put_object_lock_configuration(
        Bucket="archive",
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}},
        },
    )
    assert codes(inspect_bucket(s3, "archive", retention_days=30, prefix="audit")) == {
        "lifecycle-outdated": "warning"
    }


def test_inspect_a_missing_bucket(s3: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        inspect_bucket(s3, "missing", retention_days=90)
    assert client_error_code(excinfo) == "NoSuchBucket"


def test_inspect_reports_an_unreadable_setting(s3: Any) -> None:
    create_bucket(s3, "archive", retention_days=90)

    class DeniedEncryption(RecordingClient):
        def get_bucket_encryption(self, **kwargs: Any) -> Any:
            error = {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}
            raise ClientError(error, "GetBucketEncryption")

    (finding,) = inspect_bucket(DeniedEncryption(s3), "archive", retention_days=90)
    assert finding.code == "permission-denied"
    assert "s3:GetEncryptionConfiguration" in finding.message


# --------------------------------------------------------------------------------------------
# object_lock_retain_until, lazy boto3


def test_retain_until_is_utc_and_never_short() -> None:
    now = datetime(2026, 11, 27, 23, 30, 0, 250_000, tzinfo=timezone(timedelta(hours=-5)))
    until = object_lock_retain_until(now, 90)
    assert until.tzinfo is UTC
    assert until == datetime(2027, 2, 26, 4, 30, 1, tzinfo=UTC)
    assert until - now >= timedelta(days=90)
    exact = datetime(2026, 1, 1, tzinfo=UTC)
    assert object_lock_retain_until(exact, 1) == datetime(2026, 1, 2, tzinfo=UTC)


def test_retain_until_refuses_naive_times_and_bad_days() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        object_lock_retain_until(datetime(2026, 1, 1), 1)
    with pytest.raises(ValueError, match="between 1 and 36500"):
        object_lock_retain_until(datetime.now(UTC), 0)


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert INSTALL_HINT == "pip install 'audit-log-middleware[s3]'"
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ImportError, match=r"pip install 'audit-log-middleware\[s3\]'"):
        make_client()
    monkeypatch.setitem(sys.modules, "botocore.exceptions", None)
    with pytest.raises(ImportError, match=r"pip install 'audit-log-middleware\[s3\]'"):
        botocore_exceptions()


def test_make_client_uses_the_endpoint(
    endpoint: S3Endpoint, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = make_client(endpoint_url=endpoint.url, region="us-east-1")
    client.create_bucket(Bucket="made")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["made"]


def test_create_bucket_in_another_region(s3: Any) -> None:
    lines = create_bucket(s3, "eu-archive", retention_days=1, region="eu-west-1")
    assert "created in eu-west-1" in lines[0]
    assert s3.get_bucket_location(Bucket="eu-archive")["LocationConstraint"] == "eu-west-1"


def test_create_bucket_refuses_a_bucket_it_cannot_use(s3: Any) -> None:
    class Forbidden(RecordingClient):
        def head_bucket(self, **kwargs: Any) -> Any:
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "HeadBucket")

    with pytest.raises(PermissionError, match="another account owns it"):
        create_bucket(Forbidden(s3), "taken", retention_days=1)
    assert s3.list_buckets()["Buckets"] == []
