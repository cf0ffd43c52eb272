"""An answer's status as events: queued, loading, prompt, thinking, writing, with estimates only once measured.

Through a real gunicorn in front of the real simulator, whose ``#sim`` directive makes a model load, a prompt read
and a thinking phase last as long as asked; and the pure parts (estimates, the stage of a token line) in process.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

from clawweb.relay.estimates import PROMPT_MIN_TOKENS, QUEUE_MIN, Estimates, prompt_tokens
from clawweb.relay.events import Status
from clawweb.relay.stages import Stages
from clawweb.upstream.client import LOADED_FRESH_S

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, chat, sim_line
from .support.sseclient import Event, content_of, events

SSE = {"Accept": "text/event-stream"}
LONG_PROMPT = "Explain, step by step and with examples, how a transformer reads a long prompt. " * 3


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "40", "--tokens", "6")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, max_active=1, heartbeat_s=0.5)


def stream(gateway: Gateway, body: dict[str, Any]) -> list[Event]:
    with requests.post(gateway.url + "/api/chat", json=body, headers=SSE, stream=True, timeout=30) as response:
        assert response.status_code == 200
        return list(events(response))


def statuses(received: list[Event]) -> list[dict[str, Any]]:
    return [e.json() for e in received if e.event == "status"]


def asking(text: str, directive: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = chat(directive, **fields)
    body["messages"][-1]["content"] = text + sim_line(**directive)
    return body


# --- through gunicorn ----------------------------------------------------------------------------------------


def test_a_cold_model_is_loading_then_the_prompt_then_thinking_then_writing(gateway: Gateway) -> None:
    received = stream(gateway, chat({"load": 1.2, "prompt": 0.8, "think_tokens": 3}, think=True))
    stages = statuses(received)
    assert [s["stage"] for s in stages] == ["loading", "prompt", "thinking", "writing"]
    assert stages[0]["model"] == "qwen3:32b" and stages[1]["prompt_tokens"] > 0
    # Said before the first token, each at the moment it began: nothing measured yet, so no estimate at all.
    assert all("eta_s" not in s for s in stages)
    order = [e.event for e in received if e.data_lines]
    assert order[:3] == ["status", "status", "status"]  # loading, prompt, thinking: before any token
    assert content_of(received)  # and the answer itself as before


def unload(sim: SimProcess) -> None:
    """Unload the model as Ollama's API does (its keep_alive ran out), and let the gateway's sighting of it age: it
    takes a model it saw answer within ``LOADED_FRESH_S`` to be loaded still (Ollama keeps one for minutes)."""
    body = {"model": "qwen3:32b", "prompt": "", "keep_alive": 0}
    assert requests.post(sim.url + "/api/generate", json=body, timeout=5).json()["done_reason"] == "unload"
    time.sleep(LOADED_FRESH_S + 0.1)


def test_the_load_measured_once_is_the_next_loads_estimate(gateway: Gateway, sim: SimProcess) -> None:
    unload(sim)
    stream(gateway, chat({"load": 1.0}))
    unload(sim)
    loading = statuses(stream(gateway, chat({"load": 1.0})))[0]
    assert loading["stage"] == "loading"
    # Ollama's load_duration of the previous load (1.0 s here, as the simulator reports it), not a guess.
    assert loading["eta_s"] == pytest.approx(1.0, abs=0.3)


def test_a_loaded_model_goes_straight_to_the_prompt(gateway: Gateway) -> None:
    stream(gateway, chat({}))
    stages = statuses(stream(gateway, chat({})))
    assert [s["stage"] for s in stages] == ["prompt", "writing"]


def test_the_prompt_estimate_needs_measured_prompts_of_some_size(gateway: Gateway) -> None:
    body = asking(LONG_PROMPT, {"prompt": 0.2})
    assert prompt_tokens(body["messages"]) >= PROMPT_MIN_TOKENS
    for _ in range(3):
        stream(gateway, body)
    prompt = statuses(stream(gateway, body))[0]
    assert prompt["stage"] == "prompt" and prompt["eta_s"] > 0


def test_a_queued_answer_says_its_place_and_then_its_stages(gateway: Gateway) -> None:
    for _ in range(QUEUE_MIN):  # answers measured: the queue's estimate has something to go by
        stream(gateway, chat({}))
    first: list[Event] = []
    holder = threading.Thread(target=lambda: first.extend(stream(gateway, chat({"prompt": 1.5}))))
    holder.start()
    assert wait_for(lambda: requests.get(gateway.url + "/api/queue", timeout=5).json()["active"] == 1)
    second = stream(gateway, chat({}))
    holder.join()
    stages = statuses(second)
    assert stages[0]["stage"] == "queued"
    assert stages[0]["position"] == 1 and stages[0]["ahead"] == 0 and stages[0]["eta_s"] > 0
    assert [e.json()["position"] for e in second if e.event == "queued"] == [1]  # the old frame, still there
    assert [s["stage"] for s in stages[1:]] == ["prompt", "writing"]


def test_the_metrics_have_every_stage_and_the_estimates_error(gateway: Gateway, sim: SimProcess) -> None:
    unload(sim)
    stream(gateway, chat({"load": 0.5}))
    unload(sim)
    stream(gateway, chat({"load": 0.5, "think_tokens": 2}, think=True))  # estimated from the first load
    text = requests.get(gateway.url + "/metrics", timeout=5).text
    for stage in ("loading", "prompt", "thinking", "writing"):
        assert f'clawweb_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'clawweb_estimate_error_seconds_count{stage="loading"}' in text


def test_a_burst_of_answers_asks_the_host_once_whether_the_model_is_loaded(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    sim = start_simulator("--ttft", "0.3", "--tps", "40", "--tokens", "3")
    gateway = start_gateway(sim.url, max_active=20, max_active_per_client=20)
    received: list[list[Event]] = []
    burst = [threading.Thread(target=lambda: received.append(stream(gateway, chat({})))) for _ in range(20)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join()
    assert len(received) == 20 and all(statuses(r)[-1]["stage"] == "writing" for r in received)
    assert sim.stats()["ps"] <= 3  # one question shared by the burst (a straggler may ask once more)


def test_the_queue_right_now(gateway: Gateway) -> None:
    queue = requests.get(gateway.url + "/api/queue", timeout=5).json()
    assert queue == {"active": 0, "waiting": 0, "slots": 1, "eta_s": 0.0}


# --- in process ----------------------------------------------------------------------------------------------


def test_estimates_say_nothing_until_measured() -> None:
    estimates = Estimates()
    assert estimates.queue_s(1, 2) is None and estimates.load_s("h", "m") is None
    for seconds in (4.0, 6.0, 5.0):
        estimates.answered(seconds)
    assert estimates.queue_s(3, 2) == pytest.approx(7.5)  # 3 places x 5 s a slot / 2 slots
    estimates.loaded("h", "m", 48.0)
    assert estimates.load_s("h", "m") == 48.0 and estimates.load_s("other", "m") is None
    estimates.read_prompt("h", "m", PROMPT_MIN_TOKENS - 1, 0.01)  # too small to say anything about the rate
    for rate in (100.0, 300.0):
        estimates.read_prompt("h", "m", 600, 600 / rate)
    assert estimates.prompt_s("h", "m", 600) is None
    estimates.read_prompt("h", "m", 600, 600 / 200.0)
    assert estimates.prompt_s("h", "m", 600) == pytest.approx(3.0)  # the median rate


def test_prompt_tokens_count_chinese_characters_one_each() -> None:
    assert prompt_tokens([{"role": "user", "content": "量子计算"}]) == 4 + 4
    assert prompt_tokens([{"role": "user", "content": "a" * 40}, "not a message"]) == 10 + 4


@pytest.mark.parametrize(
    ("lines", "stages"),
    [
        (  # Ollama's own bytes
            [
                b'{"model":"m","message":{"role":"assistant","content":"","thinking":"Hm"},"done":false}',
                b'{"model":"m","message":{"role":"assistant","content":"","thinking":" ok"},"done":false}',
                b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}',
            ],
            ["thinking", "writing"],
        ),
        (  # another server: spaces, other field order, an empty thinking field on content
            [
                b'{"done": false, "message": {"thinking": "Hm", "content": "", "role": "assistant"}}',
                b'{"done": false, "message": {"thinking": "", "content": "Hi", "role": "assistant"}}',
            ],
            ["thinking", "writing"],
        ),
        (  # thinking inside the content, as Ollama before 0.9 (Go escapes < and >)
            [
                b'{"message":{"role":"assistant","content":"\\u003cthink\\u003e"},"done":false}',
                b'{"message":{"role":"assistant","content":"I think"},"done":false}',
                b'{"message":{"role":"assistant","content":"\\u003c/think\\u003e"},"done":false}',
                b'{"message":{"role":"assistant","content":"Hi"},"done":false}',
            ],
            ["thinking", "writing"],
        ),
        (  # an empty first token says nothing; a text that mentions thinking is writing
            [
                b'{"message":{"role":"assistant","content":""},"done":false}',
                b'{"message":{"role":"assistant","content":"I think so"},"done":false}',
            ],
            ["writing"],
        ),
    ],
)
def test_the_stage_of_token_lines(lines: list[bytes], stages: list[str]) -> None:
    tracker = Stages(time.monotonic())
    seen = [status.stage for line in lines if (status := tracker.token(line)) is not None]
    assert seen == stages


def test_a_new_place_in_the_queue_is_news_and_the_same_stage_is_not() -> None:
    tracker = Stages(time.monotonic())
    assert tracker.enter(Status("queued", None, (("position", 2),)))
    assert tracker.enter(Status("queued", None, (("position", 1),)))
    assert tracker.enter(Status("prompt")) and not tracker.enter(Status("prompt"))


def test_a_generation_logs_its_stages_and_its_message_keeps_the_figures(gateway: Gateway, sim: SimProcess) -> None:
    unload(sim)
    conversation = requests.post(gateway.url + "/api/conversations", json={}, timeout=5).json()
    content = 'Why?\n#sim {"load": 0.6, "prompt": 0.6, "think_tokens": 5}'
    started = requests.post(
        f"{gateway.url}/api/conversations/{conversation['id']}/messages",
        json={"content": content, "think": True},
        timeout=5,
    )
    assert started.status_code == 202
    url = gateway.url + started.json()["generation"]["events_url"]
    with requests.get(url, stream=True, timeout=30) as response:
        received = list(events(response))
    assert [e.json()["stage"] for e in received if e.event == "status"] == ["loading", "prompt", "thinking", "writing"]
    message = next(e for e in received if e.event == "done").json()["message"]
    assert message["load_ms"] >= 600 * 0.9  # Ollama's load_duration, as the simulator reports the 0.6 s
    assert message["queue_ms"] is not None and message["ttft_ms"] > 0 and message["thinking_ms"] > 0
    assert message["tokens"] == 5 + 6  # the thinking tokens counted: the simulator's eval_count leaves them out
    stored = requests.get(f"{gateway.url}/api/conversations/{conversation['id']}", timeout=5).json()["messages"][-1]
    assert {k: stored[k] for k in ("queue_ms", "load_ms", "thinking_ms", "tokens")} == {
        k: message[k] for k in ("queue_ms", "load_ms", "thinking_ms", "tokens")
    }
