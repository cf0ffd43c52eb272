"""Accounts in a real headless Chromium (Debian's, driven by Playwright): the login page, the session cookie,
the Content-Security-Policy against injected script, and a form posted from another origin."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from clawweb.simulator import answer_tokens

from .support.chromium import SCREENSHOTS
from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway
from .support.simproc import SimProcess

USER = "alice"
PASSWORD = "correct horse battery"
COOKIE = "clawweb"


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.1", "--tps", "50")


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(
        sim.url,
        auth="required",
        heartbeat_s=1,
        upstream_label="Ollama simulator",
        simulator=1,
    )


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    """The API key of the one user the browser logs in as: the tests check what she owns through the API."""
    return gateway.new_user(USER, PASSWORD)


class Console:
    """Script errors and console errors of every page in a context, kept for a look at the end."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def context(browser: Browser, console: Console, key: str) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US")
    opened.on("page", console.watch)
    yield opened
    opened.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def conversations(gateway: Gateway, key: str) -> list[dict[str, Any]]:
    response = requests.get(gateway.url + "/api/conversations", headers=bearer(key), timeout=5)
    assert response.status_code == 200, response.text
    return list(response.json()["conversations"])


def where(page: Page) -> tuple[str, dict[str, list[str]]]:
    """The page's path and query."""
    parts = urlsplit(page.url)
    return parts.path, parse_qs(parts.query)


def submit_login(page: Page, password: str) -> int:
    """Fill the login form and send it; the HTTP status of the page it answers with (before any redirect)."""
    page.fill("#name", USER)
    page.fill("#password", password)
    with page.expect_response(lambda r: urlsplit(r.url).path == "/login" and r.request.method == "POST") as posted:
        page.click("form button[type=submit]")
    page.wait_for_load_state()
    return posted.value.status


def log_in(page: Page, gateway: Gateway, path: str = "/") -> None:
    page.goto(gateway.url + path)
    assert where(page)[0] == "/login"
    assert submit_login(page, PASSWORD) == 302
    expect(page.locator(".account .user")).to_have_text(USER)
    page.wait_for_load_state("domcontentloaded")  # the deferred scripts ran: Enter sends


def ask(page: Page, text: str, directive: dict[str, Any]) -> None:
    page.locator("#think").set_checked(False)
    page.fill("#input", f"{text}\n#sim {json.dumps(directive)}")
    page.keyboard.press("Enter")


def last_answer(page: Page) -> Any:
    return page.locator(".message.assistant").last


