"""The README's screenshots: the chat page mid-answer, light and dark, at desktop width.

``make screenshots`` runs this module with ``CLAWWEB_README_SCREENSHOTS=1``, which writes
docs/screenshot-light.png and docs/screenshot-dark.png; in the suite it writes only into the screenshots folder
(so ``make test`` leaves the committed pictures alone) and still checks that what it captured is mid-answer.

The history is imported (a sidebar of a week's conversations, one answered already with a table, a list and code
and its figures line); the question asked on the page is answered by the simulator at 8 tokens/s, so the picture
catches it writing. The question carries no ``#sim`` line (it would show): the simulator's own ``--tps`` slows it.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import requests
from playwright.sync_api import Browser, Locator, Page, expect

from .support.chromium import SCREENSHOTS
from .support.factories import StartGateway, StartSimulator
from .support.servers import ROOT, Gateway

DOCS = ROOT / "docs"
DAY = 86_400
TABLE_ANSWER = """A **bit** is 0 or 1; a **qubit** is a superposition of both until it is measured.

| | bit | qubit |
|---|---|---|
| state | 0 or 1 | α\\|0⟩ + β\\|1⟩ |
| reading it | leaves it alone | collapses it |
| *n* of them hold | one of 2ⁿ values | all 2ⁿ amplitudes |

`numpy` can simulate a few: `np.kron(a, b)` is two of them at once.
"""
THINKING = "They want the difference in one table: state, measurement, and what n of them hold."
# (title, days ago, pinned): a week of a person's chats, so every group of the sidebar shows
HISTORY = [
    ("Team style guide for SQL", 20, True),
    ("Rust lifetimes, simply", 0.1, False),
    ("Regex for ISO 8601 dates", 1, False),
    ("Plan a 3-day trip to Kyoto", 1.2, False),
    ("Explain the CAP theorem", 3, False),
    ("量子纠缠是什么？", 4, False),
    ("Bash: retry with backoff", 12, False),
]


def message(key: str, parent: str | None, role: str, content: str, when: float, **more: Any) -> dict[str, Any]:
    return {"id": key, "parent_id": parent, "role": role, "content": content, "created_at": when, **more}


def history(now: float) -> dict[str, Any]:
    """A clawweb export: the conversation shown (a question answered) and the rest of the sidebar."""
    answered = now - 300
    shown = {
        "id": "qubits",
        "title": "Qubits, in one table",
        "model": "qwen3:32b",
        "created_at": answered,
        "updated_at": answered,
        "current_id": "a1",
        "messages": [
            message("q1", None, "user", "What is a qubit, compared with a bit? One table, please.", answered),
            message(
                "a1",
                "q1",
                "assistant",
                TABLE_ANSWER,
                answered + 9,
                model="qwen3:32b",
                thinking=THINKING,
                status="done",
                done_reason="stop",
                ttft_ms=412.0,
                tokens=131,
                tokens_per_s=36.4,
            ),
        ],
    }
    others = [
        {
            "id": f"c{index}",
            "title": title,
            "model": "qwen3:32b",
            "created_at": now - ago * DAY,
            "updated_at": now - ago * DAY,
            "pinned": pinned,
            "current_id": f"c{index}a",
            "messages": [
                message(f"c{index}q", None, "user", title, now - ago * DAY),
                message(f"c{index}a", f"c{index}q", "assistant", "…", now - ago * DAY + 5, model="qwen3:32b"),
            ],
        }
        for index, (title, ago, pinned) in enumerate(HISTORY)
    ]
    return {"format": "clawweb", "version": 1, "exported_at": now, "conversations": [*others, shown]}


def writing(answer: Locator) -> str:
    """The answer's text once it has written past its code block and is still going."""
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".content pre code")).to_be_visible(timeout=20_000)
    expect(answer.locator(".content")).to_contain_text("A register of", timeout=20_000)
    return answer.locator(".content").inner_text()


def capture(pages: dict[str, Page]) -> dict[str, Path]:
    """Screenshots of the pages taken one right after the other while their answer streams (so both show it
    at nearly the same token), each checked to be mid-answer on both sides of the capture."""
    answers = {name: page.locator(".message.assistant").last for name, page in pages.items()}
    shown = {name: writing(answer) for name, answer in answers.items()}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    paths = {name: SCREENSHOTS / f"readme-{name}.png" for name in pages}
    for name, page in pages.items():
        page.screenshot(path=str(paths[name]))
    for name, answer in answers.items():
        assert answer.get_attribute("data-status") == "streaming"  # still writing: the picture is mid-answer
        assert len(shown[name]) > 100 and "QuantumCircuit" in shown[name]
        assert paths[name].stat().st_size > 30_000
    return paths


def test_readme_screenshots_mid_answer(
    browser: Browser, start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    # 400 tokens at 8 a second: nearly a minute of answer, the picture is taken within its first quarter.
    sim = start_simulator("--ttft", "0.6", "--tps", "8", "--tokens", "400")
    gateway: Gateway = start_gateway(sim.url)
    imported = requests.post(gateway.url + "/api/import", json=history(time.time()), timeout=10)
    assert imported.status_code == 200 and imported.json()["imported"] == len(HISTORY) + 1, imported.text
    listed = requests.get(gateway.url + "/api/conversations", timeout=10).json()["conversations"]
    conversation = next(c["id"] for c in listed if c["title"] == "Qubits, in one table")

    contexts = [
        browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US", color_scheme=scheme)
        for scheme in ("light", "dark")
    ]
    try:
        light, dark = (context.new_page() for context in contexts)
        light.goto(f"{gateway.url}/c/{conversation}")
        light.locator("#think").set_checked(True)
        light.fill("#input", "Show me two qubits in superposition with Qiskit.")
        light.keyboard.press("Enter")
        expect(light.locator(".message.assistant").last).to_have_attribute("data-status", "streaming")
        # The same answer followed from a second page (it joins mid-answer), in dark mode.
        dark.goto(f"{gateway.url}/c/{conversation}")
        pictures = capture({"light": light, "dark": dark})
        expect(dark.locator(".message.assistant").first.locator(".content table")).to_be_visible()
        expect(dark.locator(".conversation-list")).to_contain_text("量子纠缠是什么？")
        light.click("#stop")
    finally:
        for context in contexts:
            context.close()
    if os.environ.get("CLAWWEB_README_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        for name, path in pictures.items():
            shutil.copyfile(path, DOCS / f"screenshot-{name}.png")


def test_the_readmes_show_files_that_exist() -> None:
    """Every picture and local link of README.md and bench/README.md is a file of the repository; the plot is SVG
    with a line per target."""
    for readme in (ROOT / "README.md", ROOT / "bench" / "README.md"):
        text = readme.read_text()
        local = re.findall(r'(?:src|srcset)="([^"]+)"|\]\(([^)#\s]+)\)', text)
        targets = [path for pair in local for path in pair if path and "://" not in path]
        assert targets, readme
        for target in targets:
            assert (readme.parent / target).is_file(), f"{readme.name}: {target}"
    plot = ET.parse(ROOT / "bench" / "results" / "latest.svg").getroot()
    titles = {"".join(t.itertext()) for t in plot.iter("{http://www.w3.org/2000/svg}title")}
    for target in ("simulator direct", "nginx", "naive relay", "clawweb"):
        assert any(title.startswith(target) for title in titles), target
