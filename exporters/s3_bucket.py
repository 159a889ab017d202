"""S3 archive bucket: retention lifecycle rules, Object Lock and a misconfiguration report.

The archive keeps each audit batch as its own object version. Object Lock makes that version
write-once for N days; the lifecycle rules written here remove it about a day after the lock has
expired. See ``docs/s3-archive.md`` for the setup, the interaction between the two and what the
moto-based tests can and cannot prove.

Every function takes a boto3 S3 client (typed ``Any``: boto3 ships no type information). boto3
itself is only imported by :func:`make_client`, so ``import exporters.s3_bucket`` works without
the ``s3`` extra.

Lifecycle rules are merged, never overwritten: ``PutBucketLifecycleConfiguration`` replaces the
bucket's whole configuration, so :func:`apply_retention` reads the current rules, replaces only
the rules whose IDs are ours (``audit-log-middleware:<prefix>:...``) and writes every other rule
back exactly as it was read.
"""

from __future__ import annotations

import importlib
import shlex
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_RETENTION_DAYS",
    "INSTALL_HINT",
    "MAX_LIFECYCLE_RULES",
    "Finding",
    "LockMode",
    "RetentionPlan",
    "RuleChange",
    "apply_retention",
    "botocore_exceptions",
    "create_bucket",
    "error_code",
    "inspect_bucket",
    "make_client",
    "object_lock_retain_until",
    "parse_archive_url",
    "plan_retention",
    "retention_rules",
]

INSTALL_HINT: Final = "pip install 'audit-log-middleware[s3]'"
#: Namespace of the lifecycle rule IDs this module owns.
RULE_ID_NAMESPACE: Final = "audit-log-middleware"
#: The archive prefix when none is given: the whole bucket, where the archive exporter writes
#: for ``s3://bucket``. An archive bucket is dedicated anyway: its default retention locks every
#: object in it.
DEFAULT_PREFIX: Final = ""
DEFAULT_RETENTION_DAYS: Final = 90
#: AWS limit on the rules of one lifecycle configuration (moto does not enforce it).
MAX_LIFECYCLE_RULES: Final = 1000
MIN_DAYS: Final = 1
MAX_DAYS: Final = 36500
_MAX_RULE_ID_LENGTH: Final = 255
_EXPIRE_SUFFIX: Final = "expire"
_DELETE_MARKERS_SUFFIX: Final = "delete-markers"
# Error codes S3 (and moto) return when a bucket simply has no such configuration.
_NO_LIFECYCLE: Final = frozenset({"NoSuchLifecycleConfiguration"})
_NO_OBJECT_LOCK: Final = frozenset({"ObjectLockConfigurationNotFoundError"})
_NO_ENCRYPTION: Final = frozenset({"ServerSideEncryptionConfigurationNotFoundError"})
_NO_PUBLIC_ACCESS_BLOCK: Final = frozenset({"NoSuchPublicAccessBlockConfiguration"})
_DENIED: Final = frozenset({"AccessDenied", "AllAccessDisabled", "403"})
_PUBLIC_ACCESS_SETTINGS: Final = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)
_US_EAST_1: Final = frozenset({"us-east-1", "aws-global"})
_FOREIGN_SHOWN: Final = 20  # foreign rules listed one by one in a plan; beyond, a count

LockMode = Literal["COMPLIANCE", "GOVERNANCE"]
Severity = Literal["error", "warning"]
Rule = dict[str, Any]
_LOCK_MODES: Final[tuple[LockMode, ...]] = ("COMPLIANCE", "GOVERNANCE")


# --------------------------------------------------------------------------------------------
# boto3 / botocore, imported lazily


def _import(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"the S3 archive needs boto3 ({exc}): {INSTALL_HINT}") from exc


def botocore_exceptions() -> types.ModuleType:
    """``botocore.exceptions`` (``ClientError``, ``BotoCoreError``), or ImportError with a hint."""
    return _import("botocore.exceptions")


