"""``events_app.auth``: API key, scoped tokens, staff sessions and anonymous access."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import AnonymousUser, User
from django.core import signing
from django.test import RequestFactory, override_settings

from events_app import auth
from events_app.auth import (
    READ,
    RESPOND,
    Credentials,
    authenticate,
    authorize,
    bearer_token,
    http_token,
    issue_token,
)
from events_app.exceptions import NotAuthenticated, NotFound, PermissionDenied, TokenRevoked
from events_app.services import token_issue, token_revoke

# A scoped token is checked against the revocation list in the database.
pytestmark = pytest.mark.django_db

T0 = 1_800_000_000


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """``time.time()`` as ``events_app.auth`` sees it, under the test's control."""
    fake = FakeClock(T0)
    monkeypatch.setattr(auth, "time", fake)
    return fake


def staff_user() -> User:
    return User(username="alice", is_staff=True)


# --- API key --------------------------------------------------------------


def test_api_key_gives_full_access(api_key, execution_id):
    principal = authenticate(Credentials(token=api_key))
    assert principal.is_full_access
    authorize(principal, execution_id=execution_id, scope=RESPOND)


@pytest.mark.parametrize(
    "token",
    [
        "wrong",
        "test-api-key-but-longer",
        "Bearer test-api-key",
        "ключ",
        "key-🔑",
        "\udcff",
        "\x00",
        "a:b:c",
        "é:é:é",
        "x" * 5000,
    ],
)
def test_wrong_token_is_not_authenticated(token):
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=token))


def test_api_key_with_one_character_changed_is_not_authenticated(api_key):
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=api_key[:-1] + chr(ord(api_key[-1]) ^ 1)))


def test_api_key_padded_past_the_length_limit_is_not_authenticated(api_key):
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=api_key + " " * 5000))


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_not_authenticated_when_a_key_is_set(token):
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=token))


# --- scoped tokens ------------------------------------------------------------


def test_read_token_can_read_its_execution(execution_id):
    token, _ = issue_token(execution_id=execution_id, scope=READ)
    authorize(authenticate(Credentials(token=token)), execution_id=execution_id, scope=READ)


def test_read_token_cannot_respond(execution_id):
    token, _ = issue_token(execution_id=execution_id, scope=READ)
    with pytest.raises(PermissionDenied):
        authorize(authenticate(Credentials(token=token)), execution_id=execution_id, scope=RESPOND)


@pytest.mark.parametrize("scope", [READ, RESPOND])
def test_respond_token_can_read_and_respond(execution_id, scope):
    token, _ = issue_token(execution_id=execution_id, scope=RESPOND)
    authorize(authenticate(Credentials(token=token)), execution_id=execution_id, scope=scope)


@pytest.mark.parametrize("scope", [READ, RESPOND])
def test_scoped_token_is_denied_on_another_execution(execution_id, other_execution_id, scope):
    token, _ = issue_token(execution_id=execution_id, scope=RESPOND)
    with pytest.raises(PermissionDenied):
        authorize(authenticate(Credentials(token=token)), execution_id=other_execution_id, scope=scope)


def test_scoped_token_is_not_full_access(execution_id):
    token, _ = issue_token(execution_id=execution_id, scope=RESPOND)
    assert not authenticate(Credentials(token=token)).is_full_access


def test_scoped_token_is_valid_until_just_before_its_expiry(execution_id, clock):
    token, expires = issue_token(execution_id=execution_id, scope=READ, ttl_seconds=60)
    assert expires == T0 + 60
    clock.now = expires - 0.5
    authorize(authenticate(Credentials(token=token)), execution_id=execution_id, scope=READ)


def test_expired_scoped_token_is_not_authenticated(execution_id, clock):
    token, expires = issue_token(execution_id=execution_id, scope=READ, ttl_seconds=60)
    clock.now = expires
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=token))


def test_token_lifetime_defaults_to_the_setting(execution_id, clock):
    with override_settings(HUMANINPUT_TOKEN_DEFAULT_TTL_SECONDS=120):
        _, expires = issue_token(execution_id=execution_id, scope=READ)
    assert expires == T0 + 120


