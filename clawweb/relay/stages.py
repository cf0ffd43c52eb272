"""The stages one answer goes through (queued, loading, prompt, thinking, writing), when each began, what was
estimated for it, and what that comes to: the client's ``status`` frames, the stored figures, ``/metrics``.

Called once per token on the hot path (``token``): once the answer writes, that is one comparison; while it thinks,
one substring search; JSON is parsed only where the bytes leave the stage in doubt (another server's formatting,
a model that thinks inside ``<think>`` tags).
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..metrics import ESTIMATE_ERROR, STAGE_SECONDS
from .events import Stage, Status

LOAD_SHOWN_S = 1.0  # a load_duration above this is a real load even if the model looked loaded when asked


def _token_text(line: bytes) -> tuple[str, str]:
    """(content, thinking) of one token line, whatever its formatting (chat or generate)."""
    try:
        chunk = json.loads(line)
    except ValueError:
        return "", ""
    if not isinstance(chunk, dict):
        return "", ""
    message = chunk.get("message")
    source = message if isinstance(message, dict) else chunk
    content = source.get("content", chunk.get("response"))
    return (content if isinstance(content, str) else ""), str(source.get("thinking") or "")


class Stages:
    def __init__(self, created: float) -> None:
        self.stage: Stage | None = None
        self.entered: dict[Stage, float] = {"queued": created}
        self.estimated: dict[Stage, tuple[float, float]] = {}  # stage -> (when estimated, eta_s)
        self._inline = False  # the model thinks inside <think> tags in its content

    def enter(self, status: Status) -> bool:
        """Record ``status``; True if it is news for the client (a new stage, or a new place in the queue)."""
        now = time.monotonic()
        if status.eta_s is not None and status.stage not in self.estimated:
            self.estimated[status.stage] = (now, status.eta_s)
        if status.stage == "continuing":
            # Each names the host it goes to; its time counts in the stage it interrupts (the next token says which).
            self.stage = status.stage
            return True
        if status.stage == self.stage:
            return status.stage == "queued"
        self.stage = status.stage
        self.entered.setdefault(status.stage, now)
        return True

    def token(self, line: bytes) -> Status | None:
        """The new ``Status`` when this token line starts the thinking or the writing, else None."""
        if self.stage == "writing":
            return None
        empty = b'"content":""' in line or b'"response":""' in line  # chat's and generate's empty text
        if self.stage == "thinking" and empty and b'"thinking"' in line:
            return None  # Ollama's own thinking token: still thinking
        if b'"thinking"' not in line and b"think" not in line and not self._inline:
            # No thinking anywhere in the line: text, unless it is empty (no news then).
            return None if empty else self._now("writing")
        content, thinking = _token_text(line)
        if self.stage != "thinking" and content.lstrip().startswith("<think>"):
            self._inline = True
        if self._inline:
            if "</think>" in content:
                self._inline = False
            return self._now("thinking") if self.stage != "thinking" else None
        if not content:
            return self._now("thinking") if thinking and self.stage != "thinking" else None
        return self._now("writing")

    def _now(self, stage: Stage) -> Status:
        self.stage = stage
        self.entered.setdefault(stage, time.monotonic())
        return Status(stage)

    # --- what it came to -----------------------------------------------------------------------------------

    def load_s(self, final: dict[str, Any]) -> float | None:
        """The model load this answer waited for, if it waited for one (Ollama's ``load_duration``)."""
        load_ns = final.get("load_duration")
        if not isinstance(load_ns, int | float) or isinstance(load_ns, bool):
            return None
        load_s = load_ns / 1e9
        return load_s if "loading" in self.entered or load_s >= LOAD_SHOWN_S else None

    def thinking_s(self, ended: float) -> float | None:
        thought_at = self.entered.get("thinking")
        if thought_at is None:
            return None
        return self.entered.get("writing", ended) - thought_at

    def finish(self, final: dict[str, Any], admitted_at: float | None, ended: float) -> None:
        """Into ``/metrics``: the time each stage took, and for each estimated one how far off the estimate was
        (measured minus estimated: positive when it took longer). Ollama's own durations are the truth for the
        load and the prompt when it gave them."""
        order = sorted(self.entered.items(), key=lambda item: item[1])
        spent: dict[Stage, float] = {}
        for (stage, began), following in zip(order, [*order[1:], (None, ended)], strict=True):
            spent[stage] = following[1] - began
        if admitted_at is not None and "queued" in spent:
            spent["queued"] = admitted_at - self.entered["queued"]
        for stage, key in (("loading", "load_duration"), ("prompt", "prompt_eval_duration")):
            value = final.get(key)
            if stage in spent and isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                spent[stage] = value / 1e9
        for stage, seconds in spent.items():
            if stage == "queued" and (admitted_at is None or seconds <= 0):
                continue  # admitted at once: no time in the queue to speak of
            STAGE_SECONDS.labels(stage).observe(seconds)
            if stage in self.estimated:
                estimated_at, eta_s = self.estimated[stage]
                measured = seconds - (estimated_at - self.entered[stage])  # from the moment it was estimated
                ESTIMATE_ERROR.labels(stage).observe(measured - eta_s)
