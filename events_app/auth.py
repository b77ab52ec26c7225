"""Who is asking: one place that turns a token or a session into a ``Principal``.

Every entry point — the WebSocket consumer, the SSE and poll views (through
``streaming.opening``), the DRF authentication class, the inbox stream and
``/metrics`` — builds ``Credentials`` from what the client presented, calls
``authenticate`` (or ``aauthenticate``), then ``authorize`` for the execution
and scope it wants. Three kinds of credential exist:

* the API key (``HUMANINPUT_API_KEY``): full access;
* scoped tokens minted by ``issue_token``: one execution, scope ``read`` or
  ``respond``, until they expire or are revoked (``ScopedToken.revoked_at``);
* a logged-in staff user's session: full access from the browser.

With no API key configured, anonymous full access is allowed only when
``DEBUG`` is on or ``HUMANINPUT_ALLOW_ANONYMOUS`` is set (the project refuses
to start otherwise).

A scoped token is checked against the revocation list in the database each
time it is presented (``check_not_revoked``, the one revocation check), so
``authenticate`` may query: async callers use ``aauthenticate``. Connections
that stay open are re-checked by their ``ExecutionSubscription`` at each
catch-up, in one batched query per process (``revoked_token_ids``).

A browser sends its session cookie with a WebSocket handshake from any page,
so a session may open a WebSocket only from an allowed ``Origin``
(``origin_allowed``); token clients need no such check: a hostile page does
not hold the token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core import signing
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from .conf import humaninput_settings
from .exceptions import NotAuthenticated, OriginNotAllowed, PermissionDenied, TokenRevoked
from .models import ScopedToken
from .params import Query

READ = "read"
RESPOND = "respond"
SCOPES = (READ, RESPOND)
# Not a token scope: what HUMANINPUT_METRICS_TOKEN gives (``/metrics`` and nothing else).
METRICS = "metrics"
_TOKEN_SALT = "humaninput.scoped-token"
# Longer than any key or token we issue; refusing early bounds the work an
# attacker can make us do per request.
MAX_TOKEN_LENGTH = 4096
# The challenge of every 401, on every transport that speaks HTTP.
WWW_AUTHENTICATE = 'Bearer realm="humaninput"'


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``execution_id`` None means every execution."""

    name: str
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(SCOPES))
    execution_id: str | None = None
    token_id: str | None = None
    via_session: bool = False

    @property
    def is_full_access(self) -> bool:
        return self.execution_id is None and set(SCOPES) <= self.scopes

    @property
    def may_read_metrics(self) -> bool:
        return self.is_full_access or METRICS in self.scopes

    def allows(self, *, execution_id: str, scope: str) -> bool:
        if self.execution_id is not None and self.execution_id != execution_id:
            return False
        return scope in self.scopes


def _digest(value: str) -> bytes:
    # Hash both sides first: compare_digest then always compares 32 bytes, so
    # timing reveals neither the key's length nor how much of it matched.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def matches_secret(token: str, secret: str) -> bool:
    """``token == secret`` in constant time; an empty secret matches nothing."""
    return bool(secret) and hmac.compare_digest(_digest(token), _digest(secret))


def _is_api_key(token: str) -> bool:
    return matches_secret(token, humaninput_settings.API_KEY)


def anonymous_allowed() -> bool:
    return not humaninput_settings.API_KEY and (settings.DEBUG or humaninput_settings.ALLOW_ANONYMOUS)


