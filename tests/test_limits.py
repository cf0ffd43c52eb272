"""The in-memory sliding window (answers per minute, failed logins), in process, on a clock the test moves."""

from __future__ import annotations

import time

import pytest

from clawweb.state.base import Throttled
from clawweb.state.memory import MAX_KEYS, SlidingWindow


class Clock:
    """``time.monotonic`` as the window reads it, moved by hand: no test waits out a window."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(time, "monotonic", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def retry_after(window: SlidingWindow, key: str) -> int:
    with pytest.raises(Throttled) as throttled:
        window.reserve(key)
    return throttled.value.retry_after


def test_the_limit_holds_and_retry_after_is_until_the_oldest_leaves(clock: Clock) -> None:
    window = SlidingWindow(3, 60)
    for step in (0, 10, 20):
        clock.now = 1000 + step
        window.reserve("ann")
    clock.now = 1030
    assert retry_after(window, "ann") == 30  # the first, taken at 1000, leaves at 1060
    assert retry_after(window, "ann") == 30  # a refused attempt takes no place


def test_a_place_frees_exactly_when_its_attempt_is_a_window_old(clock: Clock) -> None:
    window = SlidingWindow(1, 60)
    window.reserve("ann")
    clock.now += 59.999
    assert retry_after(window, "ann") == 1  # rounded up: never "retry in 0 s"
    clock.now = 1060.0
    window.reserve("ann")  # taken at 1000, so out of the window [1000, 1060) now
    assert retry_after(window, "ann") == 60


def test_keys_are_counted_apart_and_clear_forgets_one(clock: Clock) -> None:
    window = SlidingWindow(1, 60)
    window.reserve("ann")
    window.reserve("bob")
    window.clear("ann")
    window.reserve("ann")
    assert retry_after(window, "ann") == 60
    assert retry_after(window, "bob") == 60
    window.clear("nobody")  # a key never seen: nothing to forget


def test_release_gives_back_one_place(clock: Clock) -> None:
    window = SlidingWindow(2, 60)
    kept = window.reserve("ann")
    clock.now += 1
    given_back = window.reserve("ann")
    window.release("ann", given_back)  # the attempt did not count (a login that succeeded)
    window.reserve("ann")
    assert retry_after(window, "ann") == 59  # the kept one, a second older, is the oldest
    window.release("ann", kept)
    window.release("ann", kept)  # twice: the second finds nothing to give back
    window.reserve("ann")
    assert retry_after(window, "ann") == 60  # full again with one reservation: one place came back, not two


def test_two_reservations_in_the_same_instant_are_given_back_one_at_a_time(clock: Clock) -> None:
    window = SlidingWindow(2, 60)
    first, second = window.reserve("ann"), window.reserve("ann")
    assert first == second  # a token is its timestamp: interchangeable
    window.release("ann", first)
    window.reserve("ann")  # one place came back, not two
    assert retry_after(window, "ann") == 60


def test_releasing_for_an_unknown_key_or_an_expired_attempt_is_harmless(clock: Clock) -> None:
    window = SlidingWindow(1, 60)
    window.release("nobody", repr(clock.now))
    token = window.reserve("ann")
    clock.now += 120
    window.reserve("ann")  # the old attempt left the window on its own
    window.release("ann", token)  # gives back nothing: the current attempt still counts
    assert retry_after(window, "ann") == 60


def test_sprayed_keys_are_forgotten_once_expired_but_live_ones_still_count(clock: Clock) -> None:
    window = SlidingWindow(1, 60)
    for i in range(MAX_KEYS + 1):  # someone sprays user names
        window.reserve(f"spray-{i}")
    clock.now += 30
    window.reserve("victim")
    clock.now += 31  # every sprayed attempt has expired, the victim's has not
    window.reserve("newcomer")  # over MAX_KEYS keys: the expired ones are swept here
    assert retry_after(window, "victim") == 29
    window.reserve("spray-0")  # swept or not, an expired key has its place again
