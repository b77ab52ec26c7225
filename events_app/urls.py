"""HTTP routes of the app; include at the site root (``path("", include("events_app.urls"))``)."""

from django.urls import include, re_path

from .sse import human_input_stream

urlpatterns = [
    re_path(r"^events/human-input/(?P<execution_id>.*)$", human_input_stream, name="humaninput-sse"),
    re_path(r"", include("events_app.api.urls")),
]
