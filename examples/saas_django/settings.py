"""Django settings of the example SaaS API: a JSON API over an in-memory store.

There is no database (``DATABASES = {}``), no installed app, no template, no session and no
static file. ``DJANGO_SECRET_KEY`` sets the secret key (nothing here signs anything with it,
but Django requires one); the default is for development only.

No CSRF middleware: the API authenticates every request with an ``Authorization: Bearer``
token, never with cookies, so a cross-site form cannot act as anyone (the views are also
marked ``csrf_exempt``, so adding the middleware later changes nothing). ``CommonMiddleware``
stays, because it is what enforces ``ALLOWED_HOSTS``; ``APPEND_SLASH`` is off, as the API's
paths have no trailing slash (FastAPI-style). ``head_without_body`` drops the body of HEAD
responses, which Django leaves to the server.
"""

from __future__ import annotations

import os
from typing import Any

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "django-insecure-dev-only-saas-example-key"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

ROOT_URLCONF = "examples.saas_django.urls"
WSGI_APPLICATION = "examples.saas_django.wsgi.application"

INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "examples.saas_django.views.head_without_body",
    "django.middleware.common.CommonMiddleware",
]
APPEND_SLASH = False
DATABASES: dict[str, dict[str, Any]] = {}
USE_TZ = True

# A 500's traceback goes to stderr (Django's default mails it to ADMINS, and there are none).
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
    },
}
