"""What only the Django version of the example SaaS API is tested for: ALLOWED_HOSTS.

Everything the three versions share is in ``test_saas_api.py`` and ``test_saas_audit.py``
(including the audit event of a request Django refuses for its host).
"""

from __future__ import annotations

import httpx
import pytest

from tests.examples.frameworks import DJANGO, Framework
from tests.examples.helpers import ALICE


@pytest.fixture
def framework() -> Framework:
    return DJANGO


def test_hosts_outside_allowed_hosts_are_refused(client: httpx.Client) -> None:
    body = {"email": ALICE[0], "password": ALICE[1]}
    response = client.post("/auth/login", json=body, headers={"host": "evil.test"})
    assert response.status_code == 400
    assert response.json() == {"detail": "Bad Request"}
    assert client.post("/auth/login", json=body, headers={"host": "localhost"}).status_code == 200