def issue_token(
    *, execution_id: str, scope: str, ttl_seconds: int | None = None, token_id: str | None = None
) -> tuple[str, int]:
    """Mint a signed token for one execution and scope; returns it and its expiry (epoch s).

    ``token_id`` is what ``responded_by`` and the revocation list name it by
    (``services.token_issue`` records it); a random one by default.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    ttl = ttl_seconds or humaninput_settings.TOKEN_DEFAULT_TTL_SECONDS
    ttl = min(ttl, humaninput_settings.TOKEN_MAX_TTL_SECONDS)
    expires = int(time.time()) + int(ttl)
    body = {"e": execution_id, "s": scope, "x": expires, "j": token_id or uuid.uuid4().hex}
    return signing.dumps(body, salt=_TOKEN_SALT, compress=False), expires


def _principal_from_scoped_token(token: str) -> Principal | None:
    try:
        body: Any = signing.loads(token, salt=_TOKEN_SALT)
    except (signing.BadSignature, ValueError, UnicodeError):
        return None
    if not isinstance(body, dict):
        return None
    execution_id, scope, expires = body.get("e"), body.get("s"), body.get("x")
    if not isinstance(execution_id, str) or scope not in SCOPES or not isinstance(expires, int):
        return None
    if expires <= time.time():
        return None
    scopes = frozenset({READ, RESPOND}) if scope == RESPOND else frozenset({READ})
    token_id = str(body.get("j", ""))
    return Principal(name=f"token:{token_id}", scopes=scopes, execution_id=execution_id, token_id=token_id)


def revoked_token_ids(token_ids: list[str]) -> set[str]:
    """Which of ``token_ids`` are on the revocation list (one query)."""
    if not token_ids:
        return set()
    return set(
        ScopedToken.objects.filter(token_id__in=token_ids, revoked_at__isnull=False).values_list(
            "token_id", flat=True
        )
    )


arevoked_token_ids = database_sync_to_async(revoked_token_ids)


def origin_allowed(origin: str | None) -> bool:
    """Whether a browser page at ``origin`` may use a session here.

    Allowed, as Django's CSRF check reads them: ``CSRF_TRUSTED_ORIGINS``
    (``https://*.example.com`` wildcards included), and http(s) origins whose
    host is in ``ALLOWED_HOSTS`` (with ``DEBUG`` and no hosts set, localhost).
    No ``Origin`` header means no browser sent the request.
    """
    if origin is None:
        return True
    scheme, separator, netloc = origin.lower().partition("://")
    if not separator or scheme not in {"http", "https"} or not netloc:
        return False
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        trusted_scheme, _, trusted_netloc = trusted.lower().partition("://")
        if trusted_scheme != scheme:
            continue
        if netloc == trusted_netloc or (
            trusted_netloc.startswith("*") and is_same_domain(netloc, trusted_netloc[1:])
        ):
            return True
    host, _port = split_domain_port(netloc)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    return bool(host) and validate_host(host, allowed_hosts)


def authorize(principal: Principal, *, execution_id: str, scope: str) -> None:
    """Raise ``PermissionDenied`` unless ``principal`` may use ``scope`` on ``execution_id``."""
    if not principal.allows(execution_id=execution_id, scope=scope):
        raise PermissionDenied()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if that is what it is."""
    if not authorization:
        return None
    kind, _, value = authorization.partition(" ")
    if kind.lower() != "bearer":
        return None
    return value.strip() or None


def http_token(request: Any) -> str | None:
    """The token of a Django request: the Bearer header first, then ``?token=``."""
    return (
        bearer_token(request.headers.get("Authorization")) or Query.of_request(request).get("token") or None
    )


@dataclass(frozen=True)
class Credentials:
    """What a client presented: a token, a session's user, and (WebSocket only) its page's ``Origin``.

    Built by the transport with one of the constructors below; ``authenticate``
    and ``aauthenticate`` turn it into a ``Principal``.
    """

    token: str | None = None
    user: Any = None
    # A browser sends its cookies with a WebSocket handshake from any page, so a
    # session used there must come from an allowed Origin (``origin_allowed``).
    check_origin: bool = False
    origin: str | None = None

    @classmethod
    def of_request(cls, request: Any) -> Credentials:
        """A (sync) Django request's: the token, else the session's user (loaded lazily)."""
        token = http_token(request)
        return cls(token=token, user=None if token else getattr(request, "user", None))

    @classmethod
    async def of_async_request(cls, request: Any) -> Credentials:
        """An async Django view's request: the session's user is loaded without blocking."""
        token = http_token(request)
        return cls(token=token, user=None if token else await request.auser())

    @classmethod
    def of_websocket(cls, scope: dict[str, Any]) -> Credentials:
        """A WebSocket handshake's: ``?token=``, else the session's user, and the ``Origin``."""
        token = Query.of_scope(scope).get("token") or None
        origin = next(
            (value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"origin"), None
        )
        return cls(token=token, user=None if token else scope.get("user"), check_origin=True, origin=origin)


def _principal(credentials: Credentials, *, metrics: bool) -> Principal:
    """The principal before the revocation check (which needs the database)."""
    token = credentials.token
    if token:
        if len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthenticated()
        if _is_api_key(token):
            return Principal(name="api-key")
        if metrics and matches_secret(token, humaninput_settings.METRICS_TOKEN):
            return Principal(name="metrics-token", scopes=frozenset({METRICS}))
        principal = _principal_from_scoped_token(token)
        if principal is None:
            raise NotAuthenticated("Invalid or expired token.")
        return principal
    user = credentials.user
    if user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_staff", False):
        if credentials.check_origin and not origin_allowed(credentials.origin):
            raise OriginNotAllowed()
        return Principal(name=f"user:{user.get_username()}", via_session=True)
    if anonymous_allowed():
        return Principal(name="anonymous")
    raise NotAuthenticated()


def authenticate(credentials: Credentials, *, metrics: bool = False) -> Principal:
    """The principal behind ``credentials``: API key, scoped token, or a staff session.

    A token that is present but wrong is refused even where anonymous access
    would be allowed: a client that sends a credential expects it to be
    checked. ``metrics=True`` also takes ``HUMANINPUT_METRICS_TOKEN`` (for
    ``/metrics`` alone). Raises ``NotAuthenticated`` (``TokenRevoked`` for a
    revoked token) or ``OriginNotAllowed``. Queries the revocation list: from
    async code use ``aauthenticate``.
    """
    principal = _principal(credentials, metrics=metrics)
    check_not_revoked(principal)
    return principal


async def aauthenticate(credentials: Credentials, *, metrics: bool = False) -> Principal:
    """``authenticate`` for async code: only a scoped token's revocation check leaves the loop."""
    principal = _principal(credentials, metrics=metrics)
    await acheck_not_revoked(principal)
    return principal


def check_not_revoked(principal: Principal) -> None:
    """Raise ``TokenRevoked`` if ``principal``'s token is on the revocation list.

    The one revocation check: at authentication, before a WebSocket answer,
    and (batched for every open connection) at each subscription's catch-up.
    """
    if principal.token_id and revoked_token_ids([principal.token_id]):
        raise TokenRevoked()


async def acheck_not_revoked(principal: Principal) -> None:
    """``check_not_revoked`` for async code."""
    if principal.token_id and await arevoked_token_ids([principal.token_id]):
        raise TokenRevoked()
