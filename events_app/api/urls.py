from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from .requests import (
    RequestCancelView,
    RequestDetailView,
    RequestListCreateView,
    RequestRespondView,
    TokenCreateView,
    TokenRevokeView,
)
from .views import HealthView, PollView

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
    path("api/schema/", SpectacularAPIView.as_view(), name="humaninput-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="humaninput-schema"), name="humaninput-docs"),
]
