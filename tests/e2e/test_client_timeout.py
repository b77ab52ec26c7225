"""``ask`` gives up at its own deadline when the server stays silent.

A module of its own: no other daphne of the suite may run beside this one,
or its expiry scheduler (sharing the database) would expire the request and
the client would rightly report ``RequestExpired`` instead.
"""

from __future__ import annotations

import time

import pytest

from events_app.client import AskTimeout, HumanInputClient

from .conftest import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_ask_raises_ask_timeout_when_nothing_at_all_comes_back(tmp_path, api_key, execution_id):
    # With the server's expiry off, only the client's own deadline can end the wait.
    with running_server(tmp_path, HUMANINPUT_EXPIRY_INTERVAL_SECONDS="0") as quiet:
        client = HumanInputClient(quiet.http_url, token=api_key)
        started = time.monotonic()
        with pytest.raises(AskTimeout):
            await client.ask_async(execution_id, "Hello?", timeout=1)
        assert time.monotonic() - started < 10
