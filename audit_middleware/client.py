"""A small synchronous Python client for the audit-log retrieval API (httpx).

.. code-block:: python

    from audit_middleware.client import AuditLogClient

    with AuditLogClient("https://api.example.com", token="...") as client:
        events = client.orgs.get_audit_logs(org_id="org_acme", action="user.login.*", limit=50)
        for event in client.orgs.iter_audit_logs(org_id="org_acme", since="2026-11-01T00:00:00Z"):
            ...

``get_audit_logs`` returns one page (a list of event dicts, newest first); ``iter_audit_logs``
follows the cursors. ``since``/``until`` take RFC 3339 strings or aware datetimes. A non-2xx
answer raises :class:`AuditLogAPIError` with the status and the server's error code and message.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["AuditLogAPIError", "AuditLogClient"]


class AuditLogAPIError(Exception):
    """An error answer of the retrieval API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _params(
    actor: str | None,
    action: str | None,
    outcome: str | None,
    since: datetime | str | None,
    until: datetime | str | None,
    limit: int | None,
    cursor: str | None,
) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in (("actor", actor), ("action", action), ("outcome", outcome)):
        if value is not None:
            params[name] = value
    for name, moment in (("since", since), ("until", until)):
        if moment is not None:
            params[name] = moment.isoformat() if isinstance(moment, datetime) else moment
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    code, message = f"http_{response.status_code}", response.text[:200]
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))
        message = str(body["error"].get("message", message))
    raise AuditLogAPIError(response.status_code, code, message)


class _Orgs:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def _page(self, org_id: str, params: dict[str, str]) -> tuple[list[dict[str, Any]], Any]:
        if not isinstance(org_id, str) or not org_id:
            raise ValueError("org_id must be a non-empty string")
        response = self._http.get(f"/orgs/{quote(org_id, safe='')}/audit-logs", params=params)
        _raise_for(response)
        body = response.json()
        data: list[dict[str, Any]] = body["data"]
        return data, body.get("next_cursor")

    def get_audit_logs(
        self,
        *,
        org_id: str,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list[dict[str, Any]]:
        """One page of the org's events, newest first."""
        params = _params(actor, action, outcome, since, until, limit, cursor)
        return self._page(org_id, params)[0]

    def iter_audit_logs(
        self,
        *,
        org_id: str,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching event, newest first, fetched ``limit`` (page size) at a time."""
        params = _params(actor, action, outcome, since, until, limit, None)
        while True:
            data, cursor = self._page(org_id, params)
            yield from data
            if not isinstance(cursor, str) or not data:
                return
            params["cursor"] = cursor


class AuditLogClient:
    """Client of the retrieval API at ``base_url`` (where the router is mounted)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base_url, headers=headers, transport=transport, timeout=timeout
        )
        self.orgs = _Orgs(self._http)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AuditLogClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