def test_token_lifetime_is_capped_at_the_maximum(execution_id, clock):
    with override_settings(HUMANINPUT_TOKEN_MAX_TTL_SECONDS=300):
        _, expires = issue_token(execution_id=execution_id, scope=READ, ttl_seconds=10_000)
    assert expires == T0 + 300


def test_unknown_scope_cannot_be_issued(execution_id):
    with pytest.raises(ValueError):
        issue_token(execution_id=execution_id, scope="admin")


@pytest.mark.parametrize("position", [0, 10, -1])
def test_tampered_token_is_not_authenticated(execution_id, position):
    token, _ = issue_token(execution_id=execution_id, scope=RESPOND)
    flipped = "A" if token[position] != "A" else "B"
    tampered = token[:position] + flipped + (token[position + 1 :] if position != -1 else "")
    assert tampered != token
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=tampered))


def test_token_signed_with_another_secret_is_not_authenticated(execution_id):
    with override_settings(SECRET_KEY="another-deployment-secret"):
        token, _ = issue_token(execution_id=execution_id, scope=RESPOND)
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=token))


def test_other_signed_value_of_the_same_shape_is_not_a_token(execution_id):
    forged = signing.dumps({"e": execution_id, "s": RESPOND, "x": 2**40, "j": "x"})
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=forged))


# --- sessions -------------------------------------------------------------------


def test_staff_session_gives_full_access():
    principal = authenticate(Credentials(token=None, user=staff_user()))
    assert principal.is_full_access
    assert principal.name == "user:alice"


def test_non_staff_session_is_not_authenticated():
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=None, user=User(username="bob", is_staff=False)))


def test_anonymous_user_is_not_authenticated():
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=None, user=AnonymousUser()))


def test_wrong_token_is_refused_even_for_a_staff_session():
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token="wrong", user=staff_user()))


# --- anonymous access --------------------------------------------------------


@override_settings(HUMANINPUT_API_KEY="", DEBUG=True)
def test_anonymous_has_full_access_without_key_in_debug():
    assert authenticate(Credentials(token=None)).is_full_access


@override_settings(HUMANINPUT_API_KEY="", DEBUG=False, HUMANINPUT_ALLOW_ANONYMOUS=True)
def test_anonymous_has_full_access_without_key_when_allowed():
    assert authenticate(Credentials(token=None)).is_full_access


@override_settings(HUMANINPUT_API_KEY="", DEBUG=False, HUMANINPUT_ALLOW_ANONYMOUS=False)
def test_anonymous_is_refused_without_key_debug_or_allowance():
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=None))


@override_settings(DEBUG=True, HUMANINPUT_ALLOW_ANONYMOUS=True)
def test_anonymous_is_refused_whenever_a_key_is_set():
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token=None))


@override_settings(HUMANINPUT_API_KEY="", DEBUG=True)
def test_wrong_token_is_refused_even_where_anonymous_is_allowed():
    with pytest.raises(NotAuthenticated):
        authenticate(Credentials(token="wrong"))


