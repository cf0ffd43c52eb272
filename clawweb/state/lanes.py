"""Admission lanes: the order in which waiting requests get a slot, as one pure function both backends follow.

Three lanes, served in this order: ``interactive`` (the chat page), ``api`` (API keys and Ollama/OpenAI
clients), ``batch`` (keys created with ``--lane batch``). While another lane waits, a lane may hold at most its
share of the slots (``CLAWWEB_LANE_SHARES``); a lane alone uses every slot, and a slot is never left idle while
anyone waits. Within a lane users take turns: each user's requests in arrival order, the users in a ring (a user
whose request just got a slot goes to the back; a newcomer joins at the back).

``plan`` gives the exact order in which the waiting requests will get their slots if nobody else arrives and the
answers holding slots end in the order they started (the usual case: one model, similar answers). Its first
``now`` requests take the free slots at once. Memory's ``Admission`` calls it; Redis runs the same steps in Lua
(redis_admission.py), and the contract tests hold both to it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, TypeVar

Lane = Literal["interactive", "api", "batch"]
LANES: tuple[Lane, ...] = ("interactive", "api", "batch")
KEY_LANES = ("api", "batch")  # what an API key may be given: the interactive lane is the page's
# The most of the slots a lane holds while another lane waits: the page keeps a quarter of the slots free for the
# programs (and the programs a quarter for the page), and a batch job never holds more than half.
DEFAULT_SHARES: tuple[tuple[Lane, float], ...] = (("interactive", 0.75), ("api", 0.75), ("batch", 0.5))
# Why a waiter's position grew: a higher lane's request arrived (its name), another user's turn in its own lane,
# or a lower lane's share of the slots.
TURNS, SHARE = "turns", "share"


class Waiter(Protocol):
    @property
    def lane(self) -> str: ...

    @property
    def client(self) -> str: ...


T = TypeVar("T", bound=Waiter)


def caps(max_active: int, shares: Sequence[tuple[str, float]]) -> dict[str, int]:
    """Each lane's most slots while another lane waits: its share of ``max_active`` rounded down, at least one."""
    return {lane: max(1, int(share * max_active)) for lane, share in shares}


def reason(arrival_lane: str | None, lane: str) -> str:
    """Why a waiter in ``lane`` moved back when a request in ``arrival_lane`` arrived (None: none arrived)."""
    if arrival_lane is None or arrival_lane not in LANES:
        return SHARE
    if arrival_lane == lane:
        return TURNS
    return arrival_lane if LANES.index(arrival_lane) < LANES.index(lane) else SHARE


def plan(
    active: Sequence[str],
    waiting: Sequence[T],
    turns: Mapping[tuple[str, str], float],
    lane_caps: Mapping[str, int],
    max_active: int,
) -> tuple[list[T], int]:
    """The admission order of ``waiting`` (in arrival order), and how many of its first take a free slot now.

    ``active``: the lanes of the requests holding slots, oldest first; ``turns``: per (lane, user) when the user
    last had a turn (or arrived), the lower the sooner its next one."""
    queues: dict[str, dict[str, deque[T]]] = {lane: {} for lane in LANES}
    for waiter in waiting:
        queues[waiter.lane].setdefault(waiter.client, deque()).append(waiter)
    rings = {
        lane: deque(sorted(users, key=lambda user, lane=lane: turns.get((lane, user), 0.0)))  # type: ignore[misc]
        for lane, users in queues.items()
    }
    held = Counter(active)
    ending = deque(active)  # predicted to end in the order they started
    order: list[T] = []
    now: int | None = None
    while len(order) < len(waiting):
        if len(ending) >= max_active:
            now = len(order) if now is None else now
            held[ending.popleft()] -= 1
            continue
        lane = _next_lane(rings, held, lane_caps)
        user = rings[lane].popleft()
        order.append(queues[lane][user].popleft())
        if queues[lane][user]:
            rings[lane].append(user)
        held[lane] += 1
        ending.append(lane)
    return order, len(order) if now is None else now


def _next_lane(rings: Mapping[str, deque[str]], held: Mapping[str, int], lane_caps: Mapping[str, int]) -> str:
    """The first lane with waiters under its share; alone, a lane has no share; none under it: the first."""
    waiting = [lane for lane in LANES if rings[lane]]
    if len(waiting) > 1:
        for lane in waiting:
            if held.get(lane, 0) < lane_caps.get(lane, 1):
                return lane
    return waiting[0]
