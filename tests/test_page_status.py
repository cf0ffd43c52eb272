"""The page while it waits, in a real headless Chromium against gunicorn and the simulator: the status line of each
stage, the figures it leaves, the connection indicator after errors, refusals that retry by themselves, a sleeping
tab that wakes up to the finished answer, and the wake lock."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from .support.chromium import SCREENSHOTS
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, sim_line

THOUGHT_FOR = re.compile(r"Thought for \d+ s")
PHONE = {"viewport": {"width": 390, "height": 844}, "has_touch": True, "is_mobile": True}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.05", "--tps", "40", "--tokens", "30")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, max_active=1, heartbeat_s=1, simulator=1, upstream_label="Ollama simulator")


Open = Callable[..., Page]


@pytest.fixture
def open_page(browser: Browser, gateway: Gateway, sim: SimProcess) -> Iterator[Open]:
    """``open_page(init_script, tolerate, **context options)``: the chat page in a fresh context. At the end no page
    may have had a script error (``"undefined" is not valid JSON`` was one) or a console error other than those
    containing ``tolerate`` (the browser's report of a connection the test breaks on purpose)."""
    sim.reset()
    opened: list[tuple[BrowserContext, list[str]]] = []

    def open_(init_script: str = "", tolerate: tuple[str, ...] = ("net::ERR",), **options: Any) -> Page:
        context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, "locale": "en-US", **options})
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "console",
            lambda message: (
                errors.append(message.text)
                if message.type == "error" and not any(text in message.text for text in tolerate)
                else None
            ),
        )
        page.goto(gateway.url + "/")
        opened.append((context, errors))
        return page

    yield open_
    for context, errors in opened:
        context.close()
        assert errors == []


def send(page: Page, text: str, think: bool = False) -> None:
    page.locator("#think").set_checked(think)
    page.fill("#input", text)
    page.keyboard.press("Enter")


def unload(gateway: Gateway, sim: SimProcess) -> None:
    """The model out of memory, as Ollama's keep_alive 0 does; the gateway's last sighting of it aged."""
    requests.post(sim.url + "/api/generate", json={"model": "qwen3:32b", "prompt": "", "keep_alive": 0}, timeout=5)
    time.sleep(1.1)


def answered(gateway: Gateway, directive: dict[str, Any], times: int) -> None:
    """``times`` answers through the API: what the estimates are measured from."""
    for _ in range(times):
        conversation = requests.post(gateway.url + "/api/conversations", json={}, timeout=5).json()
        url = f"{gateway.url}/api/conversations/{conversation['id']}/messages"
        started = requests.post(url, json={"content": "hi" + sim_line(**directive), "think": False}, timeout=5)
        events_url = gateway.url + started.json()["generation"]["events_url"]
        with requests.get(events_url, stream=True, timeout=30) as response:
            assert b"event: done" in b"".join(response.iter_content(None))


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"status-{name}.png"))


def test_each_stage_has_its_line_then_the_figures_say_what_it_took(
    open_page: Open, gateway: Gateway, sim: SimProcess
) -> None:
    page = open_page()
    unload(gateway, sim)
    send(page, "Why is the sky blue?" + sim_line(load=2.5, prompt=2.5, think_tokens=60, tps=20), think=True)
    line = page.locator(".message.assistant .status-line")
    expect(line).to_have_text("Loading qwen3:32b")  # nothing measured yet: no time promised
    shot(page, "loading")
    expect(line).to_have_text("Reading your prompt", timeout=10_000)
    shot(page, "prompt")
    expect(line).to_have_text("Thinking…", timeout=10_000)
    shot(page, "thinking")
    answer = page.locator(".message.assistant")
    expect(answer).to_have_attribute("data-stage", "writing", timeout=10_000)
    expect(line).to_be_hidden()
    # The typing indicator while text flows (polled: on a busy machine the first look may come between frames).
    caret = "() => [...document.querySelectorAll('.message.assistant .content .tail')]"
    caret += ".some(tail => getComputedStyle(tail, '::after').content === '\"▍\"')"
    page.wait_for_function(caret, timeout=10_000)
    shot(page, "writing")
    expect(answer).to_have_attribute("data-status", "done", timeout=20_000)
    meta = answer.locator(".meta").inner_text()
    assert "load 2." in meta and "first token" in meta and "tokens/s" in meta, meta
    expect(answer.locator(".thinking summary")).to_have_text(THOUGHT_FOR)
    shot(page, "done")
    page.reload()  # the stored message keeps the figures
    assert "load 2." in page.locator(".message.assistant .meta").inner_text()
    expect(page.locator(".message.assistant .thinking summary")).to_have_text(THOUGHT_FOR)


