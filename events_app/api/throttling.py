"""Rate limits for the write endpoints and the token endpoint.

DRF's ``SimpleRateThrottle`` counting in a Django cache: with ``REDIS_URL``
set the project's default cache is Redis, so every process shares one count.
Rates come from ``HUMANINPUT_THROTTLE_*_RATE`` (empty disables); callers are
told apart by principal (API key, token id, user), else by client address.

If the cache cannot be reached (Redis down) the throttle lets the request
through and logs it: a rate limit must not turn a Redis outage into failed
writes, which the database alone can still take.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import caches
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from ..auth import Principal
from ..conf import humaninput_settings

logger = logging.getLogger(__name__)


class HumanInputThrottle(SimpleRateThrottle):
    setting_name = ""

    def __init__(self) -> None:
        self.cache = caches[humaninput_settings.THROTTLE_CACHE]
        super().__init__()

    def get_rate(self) -> str | None:
        return getattr(humaninput_settings, self.setting_name) or None

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as error:
            logger.warning("throttle cache unavailable; %s request let through: %r", self.scope, error)
            return True

    def get_cache_key(self, request: Request, view: Any) -> str:
        principal = request.auth
        named = isinstance(principal, Principal) and principal.name != "anonymous"
        ident = principal.name if named else self.get_ident(request)
        return f"humaninput-throttle:{self.scope}:{ident}"


class WriteThrottle(HumanInputThrottle):
    scope = "write"
    setting_name = "THROTTLE_WRITE_RATE"


class TokenThrottle(HumanInputThrottle):
    scope = "token"
    setting_name = "THROTTLE_TOKEN_RATE"