def make_client(*, endpoint_url: str | None = None, region: str | None = None) -> Any:
    """An S3 client from boto3's standard configuration chain.

    Credentials, region, retries and the endpoint come from the usual environment variables and
    files (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` included); ``endpoint_url`` and
    ``region`` override them. A fresh session is used so that changed variables are honoured.
    """
    boto3 = _import("boto3")
    session = boto3.session.Session(region_name=region)
    return session.client("s3", endpoint_url=endpoint_url or None)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping):
        return ""
    error = response.get("Error")
    return str(error.get("Code", "")) if isinstance(error, Mapping) else ""


def _call(call: Callable[..., Any], absent: frozenset[str], **kwargs: Any) -> Any:
    """``call(**kwargs)``; ``None`` when S3 answers with one of the ``absent`` error codes."""
    client_error = botocore_exceptions().ClientError
    try:
        return call(**kwargs)
    except client_error as exc:
        if error_code(exc) in absent:
            return None
        raise


# --------------------------------------------------------------------------------------------
# Validation and the archive URL


def _check_days(days: int, name: str = "retention days") -> int:
    if isinstance(days, bool) or not isinstance(days, int):
        raise TypeError(f"{name} must be an int, got {days!r}")
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise ValueError(f"{name} must be between {MIN_DAYS} and {MAX_DAYS}, got {days}")
    return days


def _check_prefix(prefix: str) -> str:
    """Validate an archive key prefix and return it without its trailing slash.

    ``""`` stands for the whole bucket.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    if prefix.startswith("/"):
        raise ValueError(f"the archive prefix must not start with '/': {prefix!r}")
    normalized = prefix.rstrip("/")
    if not normalized:
        return ""
    if not normalized.isprintable():
        raise ValueError(f"the archive prefix must be printable characters only: {prefix!r}")
    if any(segment in ("", ".", "..") for segment in normalized.split("/")):
        raise ValueError(
            f"the archive prefix must not contain '.', '..' or empty path segments: {prefix!r}"
        )
    longest_id = _rule_id(normalized, _DELETE_MARKERS_SUFFIX)
    if len(longest_id) > _MAX_RULE_ID_LENGTH:
        raise ValueError(
            f"the archive prefix is too long for a lifecycle rule ID "
            f"({len(longest_id)} > {_MAX_RULE_ID_LENGTH} characters): {prefix!r}"
        )
    return normalized


def parse_archive_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``("bucket", "prefix")``; ``s3://bucket`` -> ``("bucket", "")``."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep or scheme.lower() != "s3":
        raise ValueError(f"the archive URL must look like s3://bucket/prefix, got {url!r}")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"the archive URL names no bucket: {url!r}")
    return bucket, _check_prefix(prefix.strip("/"))


# --------------------------------------------------------------------------------------------
# Lifecycle rules


def _rule_id(prefix: str, suffix: str) -> str:
    return f"{RULE_ID_NAMESPACE}:{prefix}:{suffix}"


def _key_prefix(prefix: str) -> str:
    """The key prefix our rules filter on: ``"audit/"``, or ``""`` for the whole bucket."""
    return f"{prefix}/" if prefix else ""


def _where(bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}/" if prefix else f"s3://{bucket} (whole bucket)"


def retention_rules(prefix: str, days: int) -> list[Rule]:
    """Our lifecycle rules for the archive under ``prefix/`` (``""``: the whole bucket).

    Rule ``...:expire`` puts a delete marker on each current version after ``days`` days, deletes
    a version one day after it became noncurrent (the lock has expired by then; a version still
    locked simply waits for a later daily pass) and aborts multipart uploads left incomplete for
    a day. Rule ``...:delete-markers`` removes the delete markers left with no version behind
    them. S3 refuses ``ExpiredObjectDeleteMarker`` and ``Days`` in the same ``Expiration``,
    hence two rules.
    """
    prefix = _check_prefix(prefix)
    days = _check_days(days)
    key_prefix = _key_prefix(prefix)
    return [
        {
            "ID": _rule_id(prefix, _EXPIRE_SUFFIX),
            "Filter": {"Prefix": key_prefix},
            "Status": "Enabled",
            "Expiration": {"Days": days},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        },
        {
            "ID": _rule_id(prefix, _DELETE_MARKERS_SUFFIX),
            "Filter": {"Prefix": key_prefix},
            "Status": "Enabled",
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        },
    ]


@dataclass(frozen=True)
class RuleChange:
    """One of our rules whose stored form differs from the wanted one."""

    rule_id: str
    #: ``"Expiration.Days: 90 -> 30"``-style lines.
    differences: tuple[str, ...]


@dataclass(frozen=True)
class RetentionPlan:
    """What :func:`apply_retention` does (or did) to a bucket's lifecycle configuration."""

    bucket: str
    prefix: str
    days: int
    #: The rules as read from the bucket (empty without a lifecycle configuration).
    current_rules: tuple[Rule, ...]
    #: The full configuration to write: foreign rules untouched, in place, plus ours.
    merged_rules: tuple[Rule, ...]
    added: tuple[str, ...] = ()
    changed: tuple[RuleChange, ...] = ()
    unchanged: tuple[str, ...] = ()
    #: IDs (or a description) of the rules that are not ours, kept as read.
    foreign: tuple[str, ...] = ()
    #: Foreign rules that also act on the archive prefix.
    warnings: tuple[str, ...] = ()
    #: ``TransitionDefaultMinimumObjectSize`` as read; written back unchanged.
    transition_default_minimum_object_size: str | None = None
    #: True once the merged configuration was written.
    applied: bool = False
    dry_run: bool = False

    @property
    def has_changes(self) -> bool:
        """Whether writing the merged rules would change the bucket."""
        return bool(self.added or self.changed)

    def describe(self) -> list[str]:
        """The plan as human-readable lines."""
        where = _where(self.bucket, self.prefix)
        lines = [
            f"Lifecycle retention for {where}: {self.days} days "
            f"(bucket has {len(self.current_rules)} rule(s), will have {len(self.merged_rules)})"
        ]
        lines.extend(f"  + add        {rule_id}" for rule_id in self.added)
        for change in self.changed:
            lines.append(f"  ~ change     {change.rule_id}")
            lines.extend(f"                 {difference}" for difference in change.differences)
        lines.extend(f"  = unchanged  {rule_id}" for rule_id in self.unchanged)
        shown = self.foreign if len(self.foreign) <= _FOREIGN_SHOWN else self.foreign[:10]
        lines.extend(f"  . keep       {rule_id} (not ours, kept as is)" for rule_id in shown)
        if len(shown) < len(self.foreign):
            lines.append(
                f"  . keep       ... and {len(self.foreign) - len(shown)} more rules not ours"
            )
        lines.extend(f"  ! warning    {warning}" for warning in self.warnings)
        if not self.has_changes:
            lines.append("No changes: the lifecycle configuration is up to date.")
        elif self.applied:
            lines.append(f"Applied: the bucket now has {len(self.merged_rules)} lifecycle rule(s).")
        elif self.dry_run:
            lines.append("Dry run: nothing was written.")
        else:
            lines.append("Not applied (run 'audit-log retention apply' to write it).")
        return lines


