from django.urls import re_path

from .views import HealthView, PollView

urlpatterns = [
    re_path(r"^poll/human-input/(?P<execution_id>.*)$", PollView.as_view(), name="humaninput-poll"),
    re_path(r"^health/?$", HealthView.as_view(), name="humaninput-health"),
]
