"""The chat page's versions and per-message actions (edit, switch, regenerate, continue, delete) in a real headless
Chromium, against gunicorn and the simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from .support.chromium import SCREENSHOTS, chat_page
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess, sim_line


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.1", "--tps", "50")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, heartbeat_s=1, upstream_label="Ollama simulator", simulator=1)


@pytest.fixture
def page(browser: Browser, gateway: Gateway, sim: SimProcess) -> Iterator[Page]:
    sim.reset()
    with chat_page(browser, gateway.url) as opened:
        yield opened


def ask(page: Page, text: str) -> None:
    page.locator("#think").set_checked(False)
    page.fill("#input", text)
    page.keyboard.press("Enter")
    expect(page.locator("#stop")).to_be_hidden(timeout=20_000)  # the answer ended
    expect(page.locator(".message.assistant").last).to_have_attribute("data-status", "done")


def messages(page: Page) -> Locator:
    return page.locator("#messages .message")


def answers(page: Page) -> list[str]:
    return [
        raw or ""
        for raw in page.locator(".message.assistant .content").evaluate_all(
            "nodes => nodes.map((node) => node.dataset.raw)"
        )
    ]


def position(message: Locator) -> Locator:
    return message.locator(".versions .position")


def stored_branch(page: Page, gateway: Gateway) -> list[dict[str, Any]]:
    cid = page.url.rsplit("/", 1)[1]
    branch: list[dict[str, Any]] = page.request.get(f"{gateway.url}/api/conversations/{cid}").json()["messages"]
    return branch


def test_edit_an_earlier_message_then_switch_branches_and_reload(page: Page, gateway: Gateway) -> None:
    ask(page, "First question" + sim_line(text="Answer one"))
    ask(page, "Second question" + sim_line(text="Answer two"))
    first = messages(page).first
    expect(first.locator(".versions")).to_be_hidden()  # one version: no arrows

    first.locator(".edit").click()
    editor = first.locator(".edit-box textarea")
    expect(editor).to_be_focused()
    assert editor.input_value().startswith("First question")
    editor.fill("First question, asked again" + sim_line(text="Answer one, edited"))
    first.locator(".save-edit").click()
    expect(page.locator("#stop")).to_be_hidden(timeout=20_000)
    expect(messages(page)).to_have_count(2)  # the new branch: the edited question and its answer
    assert answers(page) == ["Answer one, edited"]
    expect(position(messages(page).first)).to_have_text("2 / 2")

    messages(page).first.locator(".prev").click()  # back to the first version and the branch under it
    expect(messages(page)).to_have_count(4)
    assert answers(page) == ["Answer one", "Answer two"]
    expect(position(messages(page).first)).to_have_text("1 / 2")
    expect(messages(page).first.locator(".next")).to_be_focused()  # the keyboard stays on the arrows

    page.reload()  # the server keeps the branch shown
    expect(messages(page)).to_have_count(4)
    assert answers(page) == ["Answer one", "Answer two"]
    expect(position(messages(page).first)).to_have_text("1 / 2")
    assert [m["content"] for m in stored_branch(page, gateway)][1::2] == ["Answer one", "Answer two"]

    messages(page).first.locator(".next").focus()
    page.keyboard.press("Enter")
    expect(messages(page)).to_have_count(2)
    expect(position(messages(page).first)).to_have_text("2 / 2")
    assert answers(page) == ["Answer one, edited"]


def test_escape_cancels_an_edit(page: Page) -> None:
    ask(page, "Keep me" + sim_line(text="Kept"))
    user = messages(page).first
    user.locator(".edit").click()
    user.locator(".edit-box textarea").fill("Something else")
    page.keyboard.press("Escape")
    expect(user.locator(".edit-box")).to_have_count(0)
    expect(user.locator(".content")).to_have_text("Keep me" + sim_line(text="Kept"))
    expect(user.locator(".edit")).to_be_focused()
    expect(messages(page)).to_have_count(2)


def test_copy_gives_the_markdown_source_and_the_user_text(page: Page) -> None:
    ask(page, "Show markdown" + sim_line(text="Some **bold** and `code`"))
    answer = page.locator(".message.assistant").last
    answer.locator(".copy-message").click()
    expect(answer.locator(".copy-message")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "Some **bold** and `code`"
    messages(page).first.locator(".copy-message").click()
    assert page.evaluate("navigator.clipboard.readText()") == "Show markdown" + sim_line(
        text="Some **bold** and `code`"
    )


def test_regenerate_keeps_the_old_answer_reachable(page: Page, gateway: Gateway) -> None:
    ask(page, "Say something" + sim_line(text="The same words"))
    answer = page.locator(".message.assistant")
    old_id = answer.get_attribute("data-id")
    model = answer.get_attribute("data-model") or "?"
    meta = answer.locator(".meta").inner_text()
    assert model in meta and "tokens/s" in meta  # the model on the figures line, and with the time on hover
    assert (answer.locator(".when").get_attribute("title") or "").endswith(model)

    answer.locator(".regenerate").click()
    expect(answer).not_to_have_attribute("data-id", old_id or "", timeout=5000)
    expect(page.locator("#stop")).to_be_hidden(timeout=20_000)
    expect(answer).to_have_count(1)
    expect(position(answer)).to_have_text("2 / 2")
    new_id = answer.get_attribute("data-id")

    answer.locator(".prev").click()
    expect(answer).to_have_attribute("data-id", old_id or "")
    expect(position(answer)).to_have_text("1 / 2")
    page.reload()
    expect(page.locator(".message.assistant")).to_have_attribute("data-id", old_id or "")
    assert [m["id"] for m in stored_branch(page, gateway)][-1] == int(old_id or 0)
    assert json.loads(page.locator(".message.assistant").get_attribute("data-siblings") or "[]") == [
        int(old_id or 0),
        int(new_id or 0),
    ]


def test_continue_a_stopped_answer_grows_the_same_message(page: Page) -> None:
    page.fill("#input", "Tell me a long story" + sim_line(tokens=150, tps=30))
    page.keyboard.press("Enter")
    answer = page.locator(".message.assistant")
    expect(answer.locator(".content")).not_to_be_empty(timeout=5000)
    page.click("#stop")
    expect(answer).to_have_attribute("data-status", "stopped", timeout=5000)
    partial = answer.locator(".content").get_attribute("data-raw") or ""
    assert partial
    message_id = answer.get_attribute("data-id")
    expect(answer.locator(".continue")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "branches-stopped.png"))  # Stopped, and Continue beside it

    answer.locator(".continue").click()
    expect(answer).to_have_attribute("data-status", "streaming", timeout=5000)
    expect(answer.locator(".continue")).to_be_hidden()
    expect(answer).to_have_attribute("data-status", "done", timeout=30_000)
    expect(answer).to_have_count(1)  # one message, not two
    assert answer.get_attribute("data-id") == message_id
    grown = answer.locator(".content").get_attribute("data-raw") or ""
    assert grown.startswith(partial) and len(grown) > len(partial)
    assert answer.locator(".content").get_attribute("data-streamed") == grown  # the text so far, then the tokens
    expect(answer.locator(".continue")).to_be_hidden()  # done: nothing to continue


def test_delete_a_message_and_its_branch(page: Page, gateway: Gateway) -> None:
    ask(page, "One" + sim_line(text="Reply one"))
    ask(page, "Two" + sim_line(text="Reply two"))
    second = messages(page).nth(2)
    page.once("dialog", lambda dialog: dialog.accept())
    second.locator(".delete-message").click()
    expect(messages(page)).to_have_count(2)  # the question and the answer under it
    assert [m["content"] for m in stored_branch(page, gateway)] == ["One" + sim_line(text="Reply one"), "Reply one"]

    first = messages(page).first
    first.locator(".edit").click()
    first.locator(".edit-box textarea").fill("One, again" + sim_line(text="Reply again"))
    page.keyboard.press("Enter")  # Enter saves, as in the composer
    expect(page.locator("#stop")).to_be_hidden(timeout=20_000)
    expect(position(messages(page).first)).to_have_text("2 / 2")

    page.once("dialog", lambda dialog: dialog.dismiss())  # a refused confirmation changes nothing
    messages(page).first.locator(".delete-message").click()
    expect(position(messages(page).first)).to_have_text("2 / 2")

    page.once("dialog", lambda dialog: dialog.accept())
    messages(page).first.locator(".delete-message").click()  # this version goes, the other one shows
    expect(messages(page)).to_have_count(2)
    assert answers(page) == ["Reply one"]
    expect(messages(page).first.locator(".versions")).to_be_hidden()

    page.once("dialog", lambda dialog: dialog.accept())
    messages(page).first.locator(".delete-message").click()  # everything
    expect(messages(page)).to_have_count(0)
    expect(page.locator("#messages .empty")).to_be_visible()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("light", {"color_scheme": "light"}),
        ("dark", {"color_scheme": "dark"}),
        ("phone", {"viewport": {"width": 375, "height": 740}, "is_mobile": True, "has_touch": True}),
        (
            "phone-dark",
            {
                "viewport": {"width": 375, "height": 740},
                "is_mobile": True,
                "has_touch": True,
                "color_scheme": "dark",
                "locale": "zh-CN",
            },
        ),
        ("chinese", {"locale": "zh-CN"}),
    ],
)
def test_branch_screenshots(browser: Browser, gateway: Gateway, name: str, options: dict[str, Any]) -> None:
    """Versions, actions and an open edit, saved under tests/artifacts/screenshots/ for a person to look at."""
    context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, **options})
    try:
        page = context.new_page()
        page.goto(gateway.url + "/")
        chinese = options.get("locale") == "zh-CN"
        ask(page, ("什么是量子计算？" if chinese else "What is quantum computing?") + sim_line(tokens=40))
        messages(page).last.locator(".regenerate").click()
        expect(position(messages(page).last)).to_have_text("2 / 2", timeout=5000)
        expect(page.locator("#stop")).to_be_hidden(timeout=20_000)
        ask(page, ("再简单一点" if chinese else "Simpler, please") + sim_line(tokens=12))
        if name.startswith("phone"):  # no hover: an earlier message's actions are there all the same
            edit = messages(page).first.locator(".edit")
            assert edit.evaluate("(node) => getComputedStyle(node).opacity") == "1"
        messages(page).nth(2).locator(".edit").click()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"branches-{name}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
        if chinese:
            expect(messages(page).nth(2).locator(".save-edit")).to_have_text("保存并发送")
    finally:
        context.close()
