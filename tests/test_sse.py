"""SSE framing read back by the WHATWG parsing algorithm (written out below): what a browser's EventSource
gets is exactly what was framed, whatever the data holds. The exact bytes are in test_units.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from clawweb.relay import sse


@dataclass
class Dispatched:
    event: str
    data: str
    last_event_id: str


def parse(stream: bytes) -> list[Dispatched]:
    """html.spec.whatwg.org "event stream interpretation": lines end at CRLF, LF or CR; a blank line dispatches
    the data buffer (minus its last LF) unless no data line filled it; one space after the colon is dropped;
    ``:`` lines are comments; the last event id persists from event to event."""
    dispatched: list[Dispatched] = []
    event, data, last_id = "", "", ""
    for line in re.split(r"\r\n|\n|\r", stream.decode())[:-1]:  # what follows the last line end is incomplete
        if line == "":
            if data:
                dispatched.append(Dispatched(event or "message", data.removesuffix("\n"), last_id))
            event, data = "", ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\0" not in value:
            last_id = value
    return dispatched


@pytest.mark.parametrize(
    ("data", "seen"),
    [
        (b"plain", "plain"),
        (b"one\ntwo", "one\ntwo"),
        (b"one\r\ntwo\rthree", "one\ntwo\nthree"),  # every line end becomes LF, as EventSource does itself
        (b" leading space", " leading space"),  # only the one space after "data:" is the framing's
        (b": not a comment", ": not a comment"),
        (b"key: value", "key: value"),
        (b"tab\tvertical tab\x0bform feed\x0c", "tab\tvertical tab\x0bform feed\x0c"),  # no line ends in SSE
        ("unicode \u2028 é".encode(), "unicode \u2028 é"),
        (b"\n\nblank lines inside", "\n\nblank lines inside"),
    ],
)
def test_the_data_comes_back_as_framed(data: bytes, seen: str) -> None:
    assert parse(sse.frame(data, event="token", id=7)) == [Dispatched("token", seen, "7")]


def test_a_run_of_frames_is_dispatched_in_order_and_the_id_carries_over() -> None:
    stream = (
        sse.OPENING
        + sse.line_frame(b'{"n":1}', 1)
        + sse.KEEP_ALIVE
        + sse.frame(b"x", event="note")
        + sse.json_frame({"error": "bad"}, event="error", id=0)
    )
    assert parse(stream) == [
        Dispatched("message", '{"n":1}', "1"),
        Dispatched("note", "x", "1"),  # an event without an id keeps the last one (what Last-Event-ID sends)
        Dispatched("error", '{"error":"bad"}', "0"),  # id 0 is an id, not a missing one
    ]


def test_opening_and_heartbeat_are_comments_that_dispatch_nothing() -> None:
    assert parse(sse.OPENING + sse.KEEP_ALIVE * 3) == []


def test_an_empty_payload_still_arrives_as_an_event() -> None:
    """An event with no data line at all is dropped by the browser: the framing writes an empty one."""
    assert sse.frame(b"", event="ping") == b"event: ping\ndata: \n\n"
    assert parse(sse.frame(b"", event="ping")) == [Dispatched("ping", "", "")]
    assert parse(b"event: ping\n\n") == []  # what it would be without


def test_retry_is_its_own_field() -> None:
    assert sse.frame(b"x", retry=2500).startswith(b"retry: 2500\n")
    assert parse(sse.frame(b"x", retry=2500)) == [Dispatched("message", "x", "")]


@pytest.mark.parametrize("text", ["line\nbreak", "carriage\rreturn", "separators \u2028\u2029", "nul \0", "é"])
def test_a_json_frame_is_one_ascii_data_line_whatever_the_text(text: str) -> None:
    framed = sse.json_frame({"text": text}, id="3")
    assert framed.isascii() and framed.count(b"data: ") == 1
    (dispatched,) = parse(framed)
    assert json.loads(dispatched.data) == {"text": text}
