"""The ``audit-log`` command line against a real S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from audit_middleware.cli import main
from exporters.s3_bucket import create_bucket, retention_rules
from tests.s3_server import S3Endpoint

EXPIRE = "audit-log-middleware:audit:expire"
WHOLE_BUCKET_EXPIRE = "audit-log-middleware::expire"


class Result(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials only: no profile, config file, real endpoint or archive settings."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AUDIT_LOG_ARCHIVE_URL",
        "AUDIT_LOG_RETENTION_DAYS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


@pytest.fixture
def run(endpoint: S3Endpoint, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``audit-log`` with ``--endpoint-url`` pointing at the test endpoint."""

    def run_cli(*argv: str, endpoint_url: str | None = endpoint.url) -> Result:
        capsys.readouterr()
        args = list(argv)
        if endpoint_url is not None:
            args += ["--endpoint-url", endpoint_url]
        code = main(args)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run_cli


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith("audit-log: error: ")
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err


def lifecycle(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return {rule["ID"]: rule for rule in rules}


# --------------------------------------------------------------------------------------------
# retention show / apply


def test_retention_show_prints_the_plan_and_writes_nothing(s3: Any, run: Any) -> None:
    s3.create_bucket(Bucket="archive")

    result = run("retention", "show", "--bucket", "archive", "--prefix", "audit")

    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "Lifecycle retention for s3://archive/audit/: 90 days (bucket has 0 rule(s), will have 2)",
        "  + add        audit-log-middleware:audit:expire",
        "  + add        audit-log-middleware:audit:delete-markers",
        "Not applied (run 'audit-log retention apply' to write it).",
    ]
    assert result.err == ""
    with pytest.raises(Exception, match="NoSuchLifecycleConfiguration"):
        s3.get_bucket_lifecycle_configuration(Bucket="archive")


def test_retention_apply_then_again(s3: Any, run: Any) -> None:
    s3.create_bucket(Bucket="archive")
    foreign = {"ID": "keep-me", "Status": "Enabled", "Filter": {"Prefix": "tmp/"}}
    foreign["Expiration"] = {"Days": 1}
    s3.put_bucket_lifecycle_configuration(
        Bucket="archive", LifecycleConfiguration={"Rules": [foreign]}
    )

    first = run("retention", "apply", "--bucket", "archive", "--prefix", "audit", "--days", "30")

    assert first.code == 0, first.err
    assert "  + add        audit-log-middleware:audit:expire" in first.out
    assert "  . keep       'keep-me' (not ours, kept as is)" in first.out
    assert first.out.splitlines()[-1] == "Applied: the bucket now has 3 lifecycle rule(s)."
    rules = lifecycle(s3, "archive")
    assert rules["keep-me"] == foreign
    assert rules[EXPIRE] == retention_rules("audit", 30)[0]

    second = run("retention", "apply", "--bucket", "archive", "--prefix", "audit", "--days", "30")

    assert second.code == 0
    assert "  = unchanged  audit-log-middleware:audit:expire" in second.out
    assert second.out.splitlines()[-1] == ("No changes: the lifecycle configuration is up to date.")

    third = run("retention", "apply", "--bucket", "archive", "--prefix", "audit", "--days", "45")
    assert "  ~ change     audit-log-middleware:audit:expire" in third.out
    assert "Expiration.Days: 30 -> 45" in third.out
    assert lifecycle(s3, "archive")[EXPIRE]["Expiration"] == {"Days": 45}


def test_retention_apply_dry_run(s3: Any, run: Any) -> None:
    s3.create_bucket(Bucket="archive")

    result = run("retention", "apply", "--bucket", "archive", "--dry-run")

    assert result.code == 0
    assert result.out.splitlines()[-1] == "Dry run: nothing was written."
    with pytest.raises(Exception, match="NoSuchLifecycleConfiguration"):
        s3.get_bucket_lifecycle_configuration(Bucket="archive")


def test_the_whole_bucket_by_default(s3: Any, run: Any) -> None:
    s3.create_bucket(Bucket="archive")

    result = run("retention", "apply", "--bucket", "archive")

    assert result.code == 0, result.err
    assert result.out.splitlines()[0].startswith(
        "Lifecycle retention for s3://archive (whole bucket): 90 days"
    )
    assert lifecycle(s3, "archive")[WHOLE_BUCKET_EXPIRE]["Filter"] == {"Prefix": ""}


