"""How long the next stage of an answer will take, from what this process measured: never a guess.

Each estimate has a minimum of measurements below which it is ``None`` (the page then says what happens without a
time), so a figure shown is always grounded in answers that really ran here:

- the queue: ``QUEUE_MIN`` finished answers' slot times; a place ``p`` waits for ``p`` slots to free, and ``slots``
  slots free at ``slots / mean`` per second: ``p × mean / slots``;
- a model load: the last load of that model measured on that host (Ollama's ``load_duration`` of an answer that
  found the model unloaded): loads of one model on one GPU take about the same time each time;
- reading the prompt: ``PROMPT_MIN`` answers on that host and model with at least ``PROMPT_MIN_TOKENS`` prompt tokens
  (smaller prompts are dominated by fixed costs), their median ``prompt_eval_count / prompt_eval_duration``.

Pure bookkeeping, one per process; greenlets of one thread update it (no locks).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import deque
from collections.abc import Iterable
from typing import Any

QUEUE_MIN = 3
QUEUE_KEEP = 20
PROMPT_MIN = 3
PROMPT_KEEP = 10
PROMPT_MIN_TOKENS = 16
HOSTS_KEPT = 256  # (host, model) pairs remembered; beyond, the oldest are forgotten

_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
PER_MESSAGE_TOKENS = 4  # the chat template's role markers around each message


def prompt_tokens(messages: Iterable[Any]) -> int:
    """About how many tokens Ollama will read for ``messages``: a CJK character is about one token, other text
    about four characters a token (what BPE vocabularies like qwen3's give for English and code)."""
    total = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        text = f"{message.get('content') or ''}{message.get('thinking') or ''}"
        cjk = len(_CJK.findall(text))
        total += cjk + math.ceil((len(text) - cjk) / 4) + PER_MESSAGE_TOKENS
    return total


class Estimates:
    def __init__(self) -> None:
        self._holds: deque[float] = deque(maxlen=QUEUE_KEEP)
        self._loads: dict[tuple[str, str], float] = {}
        self._prompt_rates: dict[tuple[str, str], deque[float]] = {}

    # --- what was measured ---------------------------------------------------------------------------------

    def answered(self, hold_s: float) -> None:
        """An answer held its slot ``hold_s`` seconds, from admission to Ollama's last line."""
        self._holds.append(hold_s)

    def loaded(self, host: str, model: str, load_s: float) -> None:
        self._remember(self._loads, (host, model), load_s)

    def read_prompt(self, host: str, model: str, tokens: int, seconds: float) -> None:
        if tokens < PROMPT_MIN_TOKENS or seconds <= 0:
            return
        rates = self._prompt_rates.get((host, model))
        if rates is None:
            rates = deque(maxlen=PROMPT_KEEP)
            self._remember(self._prompt_rates, (host, model), rates)
        rates.append(tokens / seconds)

    @staticmethod
    def _remember(table: dict[tuple[str, str], Any], key: tuple[str, str], value: Any) -> None:
        table.pop(key, None)  # re-inserted: the dict's order is then least recently measured first
        table[key] = value
        while len(table) > HOSTS_KEPT:
            del table[next(iter(table))]

    # --- what is expected ----------------------------------------------------------------------------------

    def queue_s(self, position: int, slots: int) -> float | None:
        """Until a request at ``position`` (1 = next) gets a slot; ``None`` below ``QUEUE_MIN`` answers."""
        if len(self._holds) < QUEUE_MIN or slots <= 0:
            return None
        return position * statistics.fmean(self._holds) / slots

    def load_s(self, host: str, model: str) -> float | None:
        return self._loads.get((host, model))

    def prompt_s(self, host: str, model: str, tokens: int) -> float | None:
        rates = self._prompt_rates.get((host, model))
        if rates is None or len(rates) < PROMPT_MIN:
            return None
        return tokens / statistics.median(rates)
