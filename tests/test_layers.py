"""The embedded default's channel layer: channels' in-memory layer with a linear group_send."""

from __future__ import annotations

import asyncio

from events_app.server.channel_layer import LinearInMemoryChannelLayer


async def joined(layer: LinearInMemoryChannelLayer, group: str, count: int) -> list[str]:
    channels = [await layer.new_channel() for _ in range(count)]
    for channel in channels:
        await layer.group_add(group, channel)
    return channels


async def test_group_send_reaches_every_member_once():
    layer = LinearInMemoryChannelLayer()
    channels = await joined(layer, "g", 50)
    await layer.group_send("g", {"type": "doorbell", "sequence": 1})
    received = [await asyncio.wait_for(layer.receive(channel), 1) for channel in channels]
    assert received == [{"type": "doorbell", "sequence": 1}] * 50
    assert all(layer.channels.get(channel) is None for channel in channels)  # nothing left over


async def test_group_send_copies_the_message_once_so_the_sender_cannot_change_it():
    layer = LinearInMemoryChannelLayer()
    [first, second] = await joined(layer, "g", 2)
    message = {"type": "doorbell", "event": {"sequence": 1}}
    await layer.group_send("g", message)
    message["event"]["sequence"] = 99
    assert (await layer.receive(first))["event"] == {"sequence": 1}
    assert (await layer.receive(second))["event"] == {"sequence": 1}


async def test_a_full_member_misses_the_message_and_the_others_still_get_it():
    layer = LinearInMemoryChannelLayer(capacity=1)
    [full, other] = await joined(layer, "g", 2)
    await layer.send(full, {"type": "filler"})
    await layer.group_send("g", {"type": "doorbell"})
    assert await layer.receive(full) == {"type": "filler"}
    assert await layer.receive(other) == {"type": "doorbell"}
    assert full not in layer.channels  # the doorbell was not queued behind the filler


async def test_expired_messages_are_still_swept_at_the_sweep_interval():
    layer = LinearInMemoryChannelLayer(expiry=0)
    layer.sweep_interval = 0
    [member] = await joined(layer, "g", 1)
    await layer.group_send("g", {"type": "stale"})
    layer._clean_expired()
    assert member not in layer.channels
    assert member not in layer.groups.get("g", {})  # like channels: an expired message ends membership
