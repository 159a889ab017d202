"""``audit-log athena ddl``: print the Athena ``CREATE EXTERNAL TABLE`` for the archive.

``audit-log athena ddl --table T --location s3://bucket/prefix [--format jsonl|parquet]
[--projection-start yyyy-MM-dd] [--org-projection injected|enum --org ORG ...]`` prints the
statement made by :func:`audit_middleware.athena.ddl`. It writes nothing and calls no AWS API.
A bad argument exits 2 with one line on stderr.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

__all__ = ["add_ddl_arguments", "register", "run_ddl"]

HELP: Final = "Amazon Athena tables over the archive"
DDL_HELP: Final = "print the CREATE EXTERNAL TABLE statement (partition projection) for Athena"


def add_ddl_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="table name ([a-z_][a-z0-9_]*)")
    parser.add_argument(
        "--location", required=True, metavar="S3_URL", help="the archive, s3://bucket/prefix"
    )
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument(
        "--projection-start",
        metavar="DAY",
        default="2026-01-01",
        help="first day of the dt projection, yyyy-MM-dd (default 2026-01-01)",
    )
    parser.add_argument(
        "--org-projection",
        choices=("injected", "enum"),
        default="injected",
        help="injected (default): every query must name one org; enum: the listed orgs",
    )
    parser.add_argument(
        "--org",
        dest="orgs",
        action="append",
        default=[],
        metavar="ORG",
        help="an org id of an enum projection (repeat for each org)",
    )


def run_ddl(args: argparse.Namespace) -> int:
    from audit_middleware.athena import ddl

    print(
        ddl(
            args.table,
            args.location,
            format=args.format,
            projection_start=args.projection_start,
            org_projection=args.org_projection,
            orgs=tuple(args.orgs),
        )
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``athena ddl`` to the ``audit-log`` sub-command parsers."""
    group = subparsers.add_parser("athena", help=HELP, description=HELP)
    commands = group.add_subparsers(dest="command", metavar="<command>", required=True)
    sub = commands.add_parser("ddl", help=DDL_HELP, description=DDL_HELP)
    add_ddl_arguments(sub)
    sub.set_defaults(run=run_ddl)