def _canonical(value: Any) -> Any:
    """A comparable form of a rule: ``None`` and ``ExpiredObjectDeleteMarker: false`` dropped."""
    if isinstance(value, Mapping):
        return {
            k: _canonical(v)
            for k, v in value.items()
            if v is not None and not (k == "ExpiredObjectDeleteMarker" and v is False)
        }
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, member in value.items():
            flat.update(_flatten(member, f"{path}.{key}" if path else str(key)))
        return flat
    return {path: value}


def _differences(before: Rule, after: Rule) -> tuple[str, ...]:
    old, new = _flatten(_canonical(before)), _flatten(_canonical(after))
    missing = "(absent)"
    return tuple(
        f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    )


def _rule_prefix(rule: Mapping[str, Any]) -> str | None:
    """The key prefix a rule acts on (``""``: the whole bucket); None if it cannot be told."""
    if "Filter" in rule:
        flt = rule["Filter"] or {}
        if "Prefix" in flt:
            return str(flt["Prefix"])
        if "And" in flt:
            return str((flt["And"] or {}).get("Prefix", ""))
        return ""  # empty filter, or only a tag / object-size condition: any key
    if "Prefix" in rule:
        return str(rule["Prefix"])
    return None


_ACTIONS: Final = (
    "Expiration",
    "NoncurrentVersionExpiration",
    "Transitions",
    "NoncurrentVersionTransitions",
)


