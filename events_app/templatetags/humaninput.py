"""``{% load humaninput %}{% humaninput_inbox %}``: the live inbox in any Django template.

The host template needs ``request`` in its context (Django's ``request``
context processor) and a staff user; the widget brings its own CSS and JS.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.middleware.csrf import get_token
from django.urls import reverse

from ..exceptions import InvalidExecutionId
from ..inbox import pending_requests
from ..params import validate_execution_id

register = template.Library()


@register.inclusion_tag("events_app/includes/inbox_widget.html", takes_context=True)
def humaninput_inbox(
    context: template.Context, execution_id: str | None = None, title: str = ""
) -> dict[str, Any]:
    """Pending requests (of one execution, or all), answerable in place, updated live."""
    request = context.get("request")
    if execution_id:
        try:
            validate_execution_id(execution_id)
        except InvalidExecutionId as error:
            raise template.TemplateSyntaxError(f"humaninput_inbox: {error.detail}") from None
    stream_url = reverse("humaninput-inbox-stream")
    if execution_id:
        stream_url += f"?execution_id={execution_id}"
    respond_url = reverse(
        "humaninput-request-respond", kwargs={"request_id": "00000000-0000-0000-0000-000000000000"}
    )
    return {
        "pending": pending_requests(execution_id=execution_id or None),
        "execution_id": execution_id or "",
        "title": title or (f"Pending for {execution_id}" if execution_id else "Pending human input"),
        "stream_url": stream_url,
        "respond_url_template": respond_url,
        "csrf_token": get_token(request) if request is not None else "",
    }
