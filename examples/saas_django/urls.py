"""URL patterns of the example SaaS API: the paths of ``examples/saas_fastapi.py``, no slash.

Each URL maps HTTP methods to views with :func:`~examples.saas_django.views.route`. Django's
own errors answer in JSON like the rest of the API (plain text for a 500, as FastAPI does).
"""

from __future__ import annotations

from django.urls import path

from examples.saas_django import views
from examples.saas_django.views import route

urlpatterns = [
    path("auth/register", route(POST=views.register)),
    path("auth/login", route(POST=views.login)),
    path("auth/logout", route(POST=views.logout)),
    path("auth/password-reset", route(POST=views.password_reset)),
    path("me/password", route(POST=views.change_password)),
    path("me/2fa/enable", route(POST=views.enable_two_factor)),
    path("me/2fa/disable", route(POST=views.disable_two_factor)),
    path("orgs", route(POST=views.create_org)),
    path("orgs/<str:org_id>/settings", route(PATCH=views.update_settings)),
    path("orgs/<str:org_id>/api-keys", route(POST=views.create_api_key)),
    path("orgs/<str:org_id>/api-keys/<str:key_id>", route(DELETE=views.delete_api_key)),
    path("orgs/<str:org_id>/feature-flags/<str:flag>", route(PUT=views.set_feature_flag)),
    path("orgs/<str:org_id>/invitations", route(POST=views.invite)),
    path("invitations/<str:invitation_id>/accept", route(POST=views.accept_invitation)),
    path(
        "orgs/<str:org_id>/members/<str:user_id>",
        route(PATCH=views.change_role, DELETE=views.remove_member),
    ),
    path("orgs/<str:org_id>/members", route(GET=views.list_members)),
    path("health", route(GET=views.health)),
]

handler400 = views.bad_request
handler404 = views.not_found
handler500 = views.server_error