def _overlap_warning(rule: Mapping[str, Any], key_prefix: str, days: int) -> str | None:
    if rule.get("Status") != "Enabled":
        return None
    rule_prefix = _rule_prefix(rule)
    if rule_prefix is None:
        return None
    if not (key_prefix.startswith(rule_prefix) or rule_prefix.startswith(key_prefix)):
        return None
    actions = [name for name in _ACTIONS if rule.get(name)]
    if not actions:
        return None
    return (
        f"rule {_describe_foreign(rule)} also acts on {key_prefix or 'the whole bucket'} "
        f"({', '.join(actions)}): S3 "
        f"honours the shorter expiration when rules overlap, so make sure it does not remove or "
        f"move audit data before {days} days (Object Lock still protects locked versions)"
    )


def _describe_foreign(rule: Mapping[str, Any]) -> str:
    rule_id = rule.get("ID")
    if rule_id:
        return repr(rule_id)
    return f"<no ID, prefix {_rule_prefix(rule)!r}>"


def _read_lifecycle(client: Any, bucket: str) -> tuple[list[Rule], str | None]:
    response = _call(client.get_bucket_lifecycle_configuration, _NO_LIFECYCLE, Bucket=bucket)
    if response is None:
        return [], None
    rules = list(response.get("Rules") or [])
    return rules, response.get("TransitionDefaultMinimumObjectSize")


def plan_retention(client: Any, bucket: str, prefix: str, days: int) -> RetentionPlan:
    """Compare the bucket's lifecycle rules with ours; nothing is written.

    Rules whose ID is one of ours for ``prefix`` are replaced (in place, keeping the order);
    missing ones are appended; every other rule is kept exactly as read. Raises ValueError when
    the merged configuration would exceed S3's 1,000 rules.
    """
    wanted = retention_rules(prefix, days)
    prefix = _check_prefix(prefix)
    current, min_object_size = _read_lifecycle(client, bucket)
    wanted_by_id = {rule["ID"]: rule for rule in wanted}

    merged: list[Rule] = []
    seen: set[str] = set()
    changed: list[RuleChange] = []
    unchanged: list[str] = []
    foreign: list[str] = []
    warnings: list[str] = []
    for rule in current:
        rule_id = rule.get("ID")
        if not isinstance(rule_id, str) or rule_id not in wanted_by_id:
            merged.append(rule)  # the very object read: written back unchanged
            foreign.append(_describe_foreign(rule))
            warning = _overlap_warning(rule, _key_prefix(prefix), days)
            if warning:
                warnings.append(warning)
            continue
        if rule_id in seen:  # a duplicate of our ID (AWS refuses these; moto stores them)
            changed.append(RuleChange(rule_id, ("duplicate rule with our ID removed",)))
            continue
        seen.add(rule_id)
        target = wanted_by_id[rule_id]
        merged.append(target)
        if _canonical(rule) == _canonical(target):
            unchanged.append(rule_id)
        else:
            changed.append(RuleChange(rule_id, _differences(rule, target)))
    added = [rule["ID"] for rule in wanted if rule["ID"] not in seen]
    merged.extend(wanted_by_id[rule_id] for rule_id in added)

    if len(merged) > MAX_LIFECYCLE_RULES:
        raise ValueError(
            f"bucket {bucket!r} would have {len(merged)} lifecycle rules with ours added; S3 "
            f"allows at most {MAX_LIFECYCLE_RULES}: remove or merge unused rules first"
        )
    return RetentionPlan(
        bucket=bucket,
        prefix=prefix,
        days=days,
        current_rules=tuple(current),
        merged_rules=tuple(merged),
        added=tuple(added),
        changed=tuple(changed),
        unchanged=tuple(unchanged),
        foreign=tuple(foreign),
        warnings=tuple(warnings),
        transition_default_minimum_object_size=min_object_size,
    )