def screenshot(page: Page, name: str) -> None:
    """Saved under tests/artifacts/screenshots/ for a person to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 5_000


def session_cookie(context: BrowserContext) -> dict[str, Any] | None:
    found = [dict(cookie) for cookie in context.cookies() if cookie["name"] == COOKIE]
    assert len(found) <= 1, found
    return found[0] if found else None


# --- the login flow -------------------------------------------------------------------------------------------------


def test_login_send_reload_and_logout(context: BrowserContext, console: Console, gateway: Gateway, key: str) -> None:
    url = gateway.url + "/api/conversations"
    old = requests.post(url, json={"title": "Trip plans"}, headers=bearer(key), timeout=5)
    assert old.status_code == 201, old.text
    deep = f"/c/{old.json()['id']}"
    page = context.new_page()

    # Not logged in: a deep link leads to the login page, which remembers where you were going.
    page.goto(gateway.url + deep)
    assert where(page) == ("/login", {"next": [deep]})
    expect(page).to_have_title("Log in · clawweb")
    expect(page.locator("#name")).to_be_focused()
    form = page.locator("main.login").bounding_box()
    assert form is not None and abs(form["x"] + form["width"] / 2 - 600) <= 2  # centred in the 1200 px window
    screenshot(page, "login")

    # A wrong password: 401, the message on the page, still on the login page with the name kept.
    assert submit_login(page, "not the password") == 401
    assert where(page)[0] == "/login"
    expect(page.locator(".login .error[role=alert]")).to_have_text("Wrong user name or password.")
    expect(page.locator("#name")).to_have_value(USER)
    expect(page.locator("#password")).to_have_value("")
    screenshot(page, "login-error")

    # The right password: straight to the page asked for first, with the user's name in the top bar.
    assert submit_login(page, PASSWORD) == 302
    assert page.url == gateway.url + deep
    expect(page.locator(".topbar h1")).to_have_text("Trip plans")
    expect(page.locator(".topbar .account .user")).to_have_text(USER)
    expect(page.locator(".topbar .account button")).to_have_text("Log out")

    cookie = session_cookie(context)
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # plain HTTP here; over TLS it is Secure (test_auth, test_deploy)
    assert page.evaluate("document.cookie") == ""  # no script can read the session

    # Sending: the page's own requests carry the CSRF token, and the answer streams to the end.
    page.click(".new-chat")
    page.wait_for_load_state()  # the click only starts the navigation; Enter before the scripts run types a newline
    assert where(page)[0] == "/"
    ask(page, "Hello from the browser", {"tokens": 5})
    expect(last_answer(page)).to_have_attribute("data-status", "done", timeout=20_000)
    expected = "".join(answer_tokens(5))
    content = last_answer(page).locator(".content")
    assert content.get_attribute("data-raw") == expected and content.get_attribute("data-streamed") == expected
    assert where(page)[0].startswith("/c/")
    new_id = where(page)[0].removeprefix("/c/")
    mine = {c["id"]: c for c in conversations(gateway, key)}
    assert new_id in mine and mine[new_id]["title"].startswith("Hello from the browser")
    screenshot(page, "logged-in")

    # A reload keeps you logged in, on the same conversation.
    page.reload()
    assert page.url == gateway.url + "/c/" + new_id
    expect(page.locator(".account .user")).to_have_text(USER)
    expect(last_answer(page)).to_have_attribute("data-status", "done")
    assert last_answer(page).locator(".content").get_attribute("data-raw") == expected

    # Log out: back on the login page, and the chat page is closed again.
    page.click(".account button[type=submit]")
    page.wait_for_url(gateway.url + "/login")
    expect(page.locator("form button[type=submit]")).to_have_text("Log in")
    assert context.request.get(gateway.url + "/api/conversations").status == 401  # the session is over
    page.goto(gateway.url + "/")
    assert where(page) == ("/login", {"next": ["/"]})
    page.goto(gateway.url + "/c/" + new_id)
    assert where(page) == ("/login", {"next": ["/c/" + new_id]})

    # Logging in again from "/" leads back to "/".
    page.goto(gateway.url + "/")
    assert submit_login(page, PASSWORD) == 302
    assert page.url == gateway.url + "/"
    expect(page.locator(".account .user")).to_have_text(USER)

    # The only console error allowed: Chromium's note about the 401 answer to the wrong password.
    assert [e for e in console.errors if "status of 401" not in e] == []


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("login-dark", {"color_scheme": "dark"}),
        ("login-phone", {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}),
    ],
)
def test_login_page_screenshots(browser: Browser, gateway: Gateway, name: str, options: dict[str, Any]) -> None:
    """The login page in dark mode and on a phone, for a person to look at; the asserts catch the obvious."""
    context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, "locale": "en-US", **options})
    try:
        page = context.new_page()
        page.goto(gateway.url + "/")
        width = page.viewport_size["width"] if page.viewport_size else 0
        for selector in ("main.login", "#name", "#password", "form button[type=submit]"):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (selector, box)
        screenshot(page, name)
    finally:
        context.close()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("account", {}),
        ("account-dark", {"color_scheme": "dark"}),
        ("account-phone", {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}),
    ],
)
def test_account_page_creates_a_key_and_signs_out_elsewhere(
    browser: Browser, gateway: Gateway, key: str, name: str, options: dict[str, Any]
) -> None:
    """The account page as a person uses it: a second browser is listed and signed out, a key is made and shown
    once; nothing spills past the screen's edge (phone width), and screenshots for a person to look at."""
    elsewhere = browser.new_context()
    context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, "locale": "en-US", **options})
    try:
        other = elsewhere.new_page()
        log_in(other, gateway)
        page = context.new_page()
        log_in(page, gateway)
        page.locator(".account .user").click()
        expect(page.locator("h1")).to_contain_text("Account")
        expect(page.locator(".tag")).to_have_text("this browser")
        page.fill("#key-name", "notebook")
        page.locator("form[action='/account/keys'] button").click()
        made = page.locator("#new-key").inner_text()
        assert made.startswith("cw_")
        assert requests.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {made}"}).ok
        width = page.viewport_size["width"] if page.viewport_size else 0
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        screenshot(page, name)
        page.locator("#end-others").click()
        expect(page.locator("tr[data-session]")).to_have_count(1)
        other.reload()
        assert where(other)[0] == "/login"  # that browser was signed out
    finally:
        context.close()
        elsewhere.close()


