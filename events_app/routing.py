"""WebSocket routes of the app, for the project's ``URLRouter``."""

from django.urls import re_path

from .streaming.websocket import HumanInputEventConsumer, UnknownRouteConsumer

# Anything after the prefix reaches the consumer, which closes 4400 on an
# invalid execution id rather than leaving the router to drop the socket.
websocket_urlpatterns = [
    re_path(r"^ws/human-input/(?P<execution_id>.*)$", HumanInputEventConsumer.as_asgi()),
]

# Appended by the project's router after every app's routes (see humaninput_project.asgi).
fallback_websocket_urlpatterns = [re_path(r"", UnknownRouteConsumer.as_asgi())]