def apply_retention(
    client: Any, bucket: str, prefix: str, days: int, *, dry_run: bool = False
) -> RetentionPlan:
    """Plan, then write the merged lifecycle configuration if it changes anything.

    The whole merged list is written (S3 replaces the configuration on every put). Applying the
    same retention twice writes nothing the second time.
    """
    plan = plan_retention(client, bucket, prefix, days)
    if dry_run:
        return replace(plan, dry_run=True)
    if not plan.has_changes:
        return plan
    options: dict[str, Any] = {}
    if plan.transition_default_minimum_object_size:
        options["TransitionDefaultMinimumObjectSize"] = plan.transition_default_minimum_object_size
    client.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={"Rules": list(plan.merged_rules)},
        **options,
    )
    return replace(plan, applied=True)


# --------------------------------------------------------------------------------------------
# Inspection


@dataclass(frozen=True)
class Finding:
    """A misconfiguration of the archive bucket."""

    severity: Severity
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.code}: {self.message}"


def _default_retention_days(rule: Mapping[str, Any] | None) -> tuple[str | None, int | None]:
    """(mode, period in days) of an Object Lock default retention; a year counts 365 days."""
    retention = (rule or {}).get("DefaultRetention") or {}
    mode = retention.get("Mode")
    days = retention.get("Days") or 0  # moto reports the unused one as 0
    years = retention.get("Years") or 0
    if days:
        return mode, int(days)
    if years:
        return mode, int(years) * 365
    return mode, None


@dataclass(frozen=True)
class _Target:
    """What :func:`inspect_bucket` checks, and the commands that fix it."""

    bucket: str
    retention_days: int
    prefix: str | None

    def command(self, name: str) -> str:
        prefix = f" --prefix {shlex.quote(self.prefix)}" if self.prefix else ""
        return f"'audit-log {name} --bucket {self.bucket}{prefix} --days {self.retention_days}'"


def _check_versioning(client: Any, target: _Target) -> list[Finding]:
    status = client.get_bucket_versioning(Bucket=target.bucket).get("Status")
    if status == "Enabled":
        return []
    state = "suspended" if status == "Suspended" else "not enabled"
    return [
        Finding(
            "error",
            "versioning-disabled",
            f"versioning is {state} on bucket {target.bucket!r}: overwrites and deletes destroy "
            f"audit records and Object Lock cannot work; run {target.command('bucket create')} "
            f"(enables versioning, then Object Lock)",
        )
    ]


def _check_object_lock(client: Any, target: _Target) -> list[Finding]:
    bucket, days = target.bucket, target.retention_days
    response = _call(client.get_object_lock_configuration, _NO_OBJECT_LOCK, Bucket=bucket)
    config = (response or {}).get("ObjectLockConfiguration") or {}
    fix = target.command("bucket create")
    if config.get("ObjectLockEnabled") != "Enabled":
        return [
            Finding(
                "error",
                "object-lock-missing",
                f"Object Lock is not enabled on bucket {bucket!r}: archived audit records can be "
                f"deleted or overwritten by anyone with delete rights; run {fix} to enable it "
                f"with a {days}-day default retention",
            )
        ]
    mode, period = _default_retention_days(config.get("Rule"))
    if period is None:
        return [
            Finding(
                "warning",
                "object-lock-no-default-retention",
                f"Object Lock on bucket {bucket!r} has no default retention: objects are only "
                f"locked if the writer sets a retention on each of them; run {fix} to set a "
                f"{days}-day default",
            )
        ]
    findings: list[Finding] = []
    if period < days:
        findings.append(
            Finding(
                "error",
                "object-lock-retention-too-short",
                f"Object Lock default retention on bucket {bucket!r} is {period} days, shorter "
                f"than the {days}-day audit retention: records can be deleted early; run {fix} "
                f"(raises the default for new objects only)",
            )
        )
    elif period > days:
        findings.append(
            Finding(
                "warning",
                "object-lock-retention-longer",
                f"Object Lock default retention on bucket {bucket!r} is {period} days, longer "
                f"than the {days}-day audit retention: lifecycle cannot delete locked versions, "
                f"so records are kept about {period - days} days longer than the policy says; "
                f"align AUDIT_LOG_RETENTION_DAYS and the lock",
            )
        )
    if mode == "GOVERNANCE":
        findings.append(
            Finding(
                "warning",
                "object-lock-governance",
                f"Object Lock on bucket {bucket!r} uses GOVERNANCE mode: principals with "
                f"s3:BypassGovernanceRetention can delete archived records; use COMPLIANCE for "
                f"a write-once guarantee auditors accept, or restrict that permission",
            )
        )
    return findings


