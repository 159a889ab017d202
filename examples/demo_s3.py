"""The demo's S3: moto's server on a loopback port, and a bucket configured for audit logs."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

__all__ = ["LoopbackS3", "bucket_settings"]


class LoopbackS3:
    """A real S3-compatible HTTP endpoint (moto's server mode) on ``127.0.0.1``, in its own
    process, as a real S3 would be (an in-process server would share this process's GIL).

    ``start()`` also points boto3 and pyarrow at it through the standard variables
    (``AWS_ENDPOINT_URL_S3``, dummy credentials), as a deployment would for any S3 provider.
    """

    def __init__(self) -> None:
        if importlib.util.find_spec("moto") is None:  # pragma: no cover - environment
            raise SystemExit("the demo needs moto's server: pip install 'moto[server]'")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.05)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL_S3": self.url,
                "AWS_ACCESS_KEY_ID": "demo",
                "AWS_SECRET_ACCESS_KEY": "demo",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")


def bucket_settings(client: Any, bucket: str) -> dict[str, Any]:
    """What the bucket enforces, read back from S3: versioning, Object Lock, lifecycle rules."""
    lock = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    retention = lock.get("Rule", {}).get("DefaultRetention", {})
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    return {
        "versioning": client.get_bucket_versioning(Bucket=bucket).get("Status"),
        "object_lock": f"{retention.get('Mode')} {retention.get('Days')} days",
        "lifecycle": [rule["ID"] for rule in rules],
    }
