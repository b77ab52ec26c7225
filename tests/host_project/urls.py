"""An existing dashboard project that embeds humaninput (see docs/embedding.md)."""

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render
from django.urls import include, path


@staff_member_required
def dashboard(request):
    return render(request, "dashboard.html", {"team": "Release engineering"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("dashboard/", dashboard, name="dashboard"),
    # humaninput mounted under a prefix of the host's choosing.
    path("humaninput/", include("events_app.urls")),
]
