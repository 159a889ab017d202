"""``audit-log verify``: check an archive's tamper evidence; ``audit-log keygen``: a signing key.

``audit-log verify URL [--since T] [--until T] [--org ORG] [--stream S] [--public-key FILE ...]
[--open-grace SECONDS] [--json] [--progress|--no-progress]`` runs
:func:`audit_middleware.integrity._verify.verify_archive` over a directory or
``s3://bucket/prefix`` (``--events FILE`` instead checks a JSON-lines copy of events, ``-`` for
stdin) and names every finding with its location. Exit status: 0 when nothing was found, 1 on
any finding, 2 on a usage error or when the archive cannot be read.

``audit-log keygen --out FILE`` writes a new Ed25519 private key (PEM, mode 0600) and its public
key beside it as ``FILE.pub.pem``, and prints the fingerprint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Final

__all__ = ["register", "run_keygen", "run_verify"]

VERIFY_HELP: Final = "verify the archive's hash chains and signed digests (exit 1 on findings)"
KEYGEN_HELP: Final = "write a new Ed25519 digest-signing key (and its public key)"
_BAR_WIDTH: Final = 30


def _add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", metavar="URL", help="s3://bucket/prefix or a directory")
    parser.add_argument(
        "--events",
        metavar="FILE",
        help="verify a JSON-lines copy of events (e.g. from a log platform) instead; - for stdin",
    )
    parser.add_argument("--since", metavar="TIME", help="RFC 3339, inclusive (selects days)")
    parser.add_argument("--until", metavar="TIME", help="RFC 3339, exclusive (selects days)")
    parser.add_argument("--org", metavar="ORG", help="only this organization's partitions")
    parser.add_argument("--stream", metavar="STREAM", help="only this writer stream")
    parser.add_argument(
        "--public-key",
        dest="public_keys",
        action="append",
        default=[],
        metavar="FILE",
        help="a trusted public key PEM (repeat for rotated keys; default: the keys published "
        "in the archive itself, which a bucket writer could replace)",
    )
    parser.add_argument(
        "--open-grace",
        metavar="SECONDS",
        type=float,
        default=None,
        help="objects stored less than this long ago may still lack a digest (default 7200)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="draw a progress bar on stderr (default: when stderr is a terminal)",
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false")


def _add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE", help="private key file to write")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def register(subparsers: Any) -> None:
    """Add ``verify`` and ``keygen`` to the ``audit-log`` sub-command parsers."""
    sub = subparsers.add_parser("verify", help=VERIFY_HELP, description=VERIFY_HELP)
    _add_verify_arguments(sub)
    sub.set_defaults(run=run_verify)
    sub = subparsers.add_parser("keygen", help=KEYGEN_HELP, description=KEYGEN_HELP)
    _add_keygen_arguments(sub)
    sub.set_defaults(run=run_keygen)


# -- verify --------------------------------------------------------------------------------------


class _ProgressBar:
    """``[#####.....] done/total objects``, redrawn in place at most 10 times a second."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._drawn = False
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = _BAR_WIDTH if total <= 0 else _BAR_WIDTH * done // total
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self._out.write(f"\rverifying [{bar}] {done}/{total} objects")
        self._out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._out.write("\n")
            self._out.flush()


def _printable(value: object) -> str:
    text = "" if value is None else str(value)
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _load_keys(paths: list[str]) -> dict[str, Any] | None:
    if not paths:
        return None
    from audit_middleware.integrity._keys import load_public_key

    keys: dict[str, Any] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"--public-key {path}: cannot read it ({exc.strerror})") from None
        try:
            key = load_public_key(data)
        except ValueError as exc:
            raise ValueError(f"--public-key {path}: {exc}") from None
        keys[key.fingerprint] = key
    return keys


def _lines(path: str) -> list[bytes]:
    if path == "-":
        return sys.stdin.buffer.read().splitlines()
    try:
        return Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"--events {path}: cannot read it ({exc.strerror})") from None


def run_verify(args: argparse.Namespace) -> int:
    """Verify, print the report, return 0 (clean) or 1 (findings)."""
    from audit_middleware.integrity._verify import (
        DEFAULT_OPEN_GRACE,
        VerifyReport,
        verify_archive,
        verify_events,
    )

    if (args.url is None) == (args.events is None):
        raise ValueError("pass an archive URL or --events FILE (one of them)")
    if args.open_grace is not None and args.open_grace < 0:
        raise ValueError("--open-grace must not be negative")
    report: VerifyReport
    if args.events is not None:
        scoped = [args.since, args.until, args.org, args.stream, args.open_grace]
        if any(option is not None for option in scoped) or args.public_keys:
            raise ValueError("--events takes no archive options (--since, --org, ...)")
        report = verify_events(_lines(args.events), source=args.events)
        target = args.events
    else:
        show = sys.stderr.isatty() if args.progress is None else args.progress
        bar = _ProgressBar(sys.stderr) if show else None
        try:
            report = verify_archive(
                args.url,
                since=args.since,
                until=args.until,
                org_id=args.org,
                stream=args.stream,
                public_keys=_load_keys(args.public_keys),
                open_grace=DEFAULT_OPEN_GRACE if args.open_grace is None else args.open_grace,
                progress=bar,
            )
        except OSError as exc:  # listing failed: no such bucket, no access, ...
            raise ValueError(f"cannot read the archive {args.url}: {exc}") from None
        finally:
            if bar is not None:
                bar.close()
        target = args.url
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=True, indent=2))
    else:
        for line in _describe(target, report):
            print(line)
    return 0 if report.ok else 1


def _describe(target: str, report: Any) -> list[str]:
    lines = [
        f"{_printable(target)}: checked {report.objects} object(s), {report.events} event(s), "
        f"{report.digests} digest(s), {report.streams} stream(s)"
        + ("" if report.complete else " (partial scope: seq gaps not checked)")
    ]
    if report.findings:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(report.kinds().items()))
        lines.append(f"FAILED: {len(report.findings)} finding(s): {counts}")
        lines += [f"  {_printable(finding)}" for finding in report.findings]
    else:
        lines.append("OK: no findings.")
    if report.notices:
        lines.append(f"{len(report.notices)} notice(s):")
        lines += [f"  {_printable(notice)}" for notice in report.notices]
    return lines


# -- keygen --------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ValueError(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise ValueError(f"cannot write {path} ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode otherwise
        out.write(data)


def run_keygen(args: argparse.Namespace) -> int:
    """Write the key pair and print where, with the fingerprint."""
    from audit_middleware.integrity._keys import generate_signing_key

    key = generate_signing_key()
    path = Path(args.out)
    public_path = Path(f"{args.out}.pub.pem")
    if public_path.exists() and not args.force:
        raise ValueError(f"{public_path} exists; pass --force to overwrite it")
    _write_private(path, key.pem(), args.force)
    try:
        public_path.write_bytes(key.public.pem())
    except OSError as exc:
        raise ValueError(f"cannot write {public_path} ({exc.strerror})") from None
    print(f"fingerprint: {key.fingerprint}")
    print(f"private key: {path} (mode 0600; keep it out of the archive bucket)")
    print(f"public key:  {public_path}")
    print(f"sign digests with AUDIT_LOG_SIGNING_KEY_FILE={path}; verify with --public-key")
    return 0
