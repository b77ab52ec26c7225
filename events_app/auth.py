"""Who is asking: one place that turns a token or a session into a ``Principal``.

Every transport (WebSocket, SSE, poll) and the REST API call ``authenticate``
with what the client presented, then ``authorize`` for the execution and
scope it wants. Three kinds of credential exist:

* the API key (``HUMANINPUT_API_KEY``): full access;
* scoped tokens minted by ``issue_token``: one execution, scope ``read`` or
  ``respond``, until they expire;
* a logged-in staff user's session: full access from the browser.

With no API key configured, anonymous full access is allowed only when
``DEBUG`` is on or ``HUMANINPUT_ALLOW_ANONYMOUS`` is set (the project refuses
to start otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core import signing

from .conf import humaninput_settings
from .exceptions import NotAuthenticated, PermissionDenied

READ = "read"
RESPOND = "respond"
SCOPES = (READ, RESPOND)
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

    @property
    def is_full_access(self) -> bool:
        return self.execution_id is None and set(SCOPES) <= self.scopes

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


def issue_token(*, execution_id: str, scope: str, ttl_seconds: int | None = None) -> tuple[str, int]:
    """Mint a signed token for one execution and scope; returns it and its expiry (epoch s)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    ttl = ttl_seconds or humaninput_settings.TOKEN_DEFAULT_TTL_SECONDS
    ttl = min(ttl, humaninput_settings.TOKEN_MAX_TTL_SECONDS)
    expires = int(time.time()) + int(ttl)
    body = {"e": execution_id, "s": scope, "x": expires, "j": uuid.uuid4().hex}
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


def authenticate(*, token: str | None, user: Any = None) -> Principal:
    """The principal behind ``token`` (API key or scoped token) or a staff ``user``.

    A token that is present but wrong is refused even where anonymous
    access would be allowed: a client that sends a credential expects it to
    be checked. Raises ``NotAuthenticated``.
    """
    if token:
        if len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthenticated()
        if _is_api_key(token):
            return Principal(name="api-key")
        principal = _principal_from_scoped_token(token)
        if principal is None:
            raise NotAuthenticated("Invalid or expired token.")
        return principal
    if user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_staff", False):
        return Principal(name=f"user:{user.get_username()}")
    if anonymous_allowed():
        return Principal(name="anonymous")
    raise NotAuthenticated()


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
    return bearer_token(request.headers.get("Authorization")) or request.GET.get("token") or None


def authenticate_request(request: Any) -> Principal:
    """``authenticate`` for a sync Django request (token first, then the session)."""
    token = http_token(request)
    return authenticate(token=token, user=None if token else getattr(request, "user", None))


async def aauthenticate_request(request: Any) -> Principal:
    """``authenticate`` for an async Django view."""
    token = http_token(request)
    user = None if token else await request.auser()
    return authenticate(token=token, user=user)