def _check_encryption(client: Any, target: _Target) -> list[Finding]:
    response = _call(client.get_bucket_encryption, _NO_ENCRYPTION, Bucket=target.bucket)
    rules = ((response or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    if any(
        (rule.get("ApplyServerSideEncryptionByDefault") or {}).get("SSEAlgorithm") for rule in rules
    ):
        return []
    return [
        Finding(
            "error",
            "encryption-missing",
            f"bucket {target.bucket!r} has no default encryption: audit records may be stored "
            f"unencrypted at rest; run {target.command('bucket create')} (SSE-S3) or "
            f"put-bucket-encryption with SSE-KMS",
        )
    ]


def _check_public_access(client: Any, target: _Target) -> list[Finding]:
    bucket = target.bucket
    response = _call(client.get_public_access_block, _NO_PUBLIC_ACCESS_BLOCK, Bucket=bucket)
    fix = f"run {target.command('bucket create')} to turn on all four settings"
    if response is None:
        return [
            Finding(
                "warning",
                "public-access-block-missing",
                f"bucket {bucket!r} has no public access block: a bucket policy or ACL could make "
                f"audit records public (unless the account-level block is on); {fix}",
            )
        ]
    config = response.get("PublicAccessBlockConfiguration") or {}
    off = [name for name in _PUBLIC_ACCESS_SETTINGS if not config.get(name)]
    if not off:
        return []
    return [
        Finding(
            "warning",
            "public-access-block-partial",
            f"bucket {bucket!r} public access block leaves {', '.join(off)} off: audit records "
            f"could be made public (unless the account-level block is on); {fix}",
        )
    ]


def _check_lifecycle(client: Any, target: _Target) -> list[Finding]:
    if target.prefix is None:
        return []
    bucket, days = target.bucket, target.retention_days
    plan = plan_retention(client, bucket, target.prefix, days)
    fix = f"run {target.command('retention apply')}"
    findings: list[Finding] = []
    if plan.added:
        findings.append(
            Finding(
                "warning",
                "lifecycle-missing",
                f"bucket {bucket!r} lacks the retention lifecycle rule(s) "
                f"{', '.join(plan.added)}: archived records are never deleted; {fix}",
            )
        )
    if plan.changed:
        findings.append(
            Finding(
                "warning",
                "lifecycle-outdated",
                f"bucket {bucket!r} has retention lifecycle rule(s) "
                f"{', '.join(change.rule_id for change in plan.changed)} that differ from a "
                f"{days}-day retention; {fix}",
            )
        )
    findings.extend(
        Finding("warning", "lifecycle-overlap", f"bucket {bucket!r}: {warning}")
        for warning in plan.warnings
    )
    return findings


_CHECKS: Final[tuple[tuple[str, Callable[[Any, _Target], list[Finding]]], ...]] = (
    ("versioning (s3:GetBucketVersioning)", _check_versioning),
    ("Object Lock (s3:GetBucketObjectLockConfiguration)", _check_object_lock),
    ("encryption (s3:GetEncryptionConfiguration)", _check_encryption),
    ("public access block (s3:GetBucketPublicAccessBlock)", _check_public_access),
    ("lifecycle (s3:GetLifecycleConfiguration)", _check_lifecycle),
)


def inspect_bucket(
    client: Any, bucket: str, *, retention_days: int, prefix: str | None = None
) -> list[Finding]:
    """Misconfigurations of the archive bucket, for a start-up check; empty when all is well.

    With ``prefix`` (``""``: the whole bucket), also checks that our lifecycle rules for it are
    present and current. A setting the caller may not read becomes a warning; a missing bucket
    raises botocore's ``ClientError`` (``NoSuchBucket``).
    """
    target = _Target(
        bucket, _check_days(retention_days), None if prefix is None else _check_prefix(prefix)
    )
    client_error = botocore_exceptions().ClientError
    findings: list[Finding] = []
    for what, check in _CHECKS:
        try:
            findings.extend(check(client, target))
        except client_error as exc:
            if error_code(exc) not in _DENIED:
                raise
            findings.append(
                Finding(
                    "warning",
                    "permission-denied",
                    f"cannot read the {what} of bucket {bucket!r}: access denied; grant that "
                    f"permission to check it",
                )
            )
    return findings


# --------------------------------------------------------------------------------------------
# Creation


def object_lock_retain_until(now: datetime, days: int) -> datetime:
    """Retain-until date (UTC) for a version written at ``now`` and kept ``days`` days.

    Rounded up to the next whole second, so the lock is never shorter than ``days`` days.
    ``now`` must be timezone-aware.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    _check_days(days)
    until = now.astimezone(UTC) + timedelta(days=days)
    if until.microsecond:
        until = until.replace(microsecond=0) + timedelta(seconds=1)
    return until


def _bucket_exists(client: Any, bucket: str) -> bool:
    """True if the bucket exists and we may use it, False if it does not exist."""
    client_error = botocore_exceptions().ClientError
    try:
        client.head_bucket(Bucket=bucket)
    except client_error as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return False
        if code in _DENIED:
            raise PermissionError(
                f"bucket {bucket!r} exists but access is denied: either another account owns "
                f"it (bucket names are global: pick another name) or these credentials lack "
                f"s3:ListBucket on it"
            ) from exc
        raise
    return True


def _at_least_as_strong(mode: str, days: int, than_mode: str | None, than_days: int) -> bool:
    """Whether a default retention (mode, days) weakens (than_mode, than_days) in no respect."""
    mode_ok = mode == "COMPLIANCE" or than_mode != "COMPLIANCE"
    return mode_ok and days >= than_days


def _ensure_bucket(client: Any, bucket: str, region: str | None) -> tuple[bool, str]:
    if _bucket_exists(client, bucket):
        return False, f"Bucket s3://{bucket}: exists and is accessible; completing its settings."
    region = region or client.meta.region_name
    options: dict[str, Any] = {}
    if region and region not in _US_EAST_1:
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True, **options)
    return True, (
        f"Bucket s3://{bucket}: created in {region or 'the default region'} with Object Lock "
        f"enabled. Object Lock can never be turned off again, which is what makes the archive "
        f"tamper-proof in an auditor's eyes."
    )


def _ensure_versioning(client: Any, bucket: str) -> str:
    if client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled":
        state = "already enabled"
    else:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        state = "enabled now"
    return (
        f"Versioning: {state}. Every write makes a new version and a delete only adds a delete "
        f"marker, so no audit record can be silently overwritten or removed; Object Lock "
        f"requires it."
    )


def _ensure_object_lock(client: Any, bucket: str, mode: LockMode, days: int, created: bool) -> str:
    response = _call(client.get_object_lock_configuration, _NO_OBJECT_LOCK, Bucket=bucket)
    config = (response or {}).get("ObjectLockConfiguration") or {}
    enabled = config.get("ObjectLockEnabled") == "Enabled"
    current_mode, current_days = _default_retention_days(config.get("Rule"))
    wanted = f"{mode} {days} days"
    if mode == "COMPLIANCE":
        why = (
            "Each archived version is write-once (WORM) until its retain-until date; in "
            "COMPLIANCE mode nobody, the root account included, can delete it or shorten the "
            "period: the immutability evidence SOC 2, ISO 27001 and HIPAA auditors ask for."
        )
    else:
        why = (
            "Each archived version is write-once (WORM) until its retain-until date; in "
            "GOVERNANCE mode principals with s3:BypassGovernanceRetention can still delete it "
            "early, so auditors will ask who holds that permission."
        )
    if enabled and (current_mode, current_days) == (mode, days):
        return f"Object Lock default retention: already {wanted}. {why}"
    if enabled and current_days and not _at_least_as_strong(mode, days, current_mode, current_days):
        return (
            f"Object Lock default retention: kept {current_mode} {current_days} days; the "
            f"requested {wanted} would weaken it (shorter, or GOVERNANCE instead of COMPLIANCE), "
            f"which is left to a deliberate, manual put-object-lock-configuration."
        )
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
        },
    )
    if current_days:
        before = f" (was {current_mode} {current_days} days)"
    elif not enabled and not created:
        before = " (Object Lock enabled on the existing bucket)"
    else:
        before = ""
    return (
        f"Object Lock default retention: set to {wanted}{before}, for versions written from "
        f"now on. {why}"
    )


def _ensure_public_access_block(client: Any, bucket: str) -> str:
    response = _call(client.get_public_access_block, _NO_PUBLIC_ACCESS_BLOCK, Bucket=bucket)
    config = (response or {}).get("PublicAccessBlockConfiguration") or {}
    if all(config.get(name) for name in _PUBLIC_ACCESS_SETTINGS):
        state = "already on"
    else:
        client.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration=dict.fromkeys(_PUBLIC_ACCESS_SETTINGS, True),
        )
        state = "turned on"
    return (
        f"Public access block: all four settings {state}. No bucket policy or ACL can make the "
        f"audit records public, a basic confidentiality control."
    )


def _ensure_encryption(client: Any, bucket: str) -> str:
    response = _call(client.get_bucket_encryption, _NO_ENCRYPTION, Bucket=bucket)
    rules = ((response or {}).get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
    algorithms = [
        (rule.get("ApplyServerSideEncryptionByDefault") or {}).get("SSEAlgorithm") for rule in rules
    ]
    algorithm = next((name for name in algorithms if name), None)
    if algorithm is None:
        client.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        state = "set to SSE-S3 (AES256)"
    else:
        state = f"already {algorithm}, kept"
    return (
        f"Default encryption: {state}. Every record is encrypted at rest; SSE-KMS with your own "
        f"key adds key-usage records in CloudTrail and revocation (see docs/s3-archive.md)."
    )


def _ensure_lifecycle(client: Any, bucket: str, prefix: str, days: int) -> list[str]:
    plan = apply_retention(client, bucket, prefix, days)
    summary = (
        f"{len(plan.added)} added, {len(plan.changed)} updated, {len(plan.unchanged)} "
        f"unchanged, {len(plan.foreign)} other rule(s) kept"
    )
    scope = _key_prefix(plan.prefix) or "the whole bucket"
    line = (
        f"Lifecycle rules for {scope}: {summary}. Each record gets a delete marker after "
        f"{days} days and is deleted for good about a day later, once its lock has expired "
        f"(about {days + 1} to {days + 2} days in all), so records are not kept longer than the "
        f"retention policy says."
    )
    return [line, *(f"Warning: {warning}" for warning in plan.warnings)]


def create_bucket(
    client: Any,
    bucket: str,
    *,
    retention_days: int,
    lock_mode: LockMode = "COMPLIANCE",
    region: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> list[str]:
    """Create or complete a correctly configured archive bucket; one explanation line per setting.

    The bucket is created with Object Lock (so versioning), a ``lock_mode`` default retention of
    ``retention_days`` days, all four public access block settings, SSE-S3 default encryption
    and the retention lifecycle rules for ``prefix``. An existing bucket of ours is completed:
    versioning and then Object Lock are enabled if missing; an existing encryption setting is
    kept; an existing default retention is never weakened (longer, or COMPLIANCE where
    GOVERNANCE is requested, stays). Raises PermissionError if the name belongs to someone else.
    """
    _check_days(retention_days)
    prefix = _check_prefix(prefix)
    if lock_mode not in _LOCK_MODES:
        raise ValueError(f"lock mode must be one of {', '.join(_LOCK_MODES)}, got {lock_mode!r}")
    created, line = _ensure_bucket(client, bucket, region)
    return [
        line,
        _ensure_versioning(client, bucket),
        _ensure_object_lock(client, bucket, lock_mode, retention_days, created),
        _ensure_public_access_block(client, bucket),
        _ensure_encryption(client, bucket),
        *_ensure_lifecycle(client, bucket, prefix, retention_days),
    ]
