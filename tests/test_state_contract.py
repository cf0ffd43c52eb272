"""The shared state's contract: the same in-process tests over memory and over a real redis-server.

Admission slots, an answer's event log, the bus between processes, rate windows and the directory of running
answers behave alike on both backends; a second "process" (its own client and objects on the same Redis)
shows what Redis adds: places and answers whose holder died are freed, by exactly one of the survivors.

In process, as under the gevent worker: the sockets of redis-py and of requests (towards the simulator) are
gevent's, as the worker's monkey patching makes them, and waiting is ``gevent.sleep`` (``time.sleep`` would stop
every greenlet).
"""

from __future__ import annotations

import gc
import json
import secrets
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

import gevent
import gevent.socket
import pytest
import redis
import redis.connection
import urllib3.util.connection
from flask import Flask

from clawweb import create_app
from clawweb.chat import tree
from clawweb.chat.generations import Generations
from clawweb.config import load_settings
from clawweb.services import services
from clawweb.simulator import answer_tokens
from clawweb.state.base import (
    FEED_MAX_EVENTS,
    RESET,
    START,
    Entry,
    Feeds,
    LogLost,
    LogReader,
    LogWriter,
    Refused,
    Slots,
    State,
    Throttled,
    Ticket,
    Window,
    order,
    valid_cursor,
)
from clawweb.state.make import make_state
from clawweb.state.memory import MemoryFeeds
from clawweb.storage import INTERRUPTED, Store

from .support.factories import StartRedis, StartSimulator
from .support.servers import RedisServer
from .support.simproc import SimProcess

# The Redis half starts a redis-server (fetched with getfixturevalue, which the automatic marking cannot see).
ON_REDIS = [pytest.mark.integration, pytest.mark.redis]
BACKENDS = ["memory", pytest.param("redis", marks=ON_REDIS)]