def test_a_measured_load_is_promised_and_counted_down(open_page: Open, gateway: Gateway, sim: SimProcess) -> None:
    unload(gateway, sim)
    answered(gateway, {"load": 3}, 1)  # the load measured once: the next one's estimate
    unload(gateway, sim)
    page = open_page(**PHONE)
    send(page, "Again" + sim_line(load=3))
    line = page.locator(".message.assistant .status-line")
    expect(line).to_contain_text("Loading qwen3:32b · about ")
    first = line.inner_text()
    expect(line).not_to_have_text(first, timeout=3000)  # counted down each second
    shot(page, "loading-phone")
    expect(page.locator(".message.assistant")).to_have_attribute("data-status", "done", timeout=20_000)


def test_a_queued_answer_says_its_place_and_when(open_page: Open, gateway: Gateway) -> None:
    answered(gateway, {}, 3)  # answers measured: the queue's estimate has something to go by
    holder = requests.post(gateway.url + "/api/conversations", json={}, timeout=5).json()
    held = requests.post(
        f"{gateway.url}/api/conversations/{holder['id']}/messages",
        json={"content": "hold" + sim_line(prompt=30), "think": False},
        timeout=5,
    ).json()["generation"]
    assert wait_for(lambda: requests.get(gateway.url + "/api/queue", timeout=5).json()["active"] == 1)
    page = open_page(color_scheme="dark")
    send(page, "Me next")
    line = page.locator(".message.assistant .status-line")
    expect(line).to_contain_text("You are next · about ")
    shot(page, "queued-dark")
    requests.delete(f"{gateway.url}/api/generations/{held['id']}", timeout=10)  # the slot is the page's now
    expect(page.locator(".message.assistant")).to_have_attribute("data-status", "done", timeout=20_000)
    meta = page.locator(".message.assistant .meta").inner_text()
    assert "waited " in meta, meta  # the wait in the queue, apart from the first token


def test_the_servers_error_event_ends_the_answer_and_the_indicator_is_not_left_red(open_page: Open) -> None:
    page = open_page()
    send(page, "Fail me" + sim_line(error_after=3))
    answer = page.locator(".message.assistant")
    expect(answer).to_have_attribute("data-status", "error", timeout=10_000)
    expect(answer.locator(".meta .status")).to_contain_text("simulated failure after 3 tokens")
    expect(page.locator("#connection")).to_have_attribute("data-state", "idle")  # not "Reconnecting…"
    expect(page.locator("#stop")).to_be_hidden()


def test_a_worker_killed_mid_answer_ends_it_without_a_script_error(
    open_page: Open, gateway: Gateway, sim: SimProcess
) -> None:
    # Its stream breaks mid-chunk, and the new worker does not know the dead one's answer: the browser says so.
    page = open_page(tolerate=("net::ERR", "404 (NOT FOUND)"))
    send(page, "Long one" + sim_line(tokens=400, tps=20))
    answer = page.locator(".message.assistant")
    expect(answer).to_have_attribute("data-stage", "writing", timeout=10_000)
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    found = subprocess.run(["pgrep", "-P", str(gateway.proc.pid)], capture_output=True, text=True, check=False)
    workers = [int(pid) for pid in found.stdout.split()]
    assert workers
    for pid in workers:
        os.kill(pid, signal.SIGKILL)  # gunicorn starts a new worker; the answer's process is gone
    # Ends as interrupted (the new worker finds it streaming in the database), with no JSON parse error on the way.
    expect(answer).to_have_attribute("data-status", "error", timeout=30_000)
    expect(page.locator("#connection")).to_have_attribute("data-state", "idle")
    shot(page, "worker-killed")


