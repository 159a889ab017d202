"""A real S3-compatible HTTP endpoint on loopback (moto's server mode), for tests and the demo.

Tests talk to it over HTTP with boto3 exactly as to AWS. It can be stopped and started again on
the same port (its data lives in this process), to simulate an outage.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CREDENTIALS", "S3Endpoint", "running_s3"]

CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


class S3Endpoint:
    """moto's S3 server on 127.0.0.1 with start/stop/reset."""

    def __init__(self, port: int = 0) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the S3 tests need moto's server: pip install 'moto[server]'"
            ) from exc
        self._factory = ThreadedMotoServer
        self.port = port or _free_port()
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = self._factory(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Forget every bucket and object."""
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def client(self, **options: Any) -> Any:
        """A boto3 S3 client for this endpoint."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5)
        return boto3.client("s3", endpoint_url=self.url, config=config, **CREDENTIALS, **options)


@contextmanager
def running_s3() -> Iterator[S3Endpoint]:
    """Start an endpoint, yield it, stop it."""
    endpoint = S3Endpoint()
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
