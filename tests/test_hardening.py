"""The app hardens daphne by itself, and only versions it was written for."""

from __future__ import annotations

import pytest
from daphne.access import AccessLogGenerator
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from events_app import server as hardening
from events_app.server import daphne


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("4.2.3", (4, 2, 3)), ("26.10.0rc1", (26, 10, 0)), ("27", (27,)), (" 25.1.post2 ", (25, 1))],
)
def test_versions_are_read_by_their_release_numbers(text, parsed):
    assert hardening.parse_version(text) == parsed


def test_the_installed_server_is_one_the_patches_were_written_for():
    assert hardening.unsupported_versions(hardening.installed_versions()) == []


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("daphne", "4.3.0"),
        ("daphne", "4.2.2"),
        ("autobahn", "27.1.0"),
        ("twisted", "22.3.0"),
        ("daphne", "x"),
    ],
)
def test_a_version_outside_the_supported_range_is_named(name, version):
    installed = {**hardening.installed_versions(), name: version}
    (problem,) = hardening.unsupported_versions(installed)
    assert problem.startswith(f"{name} {version} is installed; humaninput supports {name} >=")


def test_install_refuses_an_unsupported_daphne_instead_of_patching_it(monkeypatch):
    monkeypatch.setattr(hardening, "installed_versions", lambda: {"daphne": "5.0", "autobahn": None})
    monkeypatch.setattr(daphne, "enforce_websocket_limits", lambda: pytest.fail("patched blindly"))
    with pytest.raises(ImproperlyConfigured, match=r"daphne 5\.0 is installed; humaninput supports"):
        hardening.install()


def test_install_leaves_another_asgi_server_alone(monkeypatch):
    monkeypatch.setattr(hardening, "installed_versions", lambda: dict.fromkeys(hardening.SUPPORTED))
    monkeypatch.setattr(daphne, "enforce_websocket_limits", lambda: pytest.fail("patched"))
    hardening.install()


def test_ready_applied_the_patches_without_the_project_calling_them():
    assert getattr(WebSocketFactory, "_humaninput_limits", False)
    assert getattr(AccessLogGenerator, "_humaninput_limits", False)
    assert getattr(Server, "_humaninput_bounded", False)


def test_a_project_missing_a_required_app_fails_the_system_check(settings):
    apps = [app for app in settings.INSTALLED_APPS if app != "drf_spectacular_sidecar"]
    with override_settings(INSTALLED_APPS=apps):
        errors = [message for message in run_checks() if message.id == "humaninput.E001"]
    assert len(errors) == 1
    assert "drf_spectacular_sidecar" in errors[0].msg


def test_a_project_without_a_channel_layer_is_warned(settings):
    with override_settings(CHANNEL_LAYERS={}):
        warnings = [message.id for message in run_checks()]
    assert "humaninput.W001" in warnings