def test_days_default_from_the_environment(
    s3: Any, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket(Bucket="archive")
    run("retention", "apply", "--bucket", "archive")
    assert lifecycle(s3, "archive")[WHOLE_BUCKET_EXPIRE]["Expiration"] == {"Days": 90}

    monkeypatch.setenv("AUDIT_LOG_RETENTION_DAYS", "400")
    result = run("retention", "apply", "--bucket", "archive")

    assert result.code == 0
    assert "Expiration.Days: 90 -> 400" in result.out
    assert lifecycle(s3, "archive")[WHOLE_BUCKET_EXPIRE]["Expiration"] == {"Days": 400}
    run("retention", "apply", "--bucket", "archive", "--days", "7")  # the option wins
    assert lifecycle(s3, "archive")[WHOLE_BUCKET_EXPIRE]["Expiration"] == {"Days": 7}


def test_bucket_and_prefix_from_the_archive_url(
    s3: Any, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket(Bucket="archive")
    s3.create_bucket(Bucket="elsewhere")
    monkeypatch.setenv("AUDIT_LOG_ARCHIVE_URL", "s3://archive/logs/app/")

    result = run("retention", "apply")

    assert result.code == 0, result.err
    assert "s3://archive/logs/app/" in result.out.splitlines()[0]
    assert "audit-log-middleware:logs/app:expire" in lifecycle(s3, "archive")

    # --prefix overrides the URL's path; another --bucket does not inherit the URL's path.
    run("retention", "apply", "--prefix", "events")
    assert "audit-log-middleware:events:expire" in lifecycle(s3, "archive")
    run("retention", "apply", "--bucket", "elsewhere")
    assert list(lifecycle(s3, "elsewhere")) == [
        WHOLE_BUCKET_EXPIRE,
        "audit-log-middleware::delete-markers",
    ]


def test_archive_url_without_prefix_is_the_whole_bucket(
    s3: Any, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket(Bucket="archive")
    monkeypatch.setenv("AUDIT_LOG_ARCHIVE_URL", "s3://archive")
    assert run("retention", "apply").code == 0
    assert WHOLE_BUCKET_EXPIRE in lifecycle(s3, "archive")


def test_a_local_archive_url_is_ignored_with_bucket(
    s3: Any, run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="archive")
    monkeypatch.setenv("AUDIT_LOG_ARCHIVE_URL", str(tmp_path))
    assert run("retention", "apply", "--bucket", "archive").code == 0
    assert_one_line_error(run("retention", "apply"), "AUDIT_LOG_ARCHIVE_URL", "s3://bucket/prefix")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://archive/audit", "must look like s3://bucket/prefix"),
        ("s3:///audit", "names no bucket"),
        ("s3://archive/../etc", "'..'"),
    ],
)
def test_bad_archive_url(
    run: Any, monkeypatch: pytest.MonkeyPatch, url: str, fragment: str
) -> None:
    monkeypatch.setenv("AUDIT_LOG_ARCHIVE_URL", url)
    assert_one_line_error(run("retention", "show"), "AUDIT_LOG_ARCHIVE_URL", fragment)


# --------------------------------------------------------------------------------------------
# bucket create / check


def test_bucket_create_then_check(s3: Any, run: Any) -> None:
    created = run("bucket", "create", "--bucket", "archive", "--days", "30")

    assert created.code == 0, created.err
    lines = created.out.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith("Bucket s3://archive: created")
    assert lines[2].startswith("Object Lock default retention: set to COMPLIANCE 30 days")
    lock = s3.get_object_lock_configuration(Bucket="archive")["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    assert lock["Rule"]["DefaultRetention"]["Days"] == 30

    checked = run("bucket", "check", "--bucket", "archive", "--days", "30")

    assert checked.code == 0, checked.out
    assert checked.out == "s3://archive (retention 30 days, whole bucket): OK, no findings.\n"


def test_bucket_create_governance(s3: Any, run: Any) -> None:
    result = run("bucket", "create", "--bucket", "archive", "--mode", "governance")
    assert result.code == 0, result.err
    lock = s3.get_object_lock_configuration(Bucket="archive")["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"] == {"Mode": "GOVERNANCE", "Days": 90, "Years": 0}

    checked = run("bucket", "check", "--bucket", "archive")
    assert checked.code == 0  # a warning only
    assert "warning  object-lock-governance" in checked.out


def test_bucket_check_of_a_plain_bucket_fails(s3: Any, run: Any) -> None:
    s3.create_bucket(Bucket="plain")

    result = run("bucket", "check", "--bucket", "plain", "--prefix", "audit")

    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0] == (
        "s3://plain (retention 90 days, archive prefix audit/): 3 error(s), 2 warning(s)"
    )
    assert {line.split()[0] for line in lines[1:]} == {"error", "warning"}
    assert "  error    versioning-disabled: " in result.out
    assert "  error    object-lock-missing: " in result.out
    assert "  error    encryption-missing: " in result.out
    assert "  warning  public-access-block-missing: " in result.out
    assert "  warning  lifecycle-missing: " in result.out


def test_bucket_check_of_a_short_lock_fails(s3: Any, run: Any) -> None:
    create_bucket(s3, "archive", retention_days=30)
    result = run("bucket", "check", "--bucket", "archive", "--days", "90")
    assert result.code == 1
    assert "object-lock-retention-too-short" in result.out


# --------------------------------------------------------------------------------------------
# Errors: one line on stderr, exit 2


@pytest.mark.parametrize(
    "argv",
    [
        ("retention", "show", "--bucket", "missing"),
        ("retention", "apply", "--bucket", "missing"),
        ("bucket", "check", "--bucket", "missing"),
    ],
)
def test_no_such_bucket(s3: Any, run: Any, argv: tuple[str, ...]) -> None:
    result = run(*argv)
    assert_one_line_error(result, "NoSuchBucket", "'missing'", "audit-log bucket create")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("retention", "show"), "no bucket: pass --bucket or set AUDIT_LOG_ARCHIVE_URL"),
        (("retention", "show", "--bucket", "b1x", "--days", "0"), "between 1 and 36500"),
        (("retention", "show", "--bucket", "b1x", "--days", "ninety"), "invalid int value"),
        (("retention", "apply", "--bucket", "b1x", "--prefix", "/abs"), "must not start"),
        (("bucket", "create", "--bucket", "b1x", "--mode", "strict"), "invalid choice"),
        (("retention", "show", "--bucket", "b1x", "--bogus"), "unrecognized arguments"),
        (("retention",), "required: <command>"),
        (("nonsense",), "invalid choice"),
        ((), "required: <group>"),
    ],
)
def test_bad_arguments(s3: Any, run: Any, argv: tuple[str, ...], fragment: str) -> None:
    result = run(*argv, endpoint_url=None)
    assert_one_line_error(result, fragment)
    assert s3.list_buckets()["Buckets"] == []


