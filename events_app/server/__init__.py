"""What the server needs beyond Django and channels, applied by the app itself.

A host project adds ``events_app`` to ``INSTALLED_APPS`` and calls nothing:
``EventsAppConfig.ready()`` calls ``install()``, which patches daphne (the
ASGI server we ship with) where its defaults fail our contract —

* a WebSocket message over ``HUMANINPUT_WS_MAX_MESSAGE_BYTES`` closes 1009,
  not a dropped connection (``daphne_compat.enforce_websocket_limits``);
* tokens never reach the access log (``daphne_compat.mask_access_log_tokens``);
* a client that stops reading is paced, then dropped, instead of growing
  the process without bound (``backpressure.bound_client_buffers``);
* a SIGTERM under write load exits at once rather than after the PostgreSQL
  pool's timeout (``daphne_compat.close_database_pools_on_shutdown``).

Those patches read attributes of daphne, autobahn and Twisted that are not
public API. They were written for the versions in ``SUPPORTED``; rather
than patch an unknown version blindly (and fail in production in ways no
test saw), ``install()`` refuses to start with a message naming what is
installed and what is supported. ``pyproject.toml`` declares the same
bounds, so ``pip`` keeps to them.

Without daphne installed (a host serving with another ASGI server) nothing
is patched: that server enforces its own limits.
"""

from __future__ import annotations

import re
from importlib import metadata

from django.core.exceptions import ImproperlyConfigured

from .daphne import close_database_pools_on_shutdown, enforce_websocket_limits, mask_access_log_tokens

# distribution -> (lowest supported, first unsupported), as in pyproject.toml.
SUPPORTED: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "daphne": ((4, 2, 3), (4, 3)),
    "autobahn": ((22, 4, 2), (27,)),
    "twisted": ((22, 4), (27,)),
}


def parse_version(text: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: ``"26.10.0rc1"`` -> ``(26, 10, 0)``."""
    match = re.match(r"\d+(?:\.\d+)*", text.strip())
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group().split("."))


def _spell(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def unsupported_versions(installed: dict[str, str | None]) -> list[str]:
    """One line per distribution of ``installed`` (name -> version, None if absent) outside ``SUPPORTED``."""
    problems = []
    for name, (lowest, first_unsupported) in SUPPORTED.items():
        version = installed.get(name)
        if version is None:
            continue
        try:
            parsed = parse_version(version)
        except ValueError:
            parsed = None
        if parsed is None or not lowest <= parsed < first_unsupported:
            problems.append(
                f"{name} {version} is installed; humaninput supports {name} >={_spell(lowest)},"
                f"<{_spell(first_unsupported)}"
            )
    return problems


def installed_versions() -> dict[str, str | None]:
    """The installed version of each distribution in ``SUPPORTED`` (None if not installed)."""
    versions: dict[str, str | None] = {}
    for name in SUPPORTED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def install() -> None:
    """Called from ``AppConfig.ready()``: check the server's versions, then patch it (idempotent).

    Raises ``ImproperlyConfigured`` for a version the patches were not written for.
    """
    versions = installed_versions()
    if versions["daphne"] is None:
        return
    problems = unsupported_versions(versions)
    if problems:
        raise ImproperlyConfigured(
            "humaninput patches daphne's WebSocket limits, access log and send buffers, and "
            "refuses to patch versions it was not written for: "
            + "; ".join(problems)
            + ". Install the versions pyproject.toml declares (pip install humaninput resolves them)."
        )
    enforce_websocket_limits()
    mask_access_log_tokens()
    close_database_pools_on_shutdown()
