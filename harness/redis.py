"""Redis as the tests and the bench reach it: clients with deadlines, keys dropped by pattern, group members.

Every client here bounds its connect and its replies, so a Redis that stops
answering fails a test or a bench run instead of hanging it.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 30.0
LAYER_PREFIX = "asgi"  # channels_redis' default prefix, which the project's settings keep


def client(url: str) -> redis.Redis:
    """A blocking client for ``url`` whose connect and replies have deadlines."""
    return redis.Redis.from_url(url, socket_timeout=REPLY_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT)


def async_client(url: str) -> aioredis.Redis:
    """An asyncio client for ``url`` whose connect and replies have deadlines."""
    return aioredis.Redis.from_url(url, socket_timeout=REPLY_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT)


def delete_matching(url: str, pattern: str) -> int:
    """Delete every key of ``url``'s database that matches ``pattern`` (SCAN, not KEYS); how many."""
    with client(url) as store:
        return sum(store.delete(key) for key in store.scan_iter(match=pattern))


def flush(url: str) -> None:
    """Empty ``url``'s database (only that one: a Redis server holds others)."""
    with client(url) as store:
        store.flushdb()


async def group_members(store: aioredis.Redis, group: str, layer: str, prefix: str = LAYER_PREFIX) -> int:
    """Members of a channel-layer group as Redis holds them: the channels in it (``core``
    layer), or the processes subscribed to its channel (``pubsub``: a process subscribes
    while it holds a member)."""
    if layer == "core":
        return await store.zcard(f"{prefix}:group:{group}")
    [(_, subscribed)] = await store.pubsub_numsub(f"{prefix}__group__{group}")
    return subscribed
