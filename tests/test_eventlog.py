"""A generation's in-memory event log, in process: ids, resuming after an id, following it live, its end."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest

from clawweb.state.base import START, Entry
from clawweb.state.memory import MemoryLog

WAIT_S = 0.01  # how long ``follow`` waits before it yields ``None`` (the caller's cue for a heartbeat)


def ids(reader: Iterator[Entry | None]) -> list[str]:
    """The ids a reader gets up to the log's end; a finished log is read through without waiting (no None)."""
    entries = list(reader)
    assert None not in entries
    return [entry[0] for entry in entries if entry is not None]


def filled(*events: str) -> MemoryLog:
    log = MemoryLog()
    for i, event in enumerate(events, 1):
        log.append(event, b"%d" % i)
    return log


def test_ids_count_from_one_after_the_start_cursor() -> None:
    log = MemoryLog()
    assert log.last_id == START and not log.finished
    assert [log.append("token", b"a"), log.append("token", b"b")] == ["1", "2"]
    assert log.last_id == "2"


def test_a_reader_from_the_start_gets_everything_and_stops_after_the_final_event() -> None:
    log = filled("token", "token", "done")
    assert list(log.follow(START, WAIT_S)) == [("1", "token", b"1"), ("2", "token", b"2"), ("3", "done", b"3")]


@pytest.mark.parametrize(("after", "expected"), [("1", ["2", "3", "4"]), ("3", ["4"]), ("4", [])])
def test_a_reader_resuming_after_an_id_gets_exactly_the_entries_after_it(after: str, expected: list[str]) -> None:
    log = filled("token", "token", "token", "done")
    assert ids(log.follow(after, WAIT_S)) == expected


@pytest.mark.parametrize("final", ["done", "stopped", "error"])
def test_each_final_event_finishes_the_log(final: str) -> None:
    log = filled("token")
    assert not log.finished and not log.caught_up("1")
    log.append(final, b"{}")
    assert log.finished
    assert not log.caught_up("1")  # its final entry is still to be read
    assert log.caught_up("2")  # nothing more will ever come: the reader can be told 204


def test_a_live_reader_gets_none_while_nothing_comes_then_each_entry_in_order() -> None:
    log = filled("token")
    reader = log.follow(START, WAIT_S)
    assert next(reader) == ("1", "token", b"1")
    assert next(reader) is None  # nothing new within WAIT_S
    assert next(reader) is None
    log.append("token", b"2")
    log.append("token", b"3")
    assert next(reader) == ("2", "token", b"2")
    assert next(reader) == ("3", "token", b"3")
    log.append("done", b"4")
    assert next(reader) == ("4", "done", b"4")
    assert next(reader, "ended") == "ended"


def test_an_append_wakes_a_waiting_reader_at_once() -> None:
    log = MemoryLog()
    reader = log.follow(START, wait_s=60)
    gevent.spawn(log.append, "token", b"a")  # runs while the reader waits
    with gevent.Timeout(5):  # a reader left waiting out its 60 s fails here instead
        assert next(reader) == ("1", "token", b"a")


def test_every_reader_gets_every_entry_whenever_it_started() -> None:
    log = filled("token")
    early = log.follow(START, WAIT_S)
    assert next(early) == ("1", "token", b"1")
    log.append("token", b"2")
    late = log.follow(START, WAIT_S)
    log.append("done", b"3")
    assert ids(early) == ["2", "3"]
    assert ids(late) == ["1", "2", "3"]


def test_ids_given_by_the_appender_order_as_redis_stream_ids() -> None:
    """A Redis mirror appends with the stream's ids (milliseconds-sequence): resuming compares them as numbers."""
    log = MemoryLog()
    for entry_id in ("999-0", "1000-0", "1000-2", "1000-10"):  # in string order 999 and 2 would come last
        assert log.append("token", b"x", entry_id) == entry_id
    log.append("done", b"x", "1001-0")
    assert ids(log.follow("1000-0", WAIT_S)) == ["1000-2", "1000-10", "1001-0"]
    assert ids(log.follow("999-5", WAIT_S))[0] == "1000-0"  # between two ids
    assert log.caught_up("1001-0") and not log.caught_up("1000-10")
