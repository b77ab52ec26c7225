"""HTTP routes of the app; include at the site root (``path("", include("events_app.urls"))``)."""

from django.urls import include, path, re_path

from .api.operations import metrics_view
from .inbox import inbox_page, inbox_stream
from .streaming.sse import human_input_stream

urlpatterns = [
    re_path(r"^events/human-input/(?P<execution_id>[\s\S]*)$", human_input_stream, name="humaninput-sse"),
    path("inbox/", inbox_page, name="humaninput-inbox"),
    path("inbox/stream", inbox_stream, name="humaninput-inbox-stream"),
    path("inbox/<str:execution_id>/", inbox_page, name="humaninput-inbox-execution"),
    path("metrics", metrics_view, name="humaninput-metrics"),
    re_path(r"", include("events_app.api.urls")),
]
