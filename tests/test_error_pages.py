"""Error pages in process: a browser on a page gets the app's own HTML page (its stylesheet, a way back), a
program the JSON it always had; an unknown conversation and someone else's look the same (test_page_axe: both)."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from clawweb.i18n import STRINGS

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
CHINESE = {**BROWSER, "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}
PROGRAM = {"Accept": "application/json"}


def html(response: TestResponse) -> str:
    assert response.mimetype == "text/html", response.mimetype
    text = response.get_data(as_text=True)
    assert '<link rel="stylesheet" href="/static/chat.css">' in text  # styled like the app, dark mode and all
    assert '<a class="button primary" href="/">Start a new chat</a>' in text or "开始新对话" in text
    return text


def test_an_unknown_conversation_is_the_apps_404_page_for_a_browser_and_json_for_a_program(client: FlaskClient) -> None:
    page = client.get("/c/0123456789abcdef", headers=BROWSER)
    assert page.status_code == 404
    text = html(page)
    assert "<title>Error 404 · clawweb</title>" in text and STRINGS["en"]["error_404"] in text
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")  # no inline style needed
    program = client.get("/c/0123456789abcdef", headers=PROGRAM)
    assert program.status_code == 404 and program.is_json and "error" in program.get_json()
    api = client.get("/api/conversations/0123456789abcdef", headers=BROWSER)  # an API path: JSON whoever asks
    assert api.status_code == 404 and api.is_json


def test_the_page_is_in_the_readers_language(client: FlaskClient) -> None:
    page = client.get("/no/such/page", headers=CHINESE)
    assert page.status_code == 404
    text = html(page)
    assert '<html lang="zh-CN">' in text and STRINGS["zh"]["error_404"] in text and "错误 404" in text


def test_a_wrong_method_on_a_page_keeps_its_allow_header(client: FlaskClient) -> None:
    page = client.delete("/", headers=BROWSER)
    assert page.status_code == 405 and "GET" in page.headers["Allow"]
    assert STRINGS["en"]["error_405"] in html(page)


def test_a_refusal_on_a_page_names_its_reason_to_a_browser_and_stays_json_otherwise(client: FlaskClient) -> None:
    page = client.post("/logout", headers={**BROWSER, "Origin": "http://127.0.0.1:1"})
    assert page.status_code == 403
    text = html(page)
    assert STRINGS["en"]["error_403"] in text and "cross-site request refused" in text
    program = client.post("/logout", headers={"Origin": "http://127.0.0.1:1"})  # Accept */*: JSON, as before
    assert program.status_code == 403 and program.get_json() == {"error": "cross-site request refused"}


@pytest.fixture
def broken(app: Flask) -> FlaskClient:
    def boom() -> str:
        raise RuntimeError("a bug")

    app.add_url_rule("/boom", "boom", boom)
    return app.test_client()


def test_a_bug_is_a_500_page_for_a_browser_without_its_details(broken: FlaskClient) -> None:
    page = broken.get("/boom", headers=BROWSER)
    assert page.status_code == 500
    text = html(page)
    assert STRINGS["en"]["error_500"] in text and "a bug" not in text
    program = broken.get("/boom")
    assert program.status_code == 500
    assert program.get_json() == {"error": "internal error; the gateway log has the details"}


def test_new_and_untitled_chats_have_their_own_words_and_tokens_are_tokens() -> None:
    for lang in ("en", "zh"):
        assert STRINGS[lang]["new_chat"] != STRINGS[lang]["untitled"], lang
        assert STRINGS[lang].keys() == STRINGS["en"].keys()
    assert "字" not in STRINGS["zh"]["rate"] and "词元" in STRINGS["zh"]["rate"]
    assert STRINGS["en"]["status_ahead_one"] == "1 question ahead of you"
