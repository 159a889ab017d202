"""The example SaaS HTTP API on Django: an existing project, written without audit logging in mind.

A minimal Django project over :mod:`examples.saas_domain` that serves the same HTTP API as
``examples/saas_fastapi.py`` (same paths, methods, JSON bodies, statuses and response
bodies), so the same rules file (``examples/audit-rules.toml``) describes its audit events:

- :mod:`.settings`: no database, no installed apps, no templates, no sessions.
- :mod:`.urls`: the routes, with Django path converters (``orgs/<str:org_id>/members``).
- :mod:`.views`: function views returning ``JsonResponse``, and the replaceable store.
- :mod:`.wsgi`: ``create_application()`` and the ONE line that adds audit logging::

      application = AuditWSGIMiddleware(get_wsgi_application(), rules_file=RULES_FILE)

Serve it with ``SAAS_JWT_SECRET`` set to a secret of at least 32 bytes (the app signs access
tokens with it, and the middleware verifies bearer tokens with the same secret)::

    SAAS_JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \\
        waitress-serve examples.saas_django.wsgi:application
"""