def test_bad_retention_days_variable(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_LOG_RETENTION_DAYS", "3 months")
    assert_one_line_error(
        run("retention", "show", "--bucket", "archive"), "AUDIT_LOG_RETENTION_DAYS"
    )


def test_unreachable_endpoint(run: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    result = run("bucket", "check", "--bucket", "archive", endpoint_url=f"http://127.0.0.1:{port}")
    assert_one_line_error(result, "Could not connect to the endpoint URL")


def test_missing_credentials(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert_one_line_error(run("retention", "show", "--bucket", "archive"), "credentials")


def test_help_exits_zero(run: Any) -> None:
    result = run("retention", "apply", "--help", endpoint_url=None)
    assert result.code == 0
    assert "--dry-run" in result.out


# --------------------------------------------------------------------------------------------
# The endpoint from boto3's own configuration, and a real process


def test_endpoint_from_aws_endpoint_url_s3(
    s3: Any, run: Any, endpoint: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint.url)
    result = run("bucket", "create", "--bucket", "from-env", endpoint_url=None)
    assert result.code == 0, result.err
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["from-env"]


def test_as_a_process(s3: Any, endpoint: S3Endpoint) -> None:
    s3.create_bucket(Bucket="plain")
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint.url}
    checked = subprocess.run(
        [sys.executable, "-m", "audit_middleware.cli", "bucket", "check", "--bucket", "plain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 1, checked.stderr
    assert "versioning-disabled" in checked.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "audit_middleware.cli", "bucket", "check", "--bucket", "gone"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert missing.stderr.count("\n") == 1
    assert "NoSuchBucket" in missing.stderr
