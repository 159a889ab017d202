"""WSGI entry points of the example SaaS API on Django.

:func:`create_application` is the ``get_wsgi_application()`` of this project with a store of
your choosing (tests, embedding). ``application`` is what servers load
(``waitress-serve examples.saas_django.wsgi:application``; ``WSGI_APPLICATION`` for
``runserver``): the Django application wrapped in the ONE line that adds audit logging.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

# Used only by the deployment line at the bottom, never by the application itself.
from audit_middleware import AuditWSGIMiddleware
from examples.saas_django import views
from examples.saas_domain import Store

__all__ = ["RULES_FILE", "SETTINGS_MODULE", "create_application"]

#: The audit rules of this API (shared with the FastAPI and Flask versions).
RULES_FILE = Path(__file__).resolve().parent.parent / "audit-rules.toml"
SETTINGS_MODULE = "examples.saas_django.settings"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)


def create_application(store: Store | None = None, *, jwt_secret: str | None = None) -> Any:
    """Django's WSGI application for this project, its views using ``store``.

    Settings are configured once per process (from ``DJANGO_SETTINGS_MODULE``, default this
    project's), and so is the store: each call replaces the store of every application of the
    process (see :func:`examples.saas_django.views.configure`). Raises ``ImproperlyConfigured``
    if the process's settings belong to another project.
    """
    views.configure(store, jwt_secret=jwt_secret)
    application = get_wsgi_application()
    if settings.ROOT_URLCONF != "examples.saas_django.urls":
        raise ImproperlyConfigured(
            f"Django settings of this process route to {settings.ROOT_URLCONF!r}, "
            f"not to this project (use DJANGO_SETTINGS_MODULE={SETTINGS_MODULE})"
        )
    return application


# -- deployment -------------------------------------------------------------------------------
#
# The one line that adds audit logging. It is built on first access of ``application`` (which
# is what WSGI servers and ``runserver`` do) rather than at import time: the middleware refuses
# to start without the ``SAAS_JWT_SECRET`` its rules file names, and importing this module (for
# create_application) must not need it.


def __getattr__(name: str) -> AuditWSGIMiddleware:
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    application = AuditWSGIMiddleware(get_wsgi_application(), rules_file=RULES_FILE)
    globals()["application"] = application  # build it once
    return application
