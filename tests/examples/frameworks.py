"""The three versions of the example SaaS API, and all that differs between them.

``examples/saas_fastapi.py``, ``examples/saas_flask.py`` and ``examples/saas_django/`` serve
the same HTTP API, so the tests are written once, against a :class:`Framework`:

- how to build the bare app over a store, and how to wrap it in the one line (plus test-only
  delivery options); Django's settings are configured once per process and its views' store
  is per process: each build replaces it, and one app is served at a time;
- how to serve it: FastAPI under uvicorn (``tests.conftest.serve``), Flask and Django under
  waitress (``tests.conftest.serve_wsgi``). Starting and stopping a server is slow (waitress's
  loop wakes up once a second), so one server of each kind serves the whole package, and each
  test installs its freshly built app on the server's :class:`Switchboard`;
- the frameworks' own answers that differ: HEAD, the shape of a 422, ALLOWED_HOSTS;
- how the one-line app is served from the environment in production (:class:`Deployment`).
"""

from __future__ import annotations

import io
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from audit_middleware import AuditEvent, AuditMiddleware, AuditWSGIMiddleware, Exporter
from examples import saas_fastapi, saas_flask
from examples.saas_django import wsgi as saas_django
from examples.saas_domain import Store
from exporters import InMemoryExporter
from tests.examples.helpers import AUDIT_ENV, SECRET, http_client, seeded_store

# -- building ---------------------------------------------------------------------------------


@dataclass
class Built:
    """An app to serve, and its audit middleware (None when bare)."""

    app: Any
    middleware: AuditMiddleware | AuditWSGIMiddleware | None


def audit_options(exporters: Sequence[Exporter]) -> dict[str, Any]:
    """The test-only keyword arguments the one line gets besides ``rules_file``."""
    return {
        "exporters": list(exporters) or [InMemoryExporter()],
        "environ": AUDIT_ENV,
        "batch_interval": 0.01,
    }


#: ``wrap(app, options)``: the one line of a framework, with test-only ``options`` added.
Wrapper = Callable[[Any, dict[str, Any]], Built]


def wrap_fastapi(app: Any, options: dict[str, Any]) -> Built:
    middleware = AuditMiddleware(app, rules_file=saas_fastapi.RULES_FILE, **options)
    return Built(middleware, middleware)


def wrap_flask(app: Any, options: dict[str, Any]) -> Built:
    """Flask's one line wraps the app's ``wsgi_app``; the app stays what is served."""
    middleware = AuditWSGIMiddleware(app.wsgi_app, rules_file=saas_flask.RULES_FILE, **options)
    app.wsgi_app = middleware
    return Built(app, middleware)


def wrap_django(application: Any, options: dict[str, Any]) -> Built:
    middleware = AuditWSGIMiddleware(application, rules_file=saas_django.RULES_FILE, **options)
    return Built(middleware, middleware)


# -- the production line ----------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """How production serves the one-line app: ``<server> <target>`` with the secret set."""

    server: Literal["uvicorn", "waitress"]
    #: Each target is served in turn (Flask has two ways to name its app).
    targets: tuple[tuple[str, ...], ...]
    #: Python code that imports the module and builds the bare app, which needs no secret...
    build_bare: str
    #: ...and a Python expression that builds the one-line app, which needs it.
    build_wrapped: str

    def missing_secret_code(self) -> str:
        """Code that prints the error of building the one-line app without the secret."""
        return (
            f"{self.build_bare}\n"
            f"try:\n    {self.build_wrapped}\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n"
        )

    def command(self, target: Sequence[str], port: int) -> list[str]:
        command = [sys.executable, "-m", self.server, "--host=127.0.0.1", f"--port={port}"]
        if self.server == "uvicorn":
            command.append("--log-level=warning")
        return [*command, *target]

    @property
    def stop(self) -> signal.Signals:
        # uvicorn: SIGTERM, graceful: the lifespan shutdown flushes the events.
        # waitress: SIGINT (Ctrl-C), so that the audit pipeline flushes at interpreter exit.
        return signal.SIGTERM if self.server == "uvicorn" else signal.SIGINT


