"""What only the FastAPI version of the example SaaS API is tested for.

Everything the three versions share is in ``test_saas_api.py`` and ``test_saas_audit.py``.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import pytest

from audit_middleware.testing import capture_audit_events
from examples.saas_domain import PasswordHasher
from tests.examples.frameworks import FASTAPI, Framework, Running
from tests.examples.helpers import ALICE, claims, login, seeded_store, wait_for


@pytest.fixture
def framework() -> Framework:
    return FASTAPI


class SecondBoundaryHasher(PasswordHasher):
    """Verifies passwords just after the next whole second, as a slow login might."""

    def verify(self, password: str, stored: str) -> bool:
        time.sleep(math.ceil(time.time()) - time.time() + 0.02)
        return super().verify(password, stored)


def test_a_login_that_crosses_a_second_boundary_still_names_its_actor(running: Running) -> None:
    """The returned token's ``iat`` (whole seconds) is later than the request's start time.

    The library checks a response token as of the response, not the request's start, so the
    token verifies even with ``leeway_seconds = 0``.
    """
    store = seeded_store()
    store.hasher = SecondBoundaryHasher(n=2**10)
    with (
        running("wrapped", store=store) as srv,
        srv.client() as c,
        capture_audit_events() as captured,
    ):
        token = login(c, *ALICE)
        [event] = wait_for(captured, 1)
    assert claims(token)["iat"] > datetime.fromisoformat(event.occurred_at).timestamp()
    assert event.action == "user.login.succeeded"
    assert event.actor.id == "usr_1"
    assert event.actor.email == ALICE[0]
    assert event.org_id == "org_1"
