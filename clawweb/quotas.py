"""Per-user quotas: conversations kept, bytes stored, answers started a day, conversations created a minute.

Each is checked before anything is stored or admitted, and a refusal is a JSON error naming its setting:

- **413** when a request would take the user's stored bytes past ``CLAWWEB_QUOTA_BYTES``: the request is too
  large for the room left; sending it again never helps, deleting conversations does.
- **403** when a new conversation would exceed ``CLAWWEB_QUOTA_CONVERSATIONS``. A quota is not a rate: a 429
  tells clients that the same request will succeed later, and clients retry it by themselves (urllib3's
  ``Retry``, the openai SDKs, which also retry 409). 403 is what Google Drive (``storageQuotaExceeded``) and
  GitHub answer for a used-up quota; nothing retries it, and the message says what to do instead.
- **429** with ``Retry-After`` for the two rates: answers a day (``CLAWWEB_QUOTA_ANSWERS_PER_DAY``, until the
  server's midnight) and conversations a minute (``CLAWWEB_CONVERSATIONS_PER_MINUTE``).

0 turns a limit off. Open mode (no accounts) counts as one user. Only what a request itself stores is checked:
the answer that follows an accepted message is stored as it comes and can take the user past the byte quota
(by the answers running at that moment, one per conversation, each as long as its ``num_predict`` or the
model's own end); every later request that stores anything is then refused until the user deletes some.
Answers a day are counted in the same statement that checks them, so concurrent requests (any worker) never
both take the last one. The stored-data checks read the figures, then the view writes: requests of one user
racing at the edge may each land, so the overshoot is at most those in flight (each under
``CLAWWEB_MAX_BODY_BYTES``; new conversations also under the per-minute rate).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ApiError
from .services import services
from .state.base import Throttled


def today() -> str:
    """The day answers are counted in: the server's local date (a team's day, not UTC's)."""
    return time.strftime("%Y-%m-%d")


def seconds_to_midnight() -> int:
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    midnight = datetime.datetime.combine(tomorrow, datetime.time()).astimezone()  # local, DST included
    return max(1, math.ceil(midnight.timestamp() - time.time()))


def size(*texts: str) -> int:
    """Bytes as stored: UTF-8 (a lone surrogate, which JSON allows, counts its 3 bytes instead of failing)."""
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)


def stored_size(conversation: Mapping[str, Any]) -> int:
    """The bytes a conversation holds itself (its messages aside): title and system prompt."""
    return size(conversation.get("title") or "", conversation.get("system_prompt") or "")


def check_storing(owner: int | None, added_bytes: int, new_conversation: bool = False) -> None:
    """403/413 unless ``owner`` may store ``added_bytes`` more (and one more conversation)."""
    app = services()
    settings, usage = app.settings, app.store.usage(owner, today())
    if new_conversation and settings.quota_conversations and usage["conversations"] >= settings.quota_conversations:
        raise ApiError(
            403,
            f"you keep {usage['conversations']} conversations, the most allowed (CLAWWEB_QUOTA_CONVERSATIONS="
            f"{settings.quota_conversations}); delete some to start new ones",
        )
    if settings.quota_bytes and usage["bytes"] + added_bytes > settings.quota_bytes:
        adds = f"; this request adds {added_bytes}" if added_bytes else ""
        raise ApiError(
            413,
            f"your conversations hold {usage['bytes']} bytes of the {settings.quota_bytes} allowed "
            f"(CLAWWEB_QUOTA_BYTES){adds}: delete conversations to make room",
        )


def _creation_wait(who: str) -> int:
    """0 and counted when ``who`` may create a conversation now, else the seconds until it may."""
    try:
        services().conversation_rate.reserve(who)
    except Throttled as exc:
        return exc.retry_after
    return 0


def check_new_conversation(owner: int | None, who: str, added_bytes: int) -> None:
    """The quotas (403/413), then the creation rate (429): a refused quota does not use up the rate."""
    check_storing(owner, added_bytes, new_conversation=True)
    per_minute = services().settings.conversations_per_minute
    wait = _creation_wait(who) if per_minute else 0
    if wait:
        raise ApiError(
            429,
            f"more than {per_minute} new conversations a minute (CLAWWEB_CONVERSATIONS_PER_MINUTE); retry in {wait} s",
            {"Retry-After": str(wait)},
        )


def count_answer(owner: int | None) -> Callable[[], None]:
    """Count one answer for today, or 429 when today's are used up. Returns what gives it back, for an answer
    that is then not admitted after all."""
    app = services()
    limit, day, store = app.settings.quota_answers_per_day, today(), app.store
    if not store.count_answer(owner, day, limit):
        wait = seconds_to_midnight()
        raise ApiError(
            429,
            f"you have started {limit} answers today, the most allowed (CLAWWEB_QUOTA_ANSWERS_PER_DAY); "
            f"more from midnight, in {wait} s",
            {"Retry-After": str(wait)},
        )
    return lambda: store.uncount_answer(owner, day)