def test_a_refusal_is_shown_in_plain_words_and_retried_after_retry_after(open_page: Open) -> None:
    page = open_page(tolerate=("503 (Service Unavailable)",))
    refused: list[str] = []

    def once_busy(route: Route) -> None:
        if route.request.method == "POST" and not refused:
            refused.append(route.request.url)
            body = {"error": "the gateway is at capacity (4 answering, 64 waiting); retry later"}
            route.fulfill(status=503, json=body, headers={"Retry-After": "2"})
        else:
            route.continue_()

    page.route("**/api/conversations/*/messages", once_busy)
    send(page, "Are you there?")
    notice = page.locator(".refusal")
    expect(notice).to_contain_text("The server is busy right now")
    expect(notice).not_to_contain_text("capacity")  # plain words, not the operator's
    expect(notice.locator(".refusal-countdown")).to_have_text("Trying again in 2 s.")
    shot(page, "refused")
    expect(notice).to_be_hidden(timeout=5000)
    expect(page.locator(".message.assistant")).to_have_attribute("data-status", "done", timeout=10_000)
    assert len(refused) == 1


def test_a_refusal_can_be_cancelled_and_the_text_stays(open_page: Open) -> None:
    page = open_page(tolerate=("429 (Too Many Requests)",))
    page.route(
        "**/api/conversations/*/messages",
        lambda route: route.fulfill(
            status=429, json={"error": "more than 6 answers a minute"}, headers={"Retry-After": "30"}
        ),
    )
    send(page, "Too soon")
    notice = page.locator(".refusal")
    expect(notice).to_contain_text("You have asked a lot in a short time")
    notice.locator(".refusal-cancel").click()
    expect(notice).to_have_count(0)
    expect(page.locator("#input")).to_have_value("Too soon")
    expect(page.locator("#send")).to_be_enabled()


SLEEPING = """
Object.defineProperty(document, "visibilityState", { configurable: true, get: () => window.__visibility || "visible" });
window.__setVisibility = (state) => {
  window.__visibility = state;
  document.dispatchEvent(new Event("visibilitychange"));
};
window.__wakeLocks = [];
Object.defineProperty(navigator, "wakeLock", { configurable: true, value: { request: async (type) => {
  const sentinel = new EventTarget();
  sentinel.released = false;
  sentinel.release = async () => { sentinel.released = true; sentinel.dispatchEvent(new Event("release")); };
  window.__wakeLocks.push(sentinel);
  return sentinel;
} } });
"""


def test_a_sleeping_tab_wakes_up_to_the_finished_answer(open_page: Open, gateway: Gateway) -> None:
    page = open_page(init_script=SLEEPING, **PHONE)
    send(page, "Tell me a story" + sim_line(tokens=120, tps=30))
    answer = page.locator(".message.assistant")
    expect(answer).to_have_attribute("data-stage", "writing", timeout=10_000)
    assert page.evaluate("window.__wakeLocks.length === 1 && !window.__wakeLocks[0].released")  # screen kept on
    page.evaluate("window.__setVisibility('hidden')")
    page.context.set_offline(True)  # the locked phone's connection drops
    cid = page.url.rsplit("/", 1)[1]

    def stored() -> dict[str, Any]:
        last: dict[str, Any] = requests.get(f"{gateway.url}/api/conversations/{cid}", timeout=5).json()["messages"][-1]
        return last

    assert wait_for(lambda: stored()["status"] == "done", timeout=20)  # it finished while the phone slept
    page.context.set_offline(False)
    page.evaluate("window.__setVisibility('visible')")
    expect(answer).to_have_attribute("data-status", "done", timeout=10_000)
    content = answer.locator(".content")
    assert content.get_attribute("data-streamed") == stored()["content"]  # every token, none twice
    assert page.evaluate("window.__wakeLocks.every((lock) => lock.released)")  # and the screen may sleep again
    shot(page, "woke-up")
