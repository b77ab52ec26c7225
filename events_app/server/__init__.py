"""The server side of the app: daphne's patches (``install()``) and the ASGI pieces a project wires.

A host project adds ``events_app`` to ``INSTALLED_APPS`` and calls nothing:
``EventsAppConfig.ready()`` calls ``install()``, which patches daphne (the
ASGI server we ship with) where its defaults fail our contract. Each patch,
and the failure it prevents:

* ``daphne.enforce_websocket_limits``: a WebSocket message over
  ``HUMANINPUT_WS_MAX_MESSAGE_BYTES`` closes 1009 instead of a dropped
  connection (1006); a send after the closing handshake began no longer
  kills the consumer before it gives its subscription back; a close code
  already sent reaches a slow client instead of a reset;
* ``daphne.mask_access_log_tokens``: a ``?token=`` never reaches the access log;
* ``backpressure.bound_client_buffers``: a client that stops reading is
  paced, then dropped, instead of growing the process without bound;
* ``daphne.close_database_pools_on_shutdown``: a SIGTERM under write load
  exits at once rather than after the PostgreSQL pool's timeout.

The other modules here are not patches but parts a project names in its
settings or ASGI module (``humaninput_project`` does; docs/embedding.md):
``asgi_handler`` (Django's handler without a thread per open stream),
``websocket_auth`` (the session middleware, skipped for token clients) and
``channel_layer`` (the embedded default's linear in-memory layer).

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
    # Imported here: ``asgi_handler``, a sibling, is imported before Django is set up.
    from .backpressure import bound_client_buffers
    from .daphne import close_database_pools_on_shutdown, enforce_websocket_limits, mask_access_log_tokens

    enforce_websocket_limits()
    mask_access_log_tokens()
    bound_client_buffers()
    close_database_pools_on_shutdown()
