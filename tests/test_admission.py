"""Admission control as a unit: slots, FIFO positions, per-client cap, refusals."""

from __future__ import annotations

import pytest

from clawweb.state.base import Refused
from clawweb.state.memory import Admission


def test_slots_then_fifo_queue_with_positions() -> None:
    admission = Admission(max_active=2, max_queue=3, max_per_client=10)
    a, b, c, d = (admission.enter("x") for _ in range(4))
    assert (a.admitted, b.admitted, c.admitted, d.admitted) == (True, True, False, False)
    assert (c.position, d.position) == (1, 2)
    assert (admission.active, admission.queued) == (2, 2)
    admission.release(a)
    assert c.admitted and c.changed.is_set()
    assert d.position == 1 and d.changed.is_set()
    admission.release(a)  # idempotent
    assert (admission.active, admission.queued) == (2, 1)


def test_leaving_the_queue_moves_the_ones_behind_up() -> None:
    admission = Admission(max_active=1, max_queue=5, max_per_client=10)
    admission.enter("x")
    waiting = [admission.enter("x") for _ in range(3)]
    admission.release(waiting[0])
    assert [t.position for t in waiting[1:]] == [1, 2]
    assert admission.active == 1


def test_queue_full_is_503_with_retry_after() -> None:
    admission = Admission(max_active=1, max_queue=1, max_per_client=10)
    admission.enter("a")
    admission.enter("b")
    with pytest.raises(Refused) as info:
        admission.enter("c")
    assert info.value.status == 503
    assert int(info.value.headers["Retry-After"]) > 0
    assert "capacity" in info.value.message


def test_per_client_limit_is_429_and_frees_on_release() -> None:
    admission = Admission(max_active=4, max_queue=10, max_per_client=2)
    first = admission.enter("10.0.0.1")
    admission.enter("10.0.0.1")
    with pytest.raises(Refused) as info:
        admission.enter("10.0.0.1")
    assert info.value.status == 429 and "Retry-After" in info.value.headers
    admission.enter("10.0.0.2")  # another client is unaffected
    admission.release(first)
    admission.enter("10.0.0.1")


def test_wait_reports_change_or_timeout() -> None:
    admission = Admission(max_active=1, max_queue=5, max_per_client=10)
    holder = admission.enter("x")
    queued = admission.enter("x")
    queued.changed.clear()
    assert admission.wait(queued, 0.01) is False
    admission.release(holder)
    assert admission.wait(queued, 0.01) is True and queued.admitted


def test_nobody_waits_longer_than_the_queue_timeout() -> None:
    from clawweb.config import Settings
    from clawweb.metrics import StreamStats
    from clawweb.relay.estimates import Estimates
    from clawweb.relay.events import Failure, Heartbeat, Queued
    from clawweb.relay.relay import Relay

    settings = Settings(queue_timeout_s=0.3, heartbeat_s=0.1)
    admission = Admission(max_active=1, max_queue=5, max_per_client=10)
    admission.enter("x")  # holds the only slot
    relay = Relay(None, {}, admission, admission.enter("y"), settings, StreamStats("m", "y", "10.0.0.1"), Estimates())  # type: ignore[arg-type]
    events = list(relay.wait_for_slot())
    assert events[0] == Queued(position=1, active=1)
    assert Heartbeat.BEAT in events
    assert isinstance(events[-1], Failure) and events[-1].kind == "queue_timeout" and events[-1].status == 503
    relay.close()
    assert admission.queued == 0  # the place was given back