def until(predicate: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` with ``gevent.sleep``, so the greenlets it waits for run meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(0.01)
    return bool(predicate())


def _kill_greenlets() -> None:
    """A backend's background greenlets (subscriber, lease renewal, flusher) run forever in a gateway; in this
    process they must not outlive the test that started them. First they get to reach a wait: one killed while
    redis-py connects would leave its new socket unclosed."""
    gevent.sleep(0.05)
    gevent.killall([g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead])


@pytest.fixture(scope="module")
def redis_server(start_module_redis: StartRedis) -> RedisServer:
    return start_module_redis()


@pytest.fixture(autouse=True)
def cooperative_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the two clients' modules: patching the whole test process would change every other test in it."""
    monkeypatch.setattr(redis.connection, "socket", gevent.socket)
    monkeypatch.setattr(urllib3.util.connection, "socket", gevent.socket)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url
    _kill_greenlets()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Processes:
    """``processes(**settings)``: one more process's state (with Redis at ``url``, all sharing it)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._made: list[State] = []

    def __call__(self, **overrides: Any) -> State:
        self._made.append(make_state(load_settings({}, {"redis_url": self._url, **overrides})))
        return self._made[-1]

    def close(self) -> None:
        _kill_greenlets()
        for state in self._made:
            state.close()


@pytest.fixture
def processes(backend: str, request: pytest.FixtureRequest) -> Iterator[Processes]:
    """Processes on the backend (with Redis, sharing one redis-server)."""
    made = Processes(request.getfixturevalue("redis_url") if backend == "redis" else "")
    yield made
    made.close()


@pytest.fixture
def redis_processes(redis_url: str) -> Iterator[Processes]:
    """As ``processes``, on Redis only: for what exists only between processes (leases, another's reader)."""
    made = Processes(redis_url)
    yield made
    made.close()


def listening(state: State, probe: list[str]) -> None:
    """Wait until the process's subscriber listens (``probe`` was subscribed to channel ``probe`` before it
    started): a message published before that is lost, as Redis' PUBLISH promises no more."""
    bus = state.bus
    bus.start()

    def heard() -> bool:
        bus.publish("probe", "?")
        return bool(probe)

    assert until(heard)


# --- admission ------------------------------------------------------------------------------------------------


def position(slots: Slots, ticket: Ticket) -> int:
    """The ticket's position once it has looked (with Redis a queued ticket learns it when it waits)."""
    slots.wait(ticket, 0.2)
    return ticket.position


def test_slots_then_a_queue_in_arrival_order(processes: Processes) -> None:
    slots = processes(max_active=2, max_queue=3, max_active_per_client=10).slots
    a, b, c, d = (slots.enter(f"client {i}") for i in range(4))
    assert [t.position for t in (a, b, c, d)] == [0, 0, 1, 2]
    assert (a.admitted, b.admitted, c.admitted, d.admitted) == (True, True, False, False)
    assert slots.active == 2
    slots.release(a)
    assert (position(slots, c), position(slots, d)) == (0, 1)
    assert c.admitted and slots.active == 2
    slots.release(b)
    assert position(slots, d) == 0 and d.admitted


def test_leaving_the_queue_moves_the_ones_behind_up(processes: Processes) -> None:
    slots = processes(max_active=1, max_queue=5, max_active_per_client=10).slots
    first = slots.enter("x")
    waiting = [slots.enter("x") for _ in range(3)]
    slots.release(waiting[0])
    slots.release(waiting[0])  # idempotent
    assert [position(slots, t) for t in waiting[1:]] == [1, 2]
    assert slots.active == 1
    slots.release(first)
    assert [position(slots, t) for t in waiting[1:]] == [0, 1]


def test_a_full_queue_refuses_with_503(processes: Processes) -> None:
    slots = processes(max_active=1, max_queue=1, max_active_per_client=10).slots
    slots.enter("a")
    slots.enter("b")
    with pytest.raises(Refused) as refused:
        slots.enter("c")
    assert refused.value.status == 503 and int(refused.value.headers["Retry-After"]) > 0


def test_the_per_client_limit_refuses_with_429_until_one_is_released(processes: Processes) -> None:
    slots = processes(max_active=1, max_queue=5, max_active_per_client=2).slots
    held = [slots.enter("x"), slots.enter("x")]
    with pytest.raises(Refused) as refused:
        slots.enter("x")
    assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) > 0
    assert slots.enter("y").position == 2  # another client queues behind them
    slots.release(held[1])  # a queued one leaving counts too
    assert not slots.enter("x").admitted


def test_a_release_wakes_the_next_in_the_queue(processes: Processes) -> None:
    state = processes(max_active=1, max_queue=5, max_active_per_client=10)
    probe: list[str] = []
    state.bus.subscribe("probe", probe.append)
    first, second = state.slots.enter("x"), state.slots.enter("x")
    listening(state, probe)
    waiter = gevent.spawn(state.slots.wait, second, 30)
    gevent.sleep(0)
    state.slots.release(first)
    assert waiter.get(timeout=10) is True  # woken, not timed out
    assert second.admitted


def test_embedding_slots_are_a_pool_of_their_own(processes: Processes) -> None:
    """Full answer slots and a queue behind them do not hold back an embedding, nor the other way round; a
    release in one pool wakes only its own waiters."""
    state = processes(max_active=1, max_active_embed=2, max_queue=5, max_active_per_client=10)
    answer, queued_answer = state.slots.enter("a"), state.slots.enter("a")
    embeds = [state.embed_slots.enter("b") for _ in range(3)]
    assert [t.admitted for t in embeds] == [True, True, False] and position(state.embed_slots, embeds[2]) == 1
    assert (state.slots.active, state.slots.queued, state.embed_slots.active, state.embed_slots.queued) == (1, 1, 2, 1)
    state.embed_slots.release(embeds[0])
    assert position(state.embed_slots, embeds[2]) == 0 and position(state.slots, queued_answer) == 1
    state.slots.release(answer)
    assert position(state.slots, queued_answer) == 0 and state.embed_slots.active == 2
    with pytest.raises(Refused) as refused:
        full = processes(max_active_embed=1, max_queue=1, max_active_per_client=10).embed_slots
        full.enter("c"), full.enter("c"), full.enter("c")
    assert refused.value.status == 503 and "embedding" in refused.value.message


def test_one_client_may_hold_every_embedding_slot_and_a_queue_behind(processes: Processes) -> None:
    """An indexing job's parallel calls are not refused at the answers' per-client limit (3): four times the
    embedding slots, active or queued, then 429 naming both settings."""
    slots = processes(max_active_embed=2, max_queue=20, max_active_per_client=3).embed_slots
    held = [slots.enter("indexer") for _ in range(8)]
    assert sum(t.admitted for t in held) == 2
    with pytest.raises(Refused) as refused:
        slots.enter("indexer")
    assert refused.value.status == 429 and "CLAWWEB_MAX_ACTIVE_EMBED" in refused.value.message
    assert not slots.enter("a RAG query").admitted  # another client still gets a place in the queue


def now_at(slots: Slots, ticket: Ticket) -> int:
    """The ticket's position as it is now (with Redis, asked without waiting)."""
    slots.wait(ticket, 0)
    return ticket.position


def served(slots: Slots, holders: list[Ticket], waiting: list[Ticket]) -> list[Ticket]:
    """Release the oldest slot holder, one at a time, until every waiter got a slot: the order they got it in.
    Each waiter's position, read before the first release, must be exactly how many got a slot before it, plus
    one: the position is the number that really goes first."""
    told = {ticket.id: now_at(slots, ticket) for ticket in waiting}
    held, pending, order = list(holders), list(waiting), []
    while pending:
        slots.release(held.pop(0))
        for ticket in [t for t in pending if now_at(slots, t) == 0]:
            pending.remove(ticket)
            held.append(ticket)
            order.append(ticket)
    assert [told[ticket.id] for ticket in order] == list(range(1, len(order) + 1))
    return order


def test_lanes_go_in_order_and_a_position_grows_saying_why(processes: Processes) -> None:
    slots = processes(max_active=1, max_queue=10, max_active_per_client=10).slots
    holder = slots.enter("h", "api")
    batch = slots.enter("b", "batch")
    api = slots.enter("a", "api")
    assert (now_at(slots, batch), now_at(slots, api)) == (2, 1)
    assert batch.reason == "api"  # an api request arrived and went in front
    page = slots.enter("p", "interactive")
    assert [now_at(slots, t) for t in (page, api, batch)] == [1, 2, 3]
    assert (api.reason, batch.reason) == ("interactive", "interactive")
    assert served(slots, [holder], [batch, api, page]) == [page, api, batch]


def test_users_take_turns_within_a_lane(processes: Processes) -> None:
    """One user's many queued calls do not sit in front of another's one: the users in a ring, each one's own in
    arrival order; the one whose call just got a slot goes to the back."""
    slots = processes(max_active=1, max_queue=10, max_active_per_client=10).slots
    holder = slots.enter("h", "api")
    many = [slots.enter("many", "api") for _ in range(4)]
    one = slots.enter("one", "api")
    assert now_at(slots, one) == 2 and [now_at(slots, t) for t in many] == [1, 3, 4, 5]
    assert many[1].reason == "turns" and many[0].reason is None
    later = slots.enter("later", "api")  # joins the ring at the back, before "many" is back for its second
    assert now_at(slots, later) == 3 and [now_at(slots, t) for t in many] == [1, 4, 5, 6]
    assert served(slots, [holder], [*many, one, later]) == [many[0], one, later, many[1], many[2], many[3]]


def test_a_lane_holds_at_most_its_share_while_another_waits(processes: Processes) -> None:
    """4 slots, the default shares: the page's lane holds at most 3 while an api request waits, then the api
    request goes before the page's fourth; a lane alone takes every slot."""
    slots = processes(max_active=4, max_queue=20, max_active_per_client=10).slots
    alone = [slots.enter(f"batch {i}", "batch") for i in range(4)]
    assert all(t.admitted for t in alone)  # alone, batch takes all four (its share is 2)
    page = [slots.enter(f"page {i}", "interactive") for i in range(4)]
    api = slots.enter("api", "api")
    assert [now_at(slots, t) for t in (*page, api)] == [1, 2, 3, 5, 4]
    assert served(slots, alone, [*page, api]) == [page[0], page[1], page[2], api, page[3]]


def test_a_batch_flood_keeps_to_its_share_of_the_slots(processes: Processes) -> None:
    """Batch arrived first and waits in numbers; api arrives: of 4 slots batch takes no more than 2 while api
    waits, whichever slot frees."""
    slots = processes(max_active=4, max_queue=20, max_active_per_client=10).slots
    api_holders = [slots.enter(f"api {i}", "api") for i in range(4)]
    flood = [slots.enter(f"batch {i}", "batch") for i in range(6)]
    more_api = [slots.enter(f"api {i}", "api") for i in range(4, 10)]
    for holder in api_holders:
        slots.release(holder)  # each freed slot: an api request, until batch has its two
    admitted = [t for t in (*flood, *more_api) if now_at(slots, t) == 0]
    assert sum(t.lane == "batch" for t in admitted) <= 2 and len(admitted) == 4
    assert sum(t.lane == "batch" for t in admitted) >= 1  # api alone would take at most its 3


def _expire_leases(url: str, key: str) -> None:
    """As if every holder in ``key`` had stopped renewing a while ago (its process was killed)."""
    client = redis.Redis.from_url(url)
    held: Any = client.zrange(key, 0, -1)
    client.zadd(key, dict.fromkeys(held, time.time() - 1))
    client.close()


def test_a_dead_holders_places_free_themselves(redis_processes: Processes, redis_url: str) -> None:
    limits = {"max_active": 1, "max_queue": 5, "max_active_per_client": 2}
    doomed, survivor = redis_processes(**limits), redis_processes(**limits)
    doomed.slots.enter("x", "interactive")
    doomed.slots.enter("x", "interactive")  # a queued place, in front of the survivor's (a lower lane)
    mine = survivor.slots.enter("y", "batch")
    assert position(survivor.slots, mine) == 2
    _expire_leases(redis_url, "clawweb:adm:leases")  # its process stopped renewing them: it died
    assert position(survivor.slots, mine) == 0
    assert survivor.slots.active == 1
    assert survivor.slots.enter("x").position == 1  # its client's count was freed with them


# --- event log ------------------------------------------------------------------------------------------------

Pair = tuple[LogWriter, LogReader]  # (the writer's log, a reader's view of it)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=ON_REDIS),
        pytest.param("redis, read by another process", marks=ON_REDIS),
    ]
)
def answer_log(request: pytest.FixtureRequest) -> Iterator[Callable[[], Pair]]:
    """``answer_log()``: a new log and a reader's view of it: the writer's own (in its process), or another
    process's (through Redis)."""
    processes = Processes(request.getfixturevalue("redis_url") if request.param != "memory" else "")
    writer, reader = processes(), processes()

    def pair() -> Pair:
        generation_id = secrets.token_hex(8)
        log = writer.logs.writer(generation_id)
        return log, reader.logs.reader(generation_id) if request.param.endswith("process") else log

    yield pair
    processes.close()


def test_a_follower_gets_every_entry_in_order_and_ends_after_the_final_one(answer_log: Callable[[], Pair]) -> None:
    log, view = answer_log()
    ids = [log.append("token", b'{"n": 1}'), log.append("token", b'{"n": 2}'), log.append("done", b"{}")]
    assert sorted(ids, key=order) == ids and len(set(ids)) == 3
    entries = [(ids[0], "token", b'{"n": 1}'), (ids[1], "token", b'{"n": 2}'), (ids[2], "done", b"{}")]
    assert list(view.follow(START, 1.0)) == entries
    assert log.finished


def test_a_follower_resumes_exactly_after_an_id(answer_log: Callable[[], Pair]) -> None:
    log, view = answer_log()
    ids = [log.append("token", b"%d" % n) for n in range(5)] + [log.append("stopped", b"{}")]
    after = [(ids[n], "token", b"%d" % n) for n in range(2, 5)] + [(ids[5], "stopped", b"{}")]
    assert list(view.follow(ids[1], 1.0)) == after
    assert list(view.follow(ids[-1], 0.05)) == []  # after the final entry: nothing, and no waiting for more


def test_a_live_follower_gets_entries_as_they_come_and_ends_with_the_final(answer_log: Callable[[], Pair]) -> None:
    log, view = answer_log()
    got: list[Any] = []
    follower = gevent.spawn(lambda: got.extend(entry for entry in view.follow(START, 0.05) if entry is not None))
    ids = []
    for n in range(3):
        gevent.sleep(0.02)
        ids.append(log.append("token", b"%d" % n))
    ids.append(log.append("error", b'{"error": "x"}'))
    follower.join(10)
    assert follower.dead and follower.successful()
    assert [entry[0] for entry in got] == ids and got[-1][1] == "error"


def test_silence_is_a_heartbeat(answer_log: Callable[[], Pair]) -> None:
    log, view = answer_log()
    follow = view.follow(START, 0.05)
    assert next(follow) is None  # nothing yet: the reader writes a heartbeat
    assert view.last_id == START and not view.caught_up(START)
    entry_id = log.append("token", b"1")
    assert next(entry for entry in follow if entry is not None) == (entry_id, "token", b"1")


def test_caught_up_only_at_the_final_entry(answer_log: Callable[[], Pair]) -> None:
    log, view = answer_log()
    first = log.append("token", b"1")
    assert until(lambda: view.last_id == first)
    assert not view.caught_up(first)
    last = log.append("done", b"{}")
    assert until(lambda: view.last_id == last)
    assert view.caught_up(last) and not view.caught_up(first)


def test_a_log_lost_before_its_end_ends_its_followers(redis_processes: Processes, redis_url: str) -> None:
    writer, reader = redis_processes(), redis_processes()
    generation_id = secrets.token_hex(8)
    log = writer.logs.writer(generation_id)
    log.append("token", b"1")
    view = reader.logs.reader(generation_id)
    follow = view.follow(START, 0.05)
    assert next(follow) is not None
    client = redis.Redis.from_url(redis_url)
    client.delete(f"clawweb:gen:{generation_id}:log")  # Redis restarted empty, say
    client.close()
    with pytest.raises(LogLost):
        list(follow)


# --- per-owner feeds -----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis, read by another process", marks=ON_REDIS)])
def feeds(request: pytest.FixtureRequest) -> Iterator[tuple[Feeds, Feeds]]:
    """(where events are published, where they are followed): one process's feeds, or two processes' on Redis."""
    processes = Processes(request.getfixturevalue("redis_url") if request.param != "memory" else "")
    writer = processes()
    yield writer.feeds, processes().feeds if request.param != "memory" else writer.feeds
    processes.close()


def taken(follow: Iterator[Entry | None], count: int) -> list[Entry]:
    """The next ``count`` entries (heartbeats skipped)."""
    got: list[Entry] = []
    for entry in follow:
        if entry is not None:
            got.append(entry)
            if len(got) == count:
                break
    return got


def test_a_feed_follower_resumes_exactly_after_its_cursor(feeds: tuple[Feeds, Feeds]) -> None:
    writer, reader = feeds
    cursor = reader.cursor("7")
    assert cursor is not None and valid_cursor(cursor)
    for n in range(4):
        writer.publish("7", "message.created", b'{"n": %d}' % n)
    got = taken(reader.follow("7", cursor, 0.05), 4)
    assert [data for _, _, data in got] == [b'{"n": %d}' % n for n in range(4)]
    ids = [entry_id for entry_id, _, _ in got]
    assert sorted(ids, key=order) == ids and len(set(ids)) == 4 and order(ids[0]) > order(cursor)
    assert taken(reader.follow("7", ids[1], 0.05), 2) == got[2:]  # Last-Event-ID: exactly what came after


def test_a_live_feed_follower_gets_events_as_they_come_and_heartbeats_between(feeds: tuple[Feeds, Feeds]) -> None:
    writer, reader = feeds
    follow = reader.follow("7", str(reader.cursor("7")), 0.05)
    assert next(follow) is None  # nothing yet: a heartbeat
    writer.publish("7", "conversation.deleted", b"{}")
    assert taken(follow, 1)[0][1:] == ("conversation.deleted", b"{}")


def test_owners_never_see_each_others_events(feeds: tuple[Feeds, Feeds]) -> None:
    writer, reader = feeds
    mine, theirs = str(reader.cursor("1")), str(reader.cursor("2"))
    writer.publish("2", "conversation.created", b"theirs")
    writer.publish("1", "conversation.created", b"mine")
    assert [data for _, _, data in taken(reader.follow("1", mine, 0.05), 1)] == [b"mine"]
    assert [data for _, _, data in taken(reader.follow("2", theirs, 0.05), 1)] == [b"theirs"]


def test_a_cursor_older_than_the_events_kept_gets_a_reset_then_the_live_ones(feeds: tuple[Feeds, Feeds]) -> None:
    writer, reader = feeds
    old = str(reader.cursor("7"))
    for n in range(FEED_MAX_EVENTS + 5):  # the oldest are trimmed: the feed stays bounded
        writer.publish("7", "message.created", b"%d" % n)
    newest = str(reader.cursor("7"))
    follow = reader.follow("7", old, 0.05)
    reset = taken(follow, 1)[0]
    assert reset[0] == newest and reset[1] == RESET  # the page reloads its lists, and resumes from the newest
    writer.publish("7", "answer.ended", b"after")
    assert taken(follow, 1)[0][1:] == ("answer.ended", b"after")


@pytest.mark.parametrize("cursor", ["0", "99999999999999-0"], ids=["from nothing", "unknown"])
def test_an_unknown_cursor_gets_a_reset(feeds: tuple[Feeds, Feeds], cursor: str) -> None:
    writer, reader = feeds
    writer.publish("7", "conversation.created", b"{}")
    newest = str(reader.cursor("7"))
    assert taken(reader.follow("7", cursor, 0.05), 1)[0][:2] == (newest, RESET)


def test_a_feed_that_expired_gives_its_old_cursors_a_reset(redis_processes: Processes, redis_url: str) -> None:
    writer, reader = redis_processes().feeds, redis_processes().feeds
    cursor = str(reader.cursor("7"))
    client = redis.Redis.from_url(redis_url)
    client.delete("clawweb:feed:7")  # idle for FEED_IDLE_S, or Redis restarted empty
    client.close()
    writer.publish("7", "conversation.created", b"{}")  # begins a new feed, newer than every old cursor
    assert taken(reader.follow("7", cursor, 0.05), 1)[0][1] == RESET


def test_a_publish_lost_while_redis_is_away_is_followed_by_a_reset(redis_processes: Processes) -> None:
    state = redis_processes()
    cursor = str(state.feeds.cursor("7"))
    feeds: Any = state.feeds
    script = feeds._append

    def away(**_: Any) -> NoReturn:
        raise redis.ConnectionError("Connection refused")  # what redis-py raises while Redis is away

    feeds._append = away
    feeds.publish("7", "conversation.deleted", b"lost")  # logged, not raised: the change is stored
    feeds._append = script
    feeds.publish("7", "conversation.created", b"later")
    got = taken(state.feeds.follow("7", cursor, 0.05), 2)
    assert [event for _, event, _ in got] == [RESET, "conversation.created"]


def test_idle_memory_feeds_are_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MemoryFeeds, "SWEEP_EVERY_S", 0.0)
    monkeypatch.setattr("clawweb.state.memory.FEED_IDLE_S", 0.05)
    feeds = MemoryFeeds()
    old = feeds.cursor("1")
    follow = cast(Generator[Entry | None, None, None], feeds.follow("2", str(feeds.cursor("2")), 0.01))
    next(follow)  # owner 2 has a reader: kept however idle
    gevent.sleep(0.1)
    feeds.cursor("3")  # any use sweeps
    assert len(feeds) == 2
    assert taken(feeds.follow("1", old, 0.01), 1)[0][1] == RESET  # owner 1's feed was freed: a new one
    follow.close()


# --- bus ------------------------------------------------------------------------------------------------------


def test_the_bus_delivers_each_channels_messages_to_its_handlers(processes: Processes, backend: str) -> None:
    receiver = processes()
    sender = processes() if backend == "redis" else receiver  # in memory, the one process is everybody
    stops: list[str] = []
    others: list[str] = []
    probe: list[str] = []
    receiver.bus.subscribe("stop", stops.append)
    receiver.bus.subscribe("admission", others.append)
    receiver.bus.subscribe("probe", probe.append)
    listening(receiver, probe)
    for message in ("a", "b", "c"):
        sender.bus.publish("stop", message)
    assert until(lambda: len(stops) == 3)
    assert stops == ["a", "b", "c"] and others == []


# --- rate windows ---------------------------------------------------------------------------------------------


def test_a_window_holds_its_limit_per_key(processes: Processes) -> None:
    window = processes().window("answers", 3, 60.0)
    tokens = [window.reserve("alice") for _ in range(3)]
    with pytest.raises(Throttled) as throttled:
        window.reserve("alice")
    assert 1 <= throttled.value.retry_after <= 60
    window.reserve("bob")  # another key has its own places
    window.release("alice", tokens[0])  # that attempt did not count
    window.reserve("alice")
    with pytest.raises(Throttled):
        window.reserve("alice")
    window.clear("alice")
    assert len({window.reserve("alice") for _ in range(3)}) == 3


def test_a_window_frees_its_places_as_they_age(processes: Processes) -> None:
    window = processes().window("logins", 1, 0.2)
    window.reserve("alice")
    with pytest.raises(Throttled):
        window.reserve("alice")
    assert until(lambda: _reserved(window, "alice"))


def _reserved(window: Window, key: str) -> bool:
    try:
        window.reserve(key)
    except Throttled:
        return False
    return True


def test_processes_share_a_window_by_its_name(redis_processes: Processes) -> None:
    one, other = redis_processes(), redis_processes()
    one.window("answers", 2, 60.0).reserve("alice")
    other.window("answers", 2, 60.0).reserve("alice")
    with pytest.raises(Throttled):
        one.window("answers", 2, 60.0).reserve("alice")
    other.window("logins", 2, 60.0).reserve("alice")  # another name, another window


# --- the directory of running answers -------------------------------------------------------------------------


def test_readers_are_counted_in_every_process(processes: Processes, backend: str) -> None:
    here = processes()
    there = processes() if backend == "redis" else here
    generation_id = secrets.token_hex(8)
    assert there.answers.readers(generation_id) == 0
    here.answers.reading(generation_id, 1)
    there.answers.reading(generation_id, 1)
    assert (here.answers.readers(generation_id), there.answers.readers(generation_id)) == (2, 2)
    here.answers.reading(generation_id, -1)
    assert there.answers.readers(generation_id) == 1


def test_an_unknown_answer_is_not_listed(processes: Processes) -> None:
    answers = processes().answers
    assert answers.lookup(secrets.token_hex(8)) is None
    assert answers.running(secrets.token_hex(8)) is None


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0", "--tps", "200")


@pytest.fixture
def gateways(backend: str, sim: SimProcess, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """``gateways(installation="ours")``: one more app (as one more process); those of one installation share
    its database file, and all share the Redis."""
    url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    made: list[Flask] = []

    def make(installation: str = "ours") -> Flask:
        settings = {
            "ollama_url": sim.url,
            "db": str(tmp_path / f"{installation}.db"),
            "redis_url": url,
            "heartbeat_s": 0.3,
            "rate_per_minute": 10**6,
            "conversations_per_minute": 0,
            "quota_answers_per_day": 0,
        }
        made.append(create_app(settings))
        return made[-1]

    yield make
    _kill_greenlets()  # an answer still running ends as its greenlet does: stored, before its store closes
    for app in made:
        services(app).close()


def generations_of(app: Flask) -> Generations:
    generations: Generations = services(app).generations
    return generations


def store_of(app: Flask) -> Store:
    store: Store = services(app).store
    return store


def start_answer(app: Flask, directive: dict[str, Any]) -> tuple[str, str]:
    """(conversation id, generation id) of a new answer."""
    client = app.test_client()
    conversation = client.post("/api/conversations", json={}).get_json()
    content = f"hello\n#sim {json.dumps(directive)}"
    started = client.post(f"/api/conversations/{conversation['id']}/messages", json={"content": content})
    assert started.status_code == 202, started.get_data(as_text=True)
    return conversation["id"], started.get_json()["generation"]["id"]


def test_a_running_answer_is_found_by_its_conversation_until_it_ends(gateways: Any, backend: str) -> None:
    runner = gateways()
    others = [gateways()] if backend == "redis" else []
    conversation_id, generation_id = start_answer(runner, {"tokens": 1000, "tps": 50, "think_tokens": 0})
    local = generations_of(runner).get(generation_id)
    assert local is not None and until(lambda: local.status == "streaming")
    for app in (runner, *others):
        found = generations_of(app).running_for(conversation_id)
        assert found is not None and (found.id, found.status) == (generation_id, "streaming")
    shown = generations_of((others or [runner])[0]).running_for(conversation_id)
    assert shown is not None
    shown.stop()  # with Redis, from another process: the one that runs it stops it
    assert until(lambda: local.finished) and local.status == "stopped"
    for app in (runner, *others):
        assert generations_of(app).running_for(conversation_id) is None
        seen = generations_of(app).get(generation_id)
        assert seen is not None and (seen.status, seen.finished) == ("stopped", True)


def leave_a_dead_answer(url: str, store: Store, tokens: list[str]) -> tuple[str, int]:
    """What a gateway killed while answering leaves (in the format every gateway version shares): a streaming
    message in its database; in Redis the answer's state, its log so far and a lease that ran out, and no
    "running" key any more (it expired with the lease). Returns (generation id, message id)."""
    conversation = store.create_conversation(None, "qwen3:32b")
    store.add_message(conversation["id"], "user", "hello")
    message = store.add_message(conversation["id"], "assistant", model="qwen3:32b", status="streaming")
    generation_id = secrets.token_hex(8)
    client = redis.Redis.from_url(url)
    state = {"conversation_id": conversation["id"], "owner": "", "message_id": message["id"], "status": "streaming"}
    client.hset(f"clawweb:gen:{generation_id}", mapping=cast(Any, state))
    for token in tokens:
        chunk = {"model": "qwen3:32b", "message": {"role": "assistant", "content": token}, "done": False}
        client.xadd(f"clawweb:gen:{generation_id}:log", {"e": "token", "d": json.dumps(chunk)})
    client.zadd("clawweb:gen:leases", {generation_id: time.time() - 1})
    client.close()
    return generation_id, int(message["id"])


def log_events(url: str, generation_id: str) -> list[str]:
    client = redis.Redis.from_url(url)
    entries: Any = client.xrange(f"clawweb:gen:{generation_id}:log")
    events = [fields[b"e"].decode() for _, fields in entries]
    client.close()
    return events


@pytest.mark.parametrize("backend", ["redis"])
def test_a_dead_writers_answer_is_ended_once_with_the_text_it_had(gateways: Any, redis_url: str) -> None:
    first, second = gateways(), gateways()
    tokens = answer_tokens(5)
    generation_id, message_id = leave_a_dead_answer(redis_url, store_of(first), tokens)
    # Both notice at once (a reader asking each); of the two, one ends it.
    seen = [gevent.spawn(generations_of(app).get, generation_id) for app in (first, second)]
    gevent.joinall(seen, timeout=10, raise_error=True)
    for greenlet in seen:
        assert greenlet.value is not None and (greenlet.value.status, greenlet.value.finished) == ("error", True)
    assert log_events(redis_url, generation_id) == ["token"] * 5 + ["error"]
    stored = store_of(second).message(message_id)
    assert stored is not None
    assert (stored["status"], stored["error"], stored["content"]) == ("error", INTERRUPTED, "".join(tokens))
    assert generations_of(first).running_for(stored["conversation_id"]) is None


@pytest.mark.parametrize("backend", ["redis"])
def test_another_installation_leaves_a_dead_writers_answer_alone(gateways: Any, redis_url: str) -> None:
    foreign, ours = gateways("foreign"), gateways("ours")
    theirs = store_of(foreign).create_conversation(None, "qwen3:32b")
    for role in ("user", "assistant"):  # message ids 1 and 2 there, as in ours
        store_of(foreign).add_message(theirs["id"], role, f"their {role} message")
    before = tree.everything(store_of(foreign), theirs["id"])
    generation_id, message_id = leave_a_dead_answer(redis_url, store_of(ours), answer_tokens(3))
    assert store_of(foreign).message(message_id) is not None  # the same id names another message there
    seen = generations_of(foreign).get(generation_id)
    assert seen is not None and seen.status == "streaming"  # not its to end
    gevent.sleep(1)  # three rounds of its lease loop
    assert log_events(redis_url, generation_id) == ["token"] * 3
    assert tree.everything(store_of(foreign), theirs["id"]) == before
    ended = generations_of(ours).get(generation_id)
    assert ended is not None and ended.status == "error"
    assert log_events(redis_url, generation_id) == ["token"] * 3 + ["error"]
