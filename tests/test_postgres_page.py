"""The chat page on PostgreSQL, as a user uses it: log in, ask, watch the answer stream, reload and find it
stored, search for it, rename the conversation. Real gunicorn on ``CLAWWEB_DATABASE_URL``, real PostgreSQL,
the simulator, Debian's Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from clawweb.simulator import answer_tokens

from .support.chromium import log_in
from .support.factories import StartGateway, StartSimulator
from .support.postgres import Databases
from .support.servers import Gateway
from .support.simproc import SimProcess, sim_line

pytestmark = pytest.mark.postgres
USER, PASSWORD = "ann", "correct horse battery"


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.1", "--tps", "40")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway, postgres_databases: Databases) -> Gateway:
    server = start_module_gateway(
        sim.url, database_url=postgres_databases.fresh(), auth="required", heartbeat_s=1, simulator=1
    )
    server.new_user(USER, PASSWORD)
    return server


@pytest.fixture
def page(browser: Browser, gateway: Gateway) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US")
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    log_in(opened, gateway.url, USER, PASSWORD)
    yield opened
    context.close()
    assert errors == []


def test_an_answer_streams_is_stored_and_found(page: Page, gateway: Gateway) -> None:
    page.fill("#input", "Tell me about tardigrades\n" + sim_line(tokens=30))
    page.keyboard.press("Enter")
    answer = page.locator(".message.assistant").last
    expect(answer).to_have_attribute("data-status", "done", timeout=20_000)
    expected = "".join(answer_tokens(30))
    assert answer.locator(".content").get_attribute("data-streamed") == expected  # painted as it streamed
    assert "/c/" in page.url
    cid = page.url.rsplit("/c/", 1)[1]

    page.reload()  # what the page shows now comes from PostgreSQL
    stored = page.locator(".message.assistant").last
    expect(stored).to_have_attribute("data-status", "done")
    assert stored.locator(".content").get_attribute("data-raw") == expected
    expect(page.locator(".conversation-list li.current a")).to_have_text(re.compile(r"^Tell me about tardigrades"))

    page.fill("#search", "tardigrade")  # pg_trgm, case-insensitive, inside the word
    hit = page.locator(f'#hits a[href^="/c/{cid}"]')
    expect(hit.first).to_be_visible()
    page.locator("#search").press("Escape")

    # The CLI reads the same database: one conversation stored for ann, its bytes counted by PostgreSQL's triggers.
    usage = gateway.cli("users", "usage", USER).splitlines()[-1].split()
    assert usage[0] == USER and usage[1] == "1"
