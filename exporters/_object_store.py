"""Where archive objects land: an S3 bucket (boto3) or a local directory with the same layout."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

__all__ = ["LocalStore", "ObjectStore", "S3Store", "open_store"]


class ObjectStore(Protocol):
    """Write-once object storage."""

    description: str

    def put(self, key: str, body: bytes) -> None:
        """Store ``body`` under ``key``; raise on any failure (the caller retries)."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` is already stored (used when replaying a spool)."""
        ...


class LocalStore:
    """A directory: ``<root>/<key>``, written atomically (temporary file, fsync, rename)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.description = str(self.root)

    def put(self, key: str, body: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()


class S3Store:
    """An S3 bucket (or any S3-compatible endpoint), through boto3's standard configuration.

    Uploads carry a SHA-256 checksum (Object Lock buckets require one) and, when the bucket has
    Object Lock, a retain-until date covering the retention period.
    """

    def __init__(
        self,
        bucket: str,
        *,
        client: Any = None,
        retention_days: int = 90,
        lock_mode: str | None = None,
        timeout: float = 10.0,
        connections: int = 10,
    ) -> None:
        self.bucket = bucket
        self.description = f"s3://{bucket}"
        self.retention_days = retention_days
        self.lock_mode = lock_mode
        self._client = client
        self._own_client = client is None  # made here, lazily: made again after a fork
        self._timeout = timeout
        self._connections = max(10, connections)  # botocore's default pool size, or more

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise ImportError(
                    "the S3 archive needs boto3: pip install 'audit-log-middleware[s3]'"
                ) from exc
            config = Config(
                connect_timeout=self._timeout,
                read_timeout=self._timeout,
                retries={"max_attempts": 1},  # the archive's uploader retries with backoff
                max_pool_connections=self._connections,  # one per concurrent upload
            )
            self._client = boto3.client("s3", config=config)
        return self._client

    def after_fork(self) -> None:
        """In a forked child: forget the client this store made, whose pooled connections
        are the parent's sockets too; the next call makes a new one. A client passed in is
        the caller's to manage."""
        if self._own_client:
            self._client = None

    def put(self, key: str, body: bytes) -> None:
        extra: dict[str, Any] = {}
        if self.lock_mode:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.retention_days)
            extra = {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": until}
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ContentMD5=_content_md5(body),
            ContentType="application/gzip" if key.endswith(".gz") else "application/octet-stream",
            **extra,
        )

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def object_lock_mode(self) -> str | None:
        """The bucket's default Object Lock mode, or None when it has no Object Lock."""
        try:
            config = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code == "ObjectLockConfigurationNotFoundError":
                return None
            raise
        lock = config.get("ObjectLockConfiguration", {})
        if lock.get("ObjectLockEnabled") != "Enabled":
            return None
        mode = lock.get("Rule", {}).get("DefaultRetention", {}).get("Mode")
        return str(mode) if mode else "COMPLIANCE"


def _content_md5(body: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - S3's integrity header


def open_store(url: str, **options: Any) -> tuple[ObjectStore, str]:
    """Parse ``s3://bucket/prefix``, ``file:///dir`` or a directory; return (store, prefix)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"archive URL {url!r} has no bucket: expected s3://bucket/prefix")
        return S3Store(parsed.netloc, **options), parsed.path.strip("/")
    if parsed.scheme in ("", "file"):
        root = parsed.path if parsed.scheme == "file" else url
        if not root:
            raise ValueError("archive URL is empty: expected s3://bucket/prefix or a directory")
        return LocalStore(root), ""
    raise ValueError(f"archive URL {url!r}: expected s3://bucket/prefix or a local directory")
