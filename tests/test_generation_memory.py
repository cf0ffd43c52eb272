"""Finished generations free their event logs: memory returns to baseline however many have run."""

from __future__ import annotations

import gc
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from clawweb import create_app
from clawweb.chat.generations import Generation, Generations
from clawweb.services import services

from .support.factories import StartSimulator

LEAK_PER_GENERATION = 1_500  # bytes: a kept log of 6 events (plus its Generation) is well above this


def test_event_log_memory_returns_to_baseline(
    tmp_path: Path, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = start_simulator("--ttft", "0", "--tps", "5000", "--tokens", "5")
    settings = {
        "ollama_url": sim.url,
        "db": str(tmp_path / "c.db"),
        "generation_ttl_s": 0.05,
        "rate_per_minute": 10**6,
        "conversations_per_minute": 0,
        "quota_answers_per_day": 0,
    }
    app = create_app(settings)
    client = app.test_client()
    generations: Generations = services(app).generations

    # The answer as it starts: by the time the request returns it may have finished and expired (a 0.05 s TTL).
    started_here: list[Generation] = []
    start = generations.start

    def starting(*args: Any, **kwargs: Any) -> Generation:
        started_here.append(start(*args, **kwargs))
        return started_here[-1]

    monkeypatch.setattr(generations, "start", starting)

    def run(count: int) -> None:
        for _ in range(count):
            conversation = client.post("/api/conversations", json={}).get_json()
            started = client.post(f"/api/conversations/{conversation['id']}/messages", json={"content": "hi"})
            generation = started_here.pop()  # one process: the answer runs here, not elsewhere
            assert generation.id == started.get_json()["generation"]["id"]
            generation.join(5)
            assert generation.status == "done"

    def settled() -> int:
        time.sleep(0.1)
        generations.sweep()
        # The answer-rate window keeps the last minute's starts by design (bounded by the limit): not the log's.
        services(app).answer_rate.clear("127.0.0.1")
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()  # before the warm-up, so memory it allocated and later frees is counted both ways
    try:
        # Warm-up: caches (Flask, SQLite statements, connection pools, lru caches) reach their size once.
        run(300)
        baseline = settled()
        run(600)
        grown = settled() - baseline
        assert len(generations) == 0  # every finished log expired and was dropped
        print(f"traced memory after 600 generations: {grown:+d} bytes")
        assert grown < 600 * LEAK_PER_GENERATION / 16, f"{grown} bytes kept after 600 generations"
    finally:
        tracemalloc.stop()
        services(app).close()
