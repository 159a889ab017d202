"""Fixtures of the example SaaS API tests: every test runs once per framework.

``framework`` is parametrized over FastAPI, Flask and Django (a module or a test narrows it:
override the fixture, or ``@pytest.mark.parametrize("framework", [...], indirect=True)``).
``running`` serves that framework's app on the package's server of its kind (see
:mod:`tests.examples.frameworks`); ``server``/``client`` run a test bare and wrapped, and
``audited`` is the wrapped app delivering to memory and to the JSON-lines log exporter.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest

from examples.saas_fastapi import create_app as create_fastapi_app
from exporters import InMemoryExporter, StructlogExporter
from tests.conftest import serve, serve_wsgi
from tests.examples.frameworks import (
    FRAMEWORKS,
    ASGISwitchboard,
    Board,
    Framework,
    Running,
    Server,
    WSGISwitchboard,
)
from tests.examples.helpers import SECRET, Answer, request_sequence, seeded_store


@pytest.fixture(params=list(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> Framework:
    return FRAMEWORKS[request.param]


@pytest.fixture(scope="package")
def asgi_board() -> Iterator[Board]:
    """One uvicorn server for the package's FastAPI tests."""
    switchboard = ASGISwitchboard()
    with serve(switchboard, lifespan="off") as url:
        yield Board(url, switchboard)


@pytest.fixture(scope="package")
def wsgi_board() -> Iterator[Board]:
    """One waitress server for the package's Flask and Django tests."""
    switchboard = WSGISwitchboard()
    with serve_wsgi(switchboard, threads=8) as url:
        yield Board(url, switchboard)


@pytest.fixture
def running(framework: Framework, request: pytest.FixtureRequest) -> Running:
    board: Board = request.getfixturevalue(f"{framework.interface}_board")
    return Running(framework, board)


@pytest.fixture(params=["bare", "wrapped"])
def app_variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server(running: Running, app_variant: str) -> Iterator[Server]:
    with running(app_variant) as srv:
        yield srv


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def audited(running: Running) -> Iterator[Server]:
    """The wrapped app, delivering to memory and to the JSON-lines log exporter."""
    memory, log = InMemoryExporter(), io.BytesIO()
    with running("wrapped", memory, StructlogExporter(output=log)) as srv:
        srv.memory, srv.log = memory, log
        yield srv


@pytest.fixture(scope="session")
def fastapi_answers() -> list[Answer]:
    """The reference: what the FastAPI version answers to :func:`request_sequence` (bare)."""
    with serve(create_fastapi_app(seeded_store(), jwt_secret=SECRET)) as url:
        return request_sequence(url)
