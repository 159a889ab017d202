"""The ``audit-log`` command line.

Commands are ``audit-log <group> <name> [options]``, e.g. ``audit-log retention apply``. Each
command is one function taking the parsed arguments and returning the exit status, registered
with its options in ``_commands``; add a command by adding a row there.

Exit status: 0 on success, 1 when ``bucket check`` finds an error-severity problem, 2 for a bad
argument or a failed operation (one line on stderr, no traceback). S3 credentials, region and
endpoint come from boto3's standard chain (``AWS_*`` variables, ``~/.aws``;
``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` included); ``--endpoint-url`` and ``--region``
override them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

__all__ = ["main"]

PROG: Final = "audit-log"
ARCHIVE_URL_ENV: Final = "AUDIT_LOG_ARCHIVE_URL"
RETENTION_DAYS_ENV: Final = "AUDIT_LOG_RETENTION_DAYS"


class UsageError(Exception):
    """A problem with the arguments or the environment, reported as one line (exit 2)."""


@dataclass(frozen=True)
class Command:
    """One ``audit-log <group> <name>`` command."""

    group: str
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --------------------------------------------------------------------------------------------
# Shared options and their resolution


def _add_s3_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("S3 connection (default: boto3's standard configuration)")
    group.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL_S3, "
        "AWS_ENDPOINT_URL or AWS)",
    )
    group.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    """--bucket, --prefix, --days and the S3 connection options."""
    parser.add_argument(
        "--bucket", help=f"archive bucket (default: the bucket of ${ARCHIVE_URL_ENV})"
    )
    parser.add_argument(
        "--prefix",
        help=f"archive key prefix, '' for the whole bucket (default: the path of "
        f"${ARCHIVE_URL_ENV}, else the whole bucket)",
    )
    parser.add_argument(
        "--days", type=int, help=f"retention in days (default: ${RETENTION_DAYS_ENV}, else 90)"
    )
    _add_s3_options(parser)


def _target(args: argparse.Namespace) -> tuple[str, str]:
    """(bucket, prefix) from the options, else ``AUDIT_LOG_ARCHIVE_URL``, else the whole bucket."""
    from exporters.s3_bucket import DEFAULT_PREFIX, parse_archive_url

    url = os.environ.get(ARCHIVE_URL_ENV, "").strip()
    url_bucket: str | None = None
    url_prefix = DEFAULT_PREFIX
    # With --bucket, a local-directory archive URL is irrelevant; with --prefix too, any URL is.
    relevant = not args.bucket or (args.prefix is None and url.lower().startswith("s3://"))
    if url and relevant:
        try:
            url_bucket, url_prefix = parse_archive_url(url)
        except ValueError as exc:
            raise UsageError(f"{ARCHIVE_URL_ENV}: {exc}") from None
    bucket = args.bucket or url_bucket
    if not bucket:
        raise UsageError(f"no bucket: pass --bucket or set {ARCHIVE_URL_ENV}=s3://bucket/prefix")
    if args.prefix is not None:
        return bucket, args.prefix
    # The URL's prefix belongs to the URL's bucket only.
    return bucket, url_prefix if bucket == url_bucket else DEFAULT_PREFIX


def _days(args: argparse.Namespace) -> int:
    from exporters.s3_bucket import DEFAULT_RETENTION_DAYS

    days: int | None = args.days
    if days is not None:
        return days
    raw = os.environ.get(RETENTION_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION_DAYS
    try:
        return int(raw)
    except ValueError:
        raise UsageError(
            f"{RETENTION_DAYS_ENV} must be a whole number of days, got {raw!r}"
        ) from None


def _client(args: argparse.Namespace) -> Any:
    from exporters.s3_bucket import make_client

    return make_client(endpoint_url=args.endpoint_url, region=args.region)


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


# --------------------------------------------------------------------------------------------
# retention show / apply


def _retention_show(args: argparse.Namespace) -> int:
    from exporters.s3_bucket import plan_retention

    bucket, prefix = _target(args)
    days = _days(args)
    plan = plan_retention(_client(args), bucket, prefix, days)
    _print(plan.describe())
    return 0


def _retention_apply(args: argparse.Namespace) -> int:
    from exporters.s3_bucket import apply_retention

    bucket, prefix = _target(args)
    days = _days(args)
    plan = apply_retention(_client(args), bucket, prefix, days, dry_run=args.dry_run)
    _print(plan.describe())
    return 0


def _add_retention_apply_arguments(parser: argparse.ArgumentParser) -> None:
    _add_target_options(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would change, write nothing"
    )


# --------------------------------------------------------------------------------------------
# bucket create / check


def _bucket_create(args: argparse.Namespace) -> int:
    from exporters.s3_bucket import create_bucket

    bucket, prefix = _target(args)
    days = _days(args)
    lines = create_bucket(
        _client(args),
        bucket,
        retention_days=days,
        lock_mode=args.mode,
        region=args.region,
        prefix=prefix,
    )
    _print(lines)
    return 0


def _add_bucket_create_arguments(parser: argparse.ArgumentParser) -> None:
    _add_target_options(parser)
    parser.add_argument(
        "--mode",
        choices=("COMPLIANCE", "GOVERNANCE"),
        default="COMPLIANCE",
        type=str.upper,
        help="Object Lock retention mode (default: COMPLIANCE, which nobody can bypass)",
    )


def _bucket_check(args: argparse.Namespace) -> int:
    from exporters.s3_bucket import inspect_bucket

    bucket, prefix = _target(args)
    days = _days(args)
    findings = inspect_bucket(_client(args), bucket, retention_days=days, prefix=prefix)
    errors = sum(finding.severity == "error" for finding in findings)
    scope = f"archive prefix {prefix.rstrip('/')}/" if prefix.strip("/") else "whole bucket"
    where = f"s3://{bucket} (retention {days} days, {scope})"
    if not findings:
        print(f"{where}: OK, no findings.")
        return 0
    print(f"{where}: {errors} error(s), {len(findings) - errors} warning(s)")
    for finding in findings:
        print(f"  {finding.severity:<8} {finding.code}: {finding.message}")
    return 1 if errors else 0


# --------------------------------------------------------------------------------------------
# The command table and the entry point

_GROUPS: Final[Mapping[str, str]] = {
    "retention": "lifecycle retention rules of the S3 archive",
    "bucket": "the S3 archive bucket (Object Lock, encryption, public access)",
}

_commands: Final[tuple[Command, ...]] = (
    Command(
        "retention",
        "show",
        "show how the bucket's lifecycle rules differ from the retention (writes nothing)",
        _add_target_options,
        _retention_show,
    ),
    Command(
        "retention",
        "apply",
        "merge the retention rules into the bucket's lifecycle configuration",
        _add_retention_apply_arguments,
        _retention_apply,
    ),
    Command(
        "bucket",
        "create",
        "create or complete a correctly configured archive bucket and explain each setting",
        _add_bucket_create_arguments,
        _bucket_create,
    ),
    Command(
        "bucket",
        "check",
        "report misconfigurations of the archive bucket (exit 1 on any error)",
        _add_target_options,
        _bucket_check,
    ),
)


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument as one ``audit-log: error: ...`` line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Operate the audit-log-middleware archive.")
    groups = parser.add_subparsers(dest="group", metavar="<group>", required=True)
    group_parsers: dict[str, Any] = {}  # argparse's subparsers action type is private
    for command in _commands:
        if command.group not in group_parsers:
            group_parser = groups.add_parser(command.group, help=_GROUPS.get(command.group))
            group_parsers[command.group] = group_parser.add_subparsers(
                dest="command", metavar="<command>", required=True
            )
        sub = group_parsers[command.group].add_parser(
            command.name, help=command.help, description=command.help
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    from audit_middleware._cli_query import register as register_query

    register_query(groups)  # `audit-log query`: a command without a group
    from audit_middleware._cli_athena import register as register_athena

    register_athena(groups)  # `audit-log athena ddl`
    from audit_middleware._cli_verify import register as register_verify

    register_verify(groups)  # `audit-log verify` and `audit-log keygen`
    return parser


def _describe_error(exc: BaseException) -> str:
    from exporters.s3_bucket import error_code

    code = error_code(exc)
    if not code:
        return str(exc) or type(exc).__name__
    error = getattr(exc, "response", {}).get("Error", {})
    message = error.get("Message") or ""
    bucket = error.get("BucketName")
    operation = getattr(exc, "operation_name", "S3 request")
    where = f" (bucket {bucket!r})" if bucket else ""
    hint = ""
    if code in ("NoSuchBucket", "404"):
        hint = "; create it with 'audit-log bucket create'"
    elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        hint = "; check the AWS credentials and the bucket policy"
    return f"{operation} failed: {code}: {message}{where}{hint}".replace("\n", " ")


def _expected_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UsageError, ValueError, PermissionError, ImportError]
    try:
        from exporters.s3_bucket import botocore_exceptions

        botocore = botocore_exceptions()
    except ImportError:
        return tuple(errors)
    return (*errors, botocore.ClientError, botocore.BotoCoreError)


def main(argv: list[str] | None = None) -> int:
    """Run ``audit-log`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument already reported by argparse
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _expected_errors()):
            raise
        print(f"{PROG}: error: {_describe_error(exc)}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
