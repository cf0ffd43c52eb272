"""A small SSE reader for tests: parses a streamed ``requests`` response into events stamped with arrival time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class Event:
    at: float  # time.monotonic() when the terminating blank line arrived
    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def is_comment(self) -> bool:
        return not self.data_lines and bool(self.comments)

    @property
    def is_heartbeat(self) -> bool:
        """A keep-alive: a comment on a relay's stream, ``event: heartbeat`` on a generation's."""
        return self.is_comment or self.event == "heartbeat"

    @property
    def is_line(self) -> bool:
        """A relayed upstream line (unnamed, with data): not a ``status``, ``queued`` or ``error`` frame."""
        return bool(self.data_lines) and self.event == "message"


def events(response: requests.Response) -> Iterator[Event]:
    """Every block up to a blank line, as it arrives; comment-only blocks (opening, heartbeats) included."""
    buffer = b""
    current = Event(at=0.0)
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode().rstrip("\r")
            if line == "":
                current.at = time.monotonic()
                yield current
                current = Event(at=0.0)
            elif line.startswith(":"):
                current.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    current.data_lines.append(value)
                elif name == "event":
                    current.event = value
                elif name == "id":
                    current.id = value


def content_of(received: list[Event]) -> str:
    """The answer text carried by the data frames (Ollama chunks)."""
    return "".join(e.json()["message"]["content"] for e in received if e.is_line)
