"""``make_state``: the one place where memory or Redis is chosen, from the settings, once per process."""

from __future__ import annotations

from ..config import Settings
from .base import State, Window, answer_lease_s, embed_per_client
from .memory import memory_state
from .redis import RedisBus, connect, ping_problem
from .redis_admission import RedisAdmission
from .redis_answers import RedisDirectory
from .redis_feed import RedisFeeds
from .redis_log import RedisLogs
from .redis_window import RedisWindow


def make_state(settings: Settings) -> State:
    return redis_state(settings) if settings.redis_url else memory_state(settings)


def redis_state(settings: Settings) -> State:
    client = connect(settings.redis_url)
    bus = RedisBus(client)

    def window(name: str, limit: int, window_s: float) -> Window:
        return RedisWindow(client, name, limit, window_s)

    return State(
        slots=RedisAdmission(
            client,
            bus,
            settings.max_active,
            settings.max_queue,
            settings.max_active_per_client,
            shares=settings.lane_shares,
        ),
        embed_slots=RedisAdmission(
            client,
            bus,
            settings.max_active_embed,
            settings.max_queue,
            embed_per_client(settings),
            "embeddings",
        ),
        logs=RedisLogs(client, settings.generation_ttl_s),
        bus=bus,
        answers=RedisDirectory(client, settings.generation_ttl_s, answer_lease_s(settings)),
        feeds=RedisFeeds(client),
        window=window,
        problem=lambda timeout_s: ping_problem(client, timeout_s),
        close=client.close,
    )