# -- the frameworks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Framework:
    name: str
    interface: Literal["asgi", "wsgi"]
    #: ``create_app(store, jwt_secret=...)``: the bare app. Django's settings are configured
    #: by the first call (DJANGO_SETTINGS_MODULE); every call makes the views of the process
    #: use ``store``, so one Django app is served at a time.
    create_app: Callable[..., Any]
    wrap: Wrapper
    deployment: Deployment
    #: The answer to ``HEAD /health``: Flask answers HEAD for every GET route, FastAPI and the
    #: Django views (as FastAPI) refuse it with 405.
    head_status: int = 405
    #: FastAPI describes a malformed body with pydantic's list of errors; the Flask and Django
    #: versions with one ``{"detail": "<loc>: <msg>"}`` message.
    pydantic_errors: bool = False
    #: Django refuses hosts outside ``ALLOWED_HOSTS`` with 400 before any view runs.
    checks_host: bool = False

    def build(self, variant: str, store: Store, exporters: Sequence[Exporter]) -> Built:
        """The app over ``store``, bare or wrapped in one line (with test-only options:
        ``exporters``, default an InMemoryExporter, and ``AUDIT_ENV``)."""
        app = self.create_app(store, jwt_secret=SECRET)
        if variant == "bare":
            return Built(app, None)
        return self.wrap(app, audit_options(exporters))

    def assert_422_detail(self, response: httpx.Response, detail: str) -> None:
        """``response`` describes a malformed body as ``detail`` (``"<loc>: <msg>"``) does."""
        assert response.status_code == 422, detail
        body = response.json()
        if not self.pydantic_errors:
            assert body == {"detail": detail}
            return
        loc, msg = detail.split(": ", 1)
        assert list(body) == ["detail"], body
        [error] = body["detail"]  # the one message is pydantic's (first) error, abridged
        assert ".".join(part for part in error["loc"] if isinstance(part, str)) == loc, body
        assert error["msg"].startswith(msg), body


FASTAPI = Framework(
    "fastapi",
    "asgi",
    saas_fastapi.create_app,
    wrap_fastapi,
    Deployment(
        "uvicorn",
        (("examples.saas_fastapi:app",),),
        "import examples.saas_fastapi as m\nm.create_app()",
        "m.app",
    ),
    pydantic_errors=True,
)
FLASK = Framework(
    "flask",
    "wsgi",
    saas_flask.create_app,
    wrap_flask,
    Deployment(
        "waitress",
        (("--call", "examples.saas_flask:wrapped_app"), ("examples.saas_flask:app",)),
        "import examples.saas_flask as m\nm.create_app()",
        "m.wrapped_app()",
    ),
    head_status=200,
)
DJANGO = Framework(
    "django",
    "wsgi",
    saas_django.create_application,
    wrap_django,
    Deployment(
        "waitress",
        (("examples.saas_django.wsgi:application",),),
        "import examples.saas_django.wsgi as m\nm.create_application()",
        "m.application",
    ),
    checks_host=True,
)
FRAMEWORKS = {f.name: f for f in (FASTAPI, FLASK, DJANGO)}


# -- serving ----------------------------------------------------------------------------------


class Switchboard:
    """The app of a package-wide server: hands each request to the app under test.

    Each test installs its own freshly built app (bare, or wrapped exactly as in production)
    over a fresh store; the request is passed on untouched.
    """

    def __init__(self) -> None:
        self.app: Any = None


class WSGISwitchboard(Switchboard):
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        app = self.app
        if app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"no app under test"]
        return app(environ, start_response)


class ASGISwitchboard(Switchboard):
    """Served with ``lifespan="off"``: each app's audit pipeline is shut down by its test."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        app = self.app
        if app is None:
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": b"no app under test"})
            return
        await app(scope, receive, send)


@dataclass
class Board:
    """A running server and its switchboard."""

    url: str
    switchboard: Switchboard


@dataclass
class Server:
    url: str
    store: Store
    middleware: AuditMiddleware | AuditWSGIMiddleware | None
    #: What the ``audited`` fixture's exporters received: events, and JSON log lines.
    memory: InMemoryExporter | None = None
    log: io.BytesIO | None = None

    def client(self) -> httpx.Client:
        return http_client(self.url)

    def delivered(self, n: int, timeout: float = 5.0) -> list[AuditEvent]:
        """Flush until the in-memory exporter has ``n`` events."""
        assert self.middleware is not None
        assert self.memory is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.middleware.auditor.force_flush(timeout=1.0)
            if len(self.memory.events) >= n:
                return self.memory.events
            time.sleep(0.01)
        raise AssertionError(f"expected {n} delivered events, got {len(self.memory.events)}")


class Running:
    """``with running("wrapped", *exporters, store=...) as server:`` the framework's app, served."""

    def __init__(self, framework: Framework, board: Board) -> None:
        self.framework = framework
        self._board = board

    @contextmanager
    def __call__(
        self, variant: str, *exporters: Exporter, store: Store | None = None
    ) -> Iterator[Server]:
        """The app over a fresh seeded store (or ``store``), bare or wrapped, being served."""
        store = store if store is not None else seeded_store()
        built = self.framework.build(variant, store, exporters)
        self._board.switchboard.app = built.app
        try:
            yield Server(self._board.url, store, built.middleware)
        finally:
            self._board.switchboard.app = None
            if built.middleware is not None:
                built.middleware.auditor.shutdown(timeout=2.0)
