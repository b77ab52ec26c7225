from django.urls import path, re_path

from ..http import unknown_endpoint
from ..streaming.poll import PollView
from .docs import DocsView, SchemaView
from .endpoints import (
    RequestCancelView,
    RequestDetailView,
    RequestListCreateView,
    RequestRespondView,
    TokenCreateView,
    TokenRevokeView,
)
from .operations import HealthView

urlpatterns = [
    re_path(r"^poll/human-input/(?P<execution_id>[\s\S]*)$", PollView.as_view(), name="humaninput-poll"),
    path("health", HealthView.as_view(), name="humaninput-health"),
    path("api/human-input/requests", RequestListCreateView.as_view(), name="humaninput-requests"),
    path(
        "api/human-input/requests/<str:request_id>",
        RequestDetailView.as_view(),
        name="humaninput-request",
    ),
    path(
        "api/human-input/requests/<str:request_id>/respond",
        RequestRespondView.as_view(),
        name="humaninput-request-respond",
    ),
    path(
        "api/human-input/requests/<str:request_id>/cancel",
        RequestCancelView.as_view(),
        name="humaninput-request-cancel",
    ),
    path("api/tokens", TokenCreateView.as_view(), name="humaninput-tokens"),
    path("api/tokens/<str:token_id>/revoke", TokenRevokeView.as_view(), name="humaninput-token-revoke"),
    path("api/schema/", SchemaView.as_view(), name="humaninput-schema"),
    path("api/docs/", DocsView.as_view(url_name="humaninput-schema"), name="humaninput-docs"),
    # Last: any other path under api/ is a JSON 404, not the host's (or Django's) HTML page.
    re_path(r"^api/", unknown_endpoint, name="humaninput-unknown-endpoint"),
]
