"""The one way a transport opens a subscription, and what it does on each failure.

Every live transport — WebSocket, SSE, long poll — hands ``open_subscription``
the client's ``Credentials``, the execution id from its path and its query
(SSE also its ``Last-Event-ID`` header), and gets back an
``ExecutionSubscription`` positioned after the cursor, or one
``HumanInputError``. The steps, in this order: authenticate, check the
execution id, parse the cursor, authorize ``read``, resolve the cursor in
the log. The inbox stream authenticates through ``open_inbox`` the same way.
The transports only translate the outcome; what each does with each failure
is this table (every HTTP answer is JSON ``{"code", "detail"}``, a 401 with
``WWW-Authenticate``):

================================  ===========  ================================  =========
failure                           WebSocket    SSE                               long poll
================================  ===========  ================================  =========
missing, wrong, expired or        close 4401   401                               401
revoked token (at open)
token of another execution        close 4403   403                               403
session from a foreign Origin     close 4403   (no check: a cookie read          (same)
                                               cross-origin is unreadable)
malformed execution id, cursor    close 4400   400                               400
or number; a parameter given
twice (``?token=a&token=b``)
database down while opening       close 4503   503                               503
database down at the first read   close 4503   last message ``{"type": "error",  503
                                               "code": "service_unavailable"}``
database down once open           stays open: logged, retried at each catch-up,  empty page
                                  nothing lost                                   at deadline
channel layer down                catch-up reads only; the group is rejoined     (same)
                                  at each catch-up
token revoked once open           close 4401   last message ``{"type": "error",  401
                                               "code": "token_revoked"}``
================================  ===========  ================================  =========

After the stream's last message the server ends it; EventSource reconnects
and meets the failure as a status. The inbox stream answers like SSE, and
403 to a principal without full access. What a WebSocket client sends is
checked in ``frames``: a refused frame (a read token answering, bad JSON)
gets an error frame and the connection stays open.
"""

from __future__ import annotations

from ..auth import READ, Credentials, Principal, aauthenticate, authorize
from ..exceptions import PermissionDenied
from ..log import aresolve_cursor
from ..params import Query, parse_cursor, validate_execution_id
from .subscription import ExecutionSubscription, or_unavailable


async def open_subscription(
    credentials: Credentials,
    *,
    execution_id: str,
    query: Query,
    transport: str,
    header_cursor: str | None = None,
) -> ExecutionSubscription:
    """A subscription for whoever ``credentials`` name, after the client's cursor.

    The cursor is ``header_cursor`` (SSE's ``Last-Event-ID``) if given, else
    ``?last_event_id=``; both are checked, so a valid header cannot hide a
    malformed query cursor. The subscription is not entered: ``async with``
    it to follow the execution live, or just ``read_log()`` for a plain poll.
    """
    principal = await or_unavailable(aauthenticate(credentials))
    execution_id = validate_execution_id(execution_id)
    parsed = [parse_cursor(header_cursor), parse_cursor(query.get("last_event_id"))]
    cursor = next((value for value in parsed if value is not None), None)
    authorize(principal, execution_id=execution_id, scope=READ)
    after = await or_unavailable(aresolve_cursor(execution_id=execution_id, cursor=cursor))
    return ExecutionSubscription(
        principal=principal,
        execution_id=execution_id,
        after_sequence=after,
        cursor=cursor,
        transport=transport,
    )


async def open_inbox(credentials: Credentials, *, execution_id: str | None) -> Principal:
    """The principal of an inbox stream (full access only), with its optional execution filter checked."""
    principal = await or_unavailable(aauthenticate(credentials))
    if not principal.is_full_access:
        raise PermissionDenied("The inbox needs a staff session or the API key.")
    if execution_id is not None:
        validate_execution_id(execution_id)
    return principal