# --- reading the token from a request ------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc  ", "abc"),
        ("Bearer ", None),
        ("Bearer", None),
        ("Basic abc", None),
        ("Token abc", None),
        ("Bearerabc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token_is_read_from_the_authorization_header(header, expected):
    assert bearer_token(header) == expected


def test_bearer_header_wins_over_query_token():
    request = RequestFactory().get(
        "/poll/x?token=from-query", headers={"Authorization": "Bearer from-header"}
    )
    assert http_token(request) == "from-header"


def test_query_token_is_used_without_bearer_header():
    request = RequestFactory().get("/poll/x?token=from-query", headers={"Authorization": "Basic abc"})
    assert http_token(request) == "from-query"


def test_request_without_token_has_none():
    assert http_token(RequestFactory().get("/poll/x?token=")) is None


def test_request_token_wins_over_its_session(execution_id):
    token, _ = issue_token(execution_id=execution_id, scope=READ)
    request = RequestFactory().get(f"/poll/x?token={token}")
    request.user = staff_user()
    assert authenticate(Credentials.of_request(request)).execution_id == execution_id


def test_request_without_token_uses_the_staff_session():
    request = RequestFactory().get("/poll/x")
    request.user = staff_user()
    assert authenticate(Credentials.of_request(request)).is_full_access


# --- revocation ----------------------------------------------------------------


def test_issued_token_is_recorded_with_who_issued_it(execution_id):
    token, record = token_issue(execution_id=execution_id, scope=RESPOND, issued_by="api-key")
    principal = authenticate(Credentials(token=token))
    assert principal.token_id == record.token_id
    assert principal.name == f"token:{record.token_id}"
    assert (record.execution_id, record.scope, record.issued_by) == (execution_id, RESPOND, "api-key")
    assert not record.is_revoked


def test_revoked_token_is_not_authenticated_before_it_expires(execution_id):
    token, record = token_issue(execution_id=execution_id, scope=READ)
    token_revoke(token_id=record.token_id, revoked_by="user:alice")
    with pytest.raises(TokenRevoked):
        authenticate(Credentials(token=token))


@pytest.mark.django_db(transaction=True)
async def test_revoked_token_is_not_authenticated_from_async_code(execution_id):
    token, record = await database_sync_to_async(token_issue)(execution_id=execution_id, scope=READ)
    assert (await auth.aauthenticate(Credentials(token=token))).token_id == record.token_id
    await database_sync_to_async(token_revoke)(token_id=record.token_id)
    with pytest.raises(TokenRevoked):
        await auth.aauthenticate(Credentials(token=token))


def test_revoking_twice_keeps_the_first_revocation(execution_id):
    _, record = token_issue(execution_id=execution_id, scope=READ)
    first = token_revoke(token_id=record.token_id, revoked_by="user:alice")
    second = token_revoke(token_id=record.token_id, revoked_by="user:bob")
    assert (second.revoked_at, second.revoked_by) == (first.revoked_at, "user:alice")


@pytest.mark.parametrize("token_id", ["", "0" * 32, "x" * 200, "ünïcode"])
def test_revoking_an_unknown_token_is_not_found(token_id):
    with pytest.raises(NotFound) as raised:
        token_revoke(token_id=token_id)
    assert raised.value.code == "not_found"


def test_revoking_one_token_leaves_the_others_of_its_execution(execution_id):
    kept, _ = token_issue(execution_id=execution_id, scope=READ)
    _, revoked = token_issue(execution_id=execution_id, scope=READ)
    token_revoke(token_id=revoked.token_id)
    assert authenticate(Credentials(token=kept)).execution_id == execution_id


def test_a_token_minted_without_a_record_is_still_valid(execution_id):
    """The revocation list names revoked tokens; a signed token with no row is not revoked."""
    token, _ = issue_token(execution_id=execution_id, scope=READ)
    assert authenticate(Credentials(token=token)).execution_id == execution_id


# --- Origin of session WebSockets ----------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("http://localhost:8000", True),
        ("https://127.0.0.1", True),
        ("https://humaninput.example.com", True),
        ("https://ops.trusted.example", True),
        ("https://deep.ops.trusted.example", True),
        ("http://ops.trusted.example", False),  # trusted for https only
        ("https://evil.example", False),
        ("https://localhost.evil.example", False),
        ("null", False),
        ("file://", False),
        ("", False),
        ("https://", False),
        ("javascript://localhost", False),
    ],
)
def test_session_origin_must_be_an_allowed_host_or_trusted_origin(settings, origin, allowed):
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://humaninput.example.com", "https://*.trusted.example"]
    assert auth.origin_allowed(origin) is allowed


def test_only_a_session_principal_is_marked_as_coming_through_a_session(api_key):
    staff = User(username="op", is_staff=True)
    assert authenticate(Credentials(token=None, user=staff)).via_session
    assert not authenticate(Credentials(token=api_key, user=staff)).via_session