# --- the Content-Security-Policy ------------------------------------------------------------------------------------

LISTEN_FOR_VIOLATIONS = """() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(
        {violated: e.violatedDirective, effective: e.effectiveDirective, disposition: e.disposition}));
}"""
INJECT = """() => {
    const s = document.createElement("script");
    s.textContent = "window.__pwned = 1";
    document.head.appendChild(s);
    const holder = document.createElement("div");
    holder.innerHTML = '<img src="data:," onerror="window.__pwned2 = 1">';  // an empty image: onerror fires
    document.body.appendChild(holder);
}"""


def test_csp_blocks_injected_inline_script(context: BrowserContext, console: Console, gateway: Gateway) -> None:
    page = context.new_page()
    log_in(page, gateway)
    policy = page.evaluate("fetch('/').then((r) => r.headers.get('Content-Security-Policy'))")
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    page.evaluate(LISTEN_FOR_VIOLATIONS)
    page.evaluate(INJECT)
    page.wait_for_function("window.__violations.length >= 2", timeout=5000)
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("typeof window.__pwned2") == "undefined"
    violations = page.evaluate("window.__violations")
    assert all(v["violated"].startswith("script-src") and v["disposition"] == "enforce" for v in violations)
    effective = {v["effective"] for v in violations}
    assert {"script-src-elem", "script-src-attr"} <= effective, violations  # the element and the handler
    assert console.errors and all("Content Security Policy" in e for e in console.errors), console.errors
    # The page's own script still works under the same policy.
    expect(page.locator("#connection")).to_have_attribute("data-state", "idle")
    expect(page.locator("#model option")).not_to_have_count(0)


# --- a form posted from another origin ------------------------------------------------------------------------------


class Attacker:
    """A page on another origin whose form posts itself to the gateway as soon as it loads."""

    def __init__(self, target: str) -> None:
        html = (
            "<!doctype html><title>Win a prize</title>"
            f'<form method="post" action="{target}">'
            '<input name="title" value="pwned"><input name="csrf_token" value="guessed"></form>'
            "<script>document.forms[0].submit()</script>"
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(html)))
                self.end_headers()
                self.wfile.write(html)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def attacker(gateway: Gateway) -> Iterator[Callable[[str], Attacker]]:
    started: list[Attacker] = []

    def start(path: str) -> Attacker:
        started.append(Attacker(gateway.url + path))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.mark.parametrize(
    ("host", "refused_with", "cookie_sent"),
    [
        # localhost vs 127.0.0.1: another site. SameSite=Lax keeps the cookie home, so there is no session.
        ("localhost", 401, False),
        # 127.0.0.1 on another port: same site, other origin. The cookie goes along; Sec-Fetch-Site stops it.
        ("127.0.0.1", 403, True),
    ],
)
def test_a_form_on_another_origin_cannot_act_for_the_user(
    context: BrowserContext,
    gateway: Gateway,
    key: str,
    attacker: Callable[[str], Attacker],
    host: str,
    refused_with: int,
    cookie_sent: bool,
) -> None:
    page = context.new_page()
    log_in(page, gateway)
    before = conversations(gateway, key)
    target = gateway.url + "/api/conversations"
    evil = attacker("/api/conversations")
    with page.expect_response(lambda r: r.url == target and r.request.method == "POST") as posted:
        page.goto(f"http://{host}:{evil.port}/")
    response = posted.value
    headers = response.request.all_headers()
    assert headers["sec-fetch-site"] == ("same-site" if cookie_sent else "cross-site")
    assert ("cookie" in headers) is cookie_sent, headers
    assert response.status == refused_with, response.text()
    assert conversations(gateway, key) == before  # nothing was created
    assert "pwned" not in json.dumps(before)

    # A forged logout does not log the user out either.
    evil_logout = attacker("/logout")
    with page.expect_response(lambda r: r.url == gateway.url + "/logout") as posted:
        page.goto(f"http://{host}:{evil_logout.port}/")
    assert posted.value.status == (403 if cookie_sent else 302)  # no session: sent to the login page
    page.goto(gateway.url + "/")
    assert where(page)[0] == "/"
    expect(page.locator(".account .user")).to_have_text(USER)
