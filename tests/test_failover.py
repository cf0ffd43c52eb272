"""An answer whose host dies midway goes on on another host: the pieces (plain functions), then two real simulator
subprocesses behind a real ``gunicorn -k gevent``, one of them SIGKILLed while it writes, on every path an answer
takes (SSE, Ollama's NDJSON, OpenAI's stream, the chat page's stored answer)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, expect

from clawweb.relay.continuation import Splice, continued_body, partial_text
from clawweb.simulator import answer_tokens, thinking_tokens

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, chat, sim_line
from .support.sseclient import Event, content_of, events

TOKENS = 30
SSE = {"Accept": "text/event-stream"}
READ_TIMEOUT_S = 2  # a host silent this long midway is left (SIGSTOP); more than a busy machine's pauses
WHOLE = "".join(answer_tokens(TOKENS))


def line(content: str = "", thinking: str = "") -> bytes:
    message = {"role": "assistant", "content": content, **({"thinking": thinking} if thinking else {})}
    return json.dumps({"model": "m", "message": message, "done": False}).encode()


# --- the pieces ----------------------------------------------------------------------------------------------------


def test_the_text_so_far_goes_as_the_assistants_message_and_the_limit_counts_what_was_written() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 10}}
    lines = [line(thinking="Hm."), line("Hello"), line(" world")]
    assert partial_text(lines) == ("Hello world", "Hm.", False)
    sent, fresh = continued_body("/api/chat", body, lines) or ({}, True)
    assert not fresh and sent["messages"][-1] == {"role": "assistant", "content": "Hello world", "thinking": "Hm."}
    assert sent["options"] == {"num_predict": 7} and body["options"] == {"num_predict": 10}  # the original unchanged
    assert continued_body("/api/chat", body, [line(thinking="Hm.")]) == (body, True)  # a thought: start afresh
    assert continued_body("/api/generate", {"model": "m", "prompt": "hi"}, lines) is None
    assert continued_body("/api/chat", {**body, "format": "json"}, lines) is None


def test_the_done_line_adds_the_failed_hosts_part() -> None:
    splice = Splice()
    splice.failed(tokens=12, sent_at=10.0, first_at=11.0, last_at=13.5)
    done = b'{"model":"m","done":true,"total_duration":1000,"prompt_eval_count":40,"eval_count":18,"eval_duration":900}'
    final = json.loads(splice.final(done))
    assert final["eval_count"] == 30 and final["prompt_eval_count"] == 40
    assert (final["eval_duration"], final["total_duration"]) == (900 + 2_500_000_000, 1000 + 3_500_000_000)
    assert list(final) == list(json.loads(done))  # Ollama's field order kept


# --- two real simulators ---------------------------------------------------------------------------------------------

SIM_ARGS = ("--model", "s:1", "--ttft", "0.05", "--tps", "30", "--tokens", str(TOKENS))


class Pair:
    """Two simulators serving s:1 behind one gateway; the one that was killed is started again on its port."""

    def __init__(self, start: StartSimulator, gateway: Callable[[str], Gateway]) -> None:
        self._start = start
        self.sims = [start(*SIM_ARGS), start(*SIM_ARGS)]
        self.gateway = gateway(",".join(sim.url for sim in self.sims))
        self.dead: SimProcess | None = None  # the last one killed, and the one that took over
        self.alive: SimProcess | None = None

    def ready(self) -> None:
        """Both simulators up (a killed one again), fresh counters, and the gateway knowing it."""
        self.dead = self.alive = None
        for index, sim in enumerate(self.sims):
            if sim.proc.poll() is not None:
                self.sims[index] = self._start(*SIM_ARGS, "--port", str(sim.port))
        assert wait_for(lambda: not any(sim.stats()["active"] for sim in self.sims), timeout=5)  # a resumed one too
        for sim in self.sims:
            sim.reset()
        hosts = requests.get(self.gateway.url + "/readyz", timeout=5).json()["hosts"]
        assert [host["up"] for host in hosts] == [True, True]

    def kill_the_busy_one(self, how: signal.Signals = signal.SIGKILL) -> None:
        """SIGKILL (or ``how``) the simulator that is writing an answer now."""
        busy = [sim for sim in self.sims if sim.stats()["active"]]
        assert len(busy) == 1
        self.dead = busy[0]
        self.dead.signal(how)
        if how == signal.SIGKILL:
            self.dead.proc.wait()
        self.alive = next(sim for sim in self.sims if sim is not self.dead)

    def killed_after(
        self, items: Iterator[Any], is_token: Callable[[Any], bool], how: signal.Signals = signal.SIGKILL
    ) -> list[Any]:
        """Everything from ``items``, the host that writes them SIGKILLed (or ``how``) once 5 tokens arrived."""
        received, tokens = [], 0
        for item in items:
            received.append(item)
            if is_token(item):
                tokens += 1
                if tokens == 5:
                    self.kill_the_busy_one(how)
        return received

    def continuation_sent(self) -> str:
        """What the surviving host was sent as the answer so far."""
        assert self.alive is not None
        last = self.alive.stats()["last_request"]["messages"][-1]
        assert last["role"] == "assistant" and 0 < len(last["content"]) < len(WHOLE)
        return str(last["content"])


@pytest.fixture(scope="module")
def pair(start_module_simulator: StartSimulator, start_module_gateway: StartGateway) -> Pair:
    def gateway(url: str) -> Gateway:
        return start_module_gateway(url, heartbeat_s=0.3, read_timeout_s=READ_TIMEOUT_S, default_model="s:1")

    return Pair(start_module_simulator, gateway)


@pytest.fixture
def gateway(pair: Pair) -> Gateway:
    pair.ready()
    return pair.gateway


def metric(gateway: Gateway, result: str) -> float:
    text = requests.get(gateway.url + "/metrics", timeout=5).text
    found = re.search(rf'clawweb_failovers_total{{result="{result}",when="mid_answer"}} (\S+)', text) or re.search(
        rf'clawweb_failovers_total{{when="mid_answer",result="{result}"}} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


@pytest.mark.faults
def test_sse_one_unbroken_answer_a_status_frame_the_metric_and_the_log(gateway: Gateway, pair: Pair) -> None:
    before = metric(gateway, "continued")
    with requests.post(gateway.url + "/api/chat", json=chat(model="s:1"), headers=SSE, stream=True, timeout=20) as r:
        received: list[Event] = pair.killed_after(events(r), lambda e: e.is_line)
    partial, dead, alive = pair.continuation_sent(), pair.dead, pair.alive
    assert dead is not None and alive is not None
    assert content_of(received) == WHOLE and WHOLE.startswith(partial)  # the first host's part, then the second's
    lines = [e.json() for e in received if e.is_line]
    assert len(lines) == TOKENS + 1 and lines[-1]["done"] is True  # no token repeated, none missing
    assert lines[-1]["eval_count"] == TOKENS  # the done line counts the whole answer
    statuses = [e.json() for e in received if e.event == "status"]
    assert {"stage": "continuing", "continuing_on": alive.url} in statuses
    assert statuses[-1] == {"stage": "writing"}  # the continuation's first token: writing again
    assert not [e for e in received if e.event == "error"]
    assert metric(gateway, "continued") == before + 1
    assert wait_for(lambda: "failovers=1" in gateway.log, timeout=5)
    assert f"answer failed on {dead.url} after" in gateway.log and f"continuing on {alive.url}" in gateway.log


@pytest.mark.faults
def test_a_host_that_goes_silent_midway_is_left_after_the_read_timeout(gateway: Gateway, pair: Pair) -> None:
    try:
        body = chat(model="s:1")
        with requests.post(gateway.url + "/api/chat", json=body, headers=SSE, stream=True, timeout=20) as response:
            received: list[Event] = pair.killed_after(events(response), lambda e: e.is_line, signal.SIGSTOP)
    finally:
        if pair.dead is not None:
            pair.dead.signal(signal.SIGCONT)
    assert pair.continuation_sent() and content_of(received) == WHOLE
    assert len([e for e in received if e.is_line]) == TOKENS + 1
    assert wait_for(lambda: "(timeout); continuing on" in pair.gateway.log, timeout=5)


@pytest.mark.faults
def test_native_ndjson_lines_keep_coming(gateway: Gateway, pair: Pair) -> None:
    with requests.post(gateway.url + "/api/chat", json=chat(model="s:1"), stream=True, timeout=20) as response:
        assert response.status_code == 200
        lines = [json.loads(x) for x in pair.killed_after(response.iter_lines(), lambda x: b'"done":false' in x)]
    partial = pair.continuation_sent()
    assert "".join(x["message"]["content"] for x in lines) == WHOLE and WHOLE.startswith(partial)
    assert len(lines) == TOKENS + 1 and lines[-1]["done"] is True and lines[-1]["eval_count"] == TOKENS
    assert all("error" not in x for x in lines)


@pytest.mark.faults
def test_openai_chunks_are_one_answer_with_its_usage(gateway: Gateway, pair: Pair) -> None:
    body = {
        "model": "s:1",
        "messages": [{"role": "user", "content": "hello" + sim_line(tokens=TOKENS)}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "none",
    }
    with requests.post(gateway.url + "/v1/chat/completions", json=body, stream=True, timeout=20) as response:
        received = pair.killed_after(events(response), lambda e: '"content"' in e.data and '"delta"' in e.data)
    pair.continuation_sent()
    chunks = [e.json() for e in received if e.data_lines and e.data != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == WHOLE and received[-1].data == "[DONE]" and len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS


@pytest.mark.faults
def test_the_chat_pages_answer_is_stored_whole(gateway: Gateway, pair: Pair) -> None:
    conversation = requests.post(gateway.url + "/api/conversations", json={"model": "s:1"}, timeout=5).json()
    url = f"{gateway.url}/api/conversations/{conversation['id']}"
    started = requests.post(url + "/messages", json={"content": "hello", "think": False}, timeout=5)
    assert started.status_code == 202, started.text
    events_url = gateway.url + started.json()["generation"]["events_url"]
    with requests.get(events_url, headers=SSE, stream=True, timeout=20) as response:
        received = pair.killed_after(events(response), lambda e: e.event == "token")
    partial = pair.continuation_sent()
    shown = "".join(e.json()["message"]["content"] for e in received if e.event == "token")
    stored = requests.get(url, timeout=5).json()["messages"][-1]
    assert shown == stored["content"] == WHOLE and WHOLE.startswith(partial)
    assert stored["status"] == "done" and stored["error"] is None and stored["tokens"] == TOKENS
    assert any(e.event == "status" and e.json()["stage"] == "continuing" for e in received)


@pytest.mark.faults
def test_died_while_thinking_the_thought_stays_as_shown_and_the_answer_comes_whole(
    gateway: Gateway, pair: Pair
) -> None:
    body = chat({"think_tokens": 20, "tokens": TOKENS}, model="s:1", think=True)
    with requests.post(gateway.url + "/api/chat", json=body, headers=SSE, stream=True, timeout=20) as response:
        received = pair.killed_after(events(response), lambda e: e.is_line)
    assert (
        pair.alive is not None and pair.alive.stats()["last_request"]["messages"][-1]["role"] == "user"
    )  # asked afresh
    messages = [e.json()["message"] for e in received if e.is_line]
    thought = "".join(m.get("thinking") or "" for m in messages)
    assert 0 < len(thought) < len("".join(thinking_tokens(20))) and "".join(thinking_tokens(20)).startswith(thought)
    assert content_of(received) == WHOLE  # the new host's thinking was not relayed: one thought, then the answer
    assert not [e for e in received if e.event == "error"]


@pytest.mark.faults
def test_when_no_host_is_left_it_is_an_error_after_both_parts(gateway: Gateway, pair: Pair) -> None:
    """Each host drops the connection 4 tokens into what it writes: the second continues the first, then neither
    is left."""
    before = metric(gateway, "no_host")
    with requests.post(
        gateway.url + "/api/chat", json=chat({"close_after": 4}, model="s:1"), headers=SSE, stream=True, timeout=20
    ) as response:
        received = list(events(response))
    assert content_of(received) == "".join(answer_tokens(8))
    assert received[-1].event == "error"
    assert received[-1].json() == {"error": "Ollama closed the stream before the answer was done"}
    assert sum(sim.stats()["requests"] for sim in pair.sims) == 2
    assert metric(gateway, "no_host") == before + 1


@pytest.mark.faults
def test_the_page_says_where_the_answer_continues(browser: Browser, gateway: Gateway, pair: Pair) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US")
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(gateway.url + "/")
        page.locator("#think").set_checked(False)
        page.fill("#input", "hello" + sim_line(ttft=0.6, tokens=TOKENS, tps=20))  # each host waits before it begins
        page.keyboard.press("Enter")
        answer = page.locator(".message.assistant")
        expect(answer).to_have_attribute("data-stage", "writing", timeout=10_000)
        pair.kill_the_busy_one()
        assert pair.alive is not None
        expect(answer.locator(".status-line")).to_have_text(f"Continuing on 127.0.0.1:{pair.alive.port}…")
        expect(answer).to_have_attribute("data-status", "done", timeout=10_000)
        expect(answer.locator(".status-line")).to_be_hidden()
        assert answer.locator(".content").get_attribute("data-raw") == WHOLE
    finally:
        context.close()
    assert errors == []
