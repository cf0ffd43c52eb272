"""Logins as an attacker tries them: concurrent guesses, locking the owner out, copied cookies, a racing key
file, open redirects, and the limits across workers through Redis. All against a real gunicorn."""

from __future__ import annotations

import functools
import multiprocessing
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import requests

from clawweb import auth
from clawweb.config import load_settings

from .support.factories import StartGateway, StartRedis, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, chat
from .test_auth import PASSWORD, bearer, form_token, log_in, page_token

ATTEMPTS = 5


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.02", "--tps", "500")


@pytest.fixture
def gateway(sim: SimProcess, start_gateway: StartGateway) -> Gateway:
    """A fresh gateway per test: the login windows start empty."""
    return start_gateway(sim.url, auth="required", login_attempts=ATTEMPTS)


@pytest.fixture(scope="module")
def shared(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    """One gateway for the tests that leave the login windows alone."""
    server = start_module_gateway(sim.url, auth="required")
    server.new_user("redirecter")
    return server


def login_attempt(gateway: Gateway, name: str, password: str, session: requests.Session | None = None) -> int:
    session = session or requests.Session()
    token = form_token(session.get(gateway.url + "/login", timeout=5).text)
    return post_login(gateway, session, token, name, password)


def post_login(gateway: Gateway, session: requests.Session, token: str, name: str, password: str) -> int:
    data = {"name": name, "password": password, "csrf_token": token}
    return session.post(gateway.url + "/login", data=data, allow_redirects=False, timeout=60).status_code


def all_at_once(attempts: list[Callable[[], int]]) -> list[int]:
    """Run every attempt in its own thread, released together; their statuses in order."""
    barrier, statuses = threading.Barrier(len(attempts)), [0] * len(attempts)

    def run(i: int) -> None:
        barrier.wait()
        statuses[i] = attempts[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(attempts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def prepared(gateway: Gateway, guesses: list[tuple[str, str]]) -> list[Callable[[], int]]:
    """One browser per guess, each with its login form's token already fetched, so only the posts race."""
    attempts: list[Callable[[], int]] = []
    for name, password in guesses:
        session = requests.Session()
        token = form_token(session.get(gateway.url + "/login", timeout=5).text)
        attempts.append(functools.partial(post_login, gateway, session, token, name, password))
    return attempts


# --- 1. the throttle counts a guess before checking it -----------------------------------------------------------


def test_concurrent_guesses_for_one_name_verify_at_most_the_limit(gateway: Gateway) -> None:
    gateway.new_user("target")
    wrong = prepared(gateway, [("target", f"wrong guess {i}") for i in range(99)])
    answered: list[int] = []
    (right,) = prepared(gateway, [("target", PASSWORD)])
    late: list[int] = []

    def count(attempt: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:
            status = attempt()
            answered.append(status)
            return status

        return run

    def the_right_one_late() -> int:  # sent while the wrong ones are still arriving, after the first answers
        wait_for(lambda: len(answered) >= ATTEMPTS, 60)
        late.append(right())
        return late[-1]

    statuses = all_at_once([count(attempt) for attempt in wrong] + [the_right_one_late])
    counts = Counter(statuses)
    assert counts[401] <= ATTEMPTS and counts[401] + counts[429] == 100, counts
    assert late == [429]  # refused without being checked
    assert login_attempt(gateway, "target", PASSWORD) == 429  # and the name stays locked for strangers


def test_concurrent_guesses_from_one_address_verify_at_most_its_limit(gateway: Gateway) -> None:
    statuses = all_at_once(prepared(gateway, [(f"name{i}", "wrong guess") for i in range(100)]))
    counts = Counter(statuses)
    assert counts[401] <= ATTEMPTS * 5 and counts[401] + counts[429] == 100, counts


# --- 2. a stranger's guesses do not lock the owner out of a browser they used before ---------------------------


def test_the_owners_known_browser_keeps_its_own_budget(gateway: Gateway) -> None:
    gateway.new_user("owner")
    owner = log_in(gateway, "owner")
    assert "clawweb_device" in owner.cookies
    owner.post(gateway.url + "/logout", data={"csrf_token": page_token(owner, gateway)}, timeout=5)
    for i in range(ATTEMPTS):
        assert login_attempt(gateway, "owner", f"stranger guess {i}") == 401
    assert login_attempt(gateway, "owner", PASSWORD) == 429  # unknown browsers: the name is locked
    assert login_attempt(gateway, "owner", PASSWORD, owner) == 302  # the owner's browser is not
    # The known browser's own budget is as small, and only its own.
    forged = requests.Session()
    forged.cookies.set("clawweb_device", owner.cookies["clawweb_device"][:-3] + "xyz")
    assert login_attempt(gateway, "owner", PASSWORD, forged) == 429  # a forged cookie is an unknown browser


# --- 3. sessions live on the server and end there ------------------------------------------------------------------


def copy_of(session: requests.Session) -> requests.Session:
    thief = requests.Session()
    thief.cookies.set("clawweb", session.cookies["clawweb"])
    return thief


def can_use(session: requests.Session, gateway: Gateway) -> bool:
    status = session.get(gateway.url + "/api/conversations", timeout=5).status_code
    assert status in (200, 401)
    return status == 200


def test_logout_ends_the_session_for_every_copy_of_the_cookie(gateway: Gateway) -> None:
    gateway.new_user("leaver")
    browser = log_in(gateway, "leaver")
    thief = copy_of(browser)
    assert can_use(thief, gateway)
    browser.post(gateway.url + "/logout", data={"csrf_token": page_token(browser, gateway)}, timeout=5)
    assert not can_use(thief, gateway)


def test_password_change_disable_and_admin_revoke_end_sessions_for_good(gateway: Gateway) -> None:
    gateway.new_user("mallory")
    first, second = log_in(gateway, "mallory"), log_in(gateway, "mallory")
    gateway.cli("users", "passwd", "mallory", "--password-stdin", stdin="another long password\n")
    assert not can_use(first, gateway) and not can_use(second, gateway)
    browser = log_in(gateway, "mallory", "another long password")
    gateway.cli("users", "disable", "mallory")
    assert not can_use(browser, gateway)
    gateway.cli("users", "enable", "mallory")
    assert not can_use(browser, gateway)  # re-enabling brings no old session back
    browser = log_in(gateway, "mallory", "another long password")
    listed = gateway.cli("users", "sessions", "mallory")
    assert "127.0.0.1" in listed and "python-requests" in listed
    assert "ended 1 session" in gateway.cli("users", "sessions", "mallory", "--revoke")
    assert not can_use(browser, gateway)


def account_form(session: requests.Session, gateway: Gateway, path: str, **fields: str) -> requests.Response:
    token = form_token(session.get(gateway.url + "/account", timeout=5).text)
    return session.post(gateway.url + path, data={"csrf_token": token, **fields}, allow_redirects=False, timeout=30)


def test_the_account_page_ends_other_sessions_manages_keys_and_changes_the_password(gateway: Gateway) -> None:
    gateway.new_user("nora")
    here, laptop, phone = (log_in(gateway, "nora") for _ in range(3))
    page = here.get(gateway.url + "/account", timeout=5).text
    assert page.count('data-session="') == 3 and "this browser" in page
    # One other session, then all the others.
    phone_id = re.findall(r'data-session="(\d+)"', laptop.get(gateway.url + "/account", timeout=5).text)
    assert account_form(here, gateway, f"/account/sessions/{max(phone_id)}/end").status_code == 303
    assert not can_use(phone, gateway) and can_use(laptop, gateway)
    assert account_form(here, gateway, "/account/sessions/end-others").status_code == 303
    assert not can_use(laptop, gateway) and can_use(here, gateway)
    # A key, shown once, that works until it is revoked on the page.
    created = account_form(here, gateway, "/account/keys", name="my script")
    key = re.search(r'<code id="new-key">(cw_[^<]+)</code>', created.text)
    assert created.status_code == 201 and key
    assert requests.get(gateway.url + "/api/tags", headers=bearer(key.group(1)), timeout=5).status_code == 200
    listed = here.get(gateway.url + "/account", timeout=5).text
    key_id = max(re.findall(r'data-key="(\d+)"', listed), key=int)  # the newest; new_user made one too
    assert key.group(1) not in listed and "my script" in listed
    assert account_form(here, gateway, f"/account/keys/{key_id}/revoke").status_code == 303
    assert requests.get(gateway.url + "/api/tags", headers=bearer(key.group(1)), timeout=5).status_code == 401
    # The password: the current one is checked (and throttled), the other sessions end, this one stays.
    other = log_in(gateway, "nora")
    wrong = account_form(here, gateway, "/account/password", current="not it at all", new="x" * 12, again="x" * 12)
    assert wrong.status_code == 403
    changed = account_form(here, gateway, "/account/password", current=PASSWORD, new="y" * 12, again="y" * 12)
    assert changed.status_code == 200 and "Password changed" in changed.text
    assert can_use(here, gateway) and not can_use(other, gateway)
    assert login_attempt(gateway, "nora", "y" * 12) == 302


def test_someone_elses_session_or_key_cannot_be_ended_from_my_page(gateway: Gateway) -> None:
    victim_key = gateway.new_user("victim")
    gateway.new_user("intruder")
    victim, intruder = log_in(gateway, "victim"), log_in(gateway, "intruder")
    victim_session = re.findall(r'data-session="(\d+)"', victim.get(gateway.url + "/account", timeout=5).text)[0]
    account_form(intruder, gateway, f"/account/sessions/{victim_session}/end")
    key_id = gateway.cli("keys", "list").split("victim")[0].split()[-2]
    account_form(intruder, gateway, f"/account/keys/{key_id}/revoke")
    assert can_use(victim, gateway)
    assert requests.get(gateway.url + "/api/tags", headers=bearer(victim_key), timeout=5).status_code == 200


# --- 4. workers starting together on a new machine agree on one session key ------------------------------------


def _read_key(path: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[str]) -> None:
    barrier.wait()
    results.put(auth._secret_key(load_settings({}, {"secret_key_file": path})))


@pytest.mark.integration  # 240 forked processes
def test_racing_workers_all_read_the_same_whole_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(10):
        path, racers = str(tmp_path / f"round{round_}" / "secret_key"), 24
        barrier, results = context.Barrier(racers), context.Queue()
        processes = [context.Process(target=_read_key, args=(path, barrier, results)) for _ in range(racers)]
        for process in processes:
            process.start()
        keys = {results.get(timeout=30) for _ in processes}
        for process in processes:
            process.join()
        assert len(keys) == 1 and len(keys.pop()) == 64
        assert [p.name for p in (tmp_path / f"round{round_}").iterdir()] == ["secret_key"]  # no temporary left


# --- 5. after the login, only a path on this site ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "location"),
    [
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("\\/evil.example", "/"),
        ("/\\evil.example", "/"),
        (" //evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/c/1\r\nSet-Cookie: a=b", "/c/1Set-Cookie:%20a=b"),
        ("/c/会话?x=1", "/c/%E4%BC%9A%E8%AF%9D?x=1"),
        ("/c/abc", "/c/abc"),
    ],
)
def test_the_login_redirects_only_to_a_path_on_this_site(shared: Gateway, target: str, location: str) -> None:
    gateway = shared
    session = requests.Session()
    token = form_token(session.get(gateway.url + "/login", timeout=5).text)
    data = {"name": "redirecter", "password": PASSWORD, "csrf_token": token, "next": target}
    response = session.post(gateway.url + "/login", data=data, allow_redirects=False, timeout=30)
    assert response.status_code == 302 and response.headers["Location"] == location


# --- 7. open mode ignores keys that are not clawweb's ------------------------------------------------------------


def test_open_mode_takes_the_documented_ollama_api_key(sim: SimProcess, start_gateway: StartGateway) -> None:
    server = start_gateway(sim.url)  # loopback bind, no proxy: open mode
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="ollama")  # as Ollama's docs show it
    answer = client.chat.completions.create(model="qwen3:32b", messages=chat({"tokens": 3})["messages"])
    assert answer.choices[0].message.content
    for header in ("Bearer ollama", "Bearer cw_revoked-or-made-up", "Basic b2xsYW1hOg=="):
        response = requests.post(server.url + "/api/chat", json=chat({"tokens": 2}), headers={"Authorization": header})
        assert response.status_code == 200, (header, response.text)


def test_with_accounts_a_foreign_key_is_still_refused(shared: Gateway) -> None:
    response = requests.get(shared.url + "/api/tags", headers={"Authorization": "Bearer ollama"}, timeout=5)
    assert response.status_code == 401 and response.json()["error"] == "invalid or revoked API key"


# --- 15. the limits hold across workers through Redis ----------------------------------------------------------


@pytest.fixture
def workers(sim: SimProcess, start_redis: StartRedis, start_gateway: StartGateway) -> Gateway:
    redis = start_redis()
    return start_gateway(
        sim.url,
        auth="required",
        workers=3,
        redis_url=redis.url,
        rate_per_minute=10,
        max_active_per_client=100,  # only the rate limits these answers
        login_attempts=ATTEMPTS,
    )


def test_answer_rate_and_login_throttle_hold_across_three_workers(workers: Gateway) -> None:
    key = workers.new_user("busy")
    body = chat({"tokens": 1}, stream=False)
    post = lambda: requests.post(workers.url + "/api/chat", json=body, headers=bearer(key), timeout=30).status_code  # noqa: E731
    answers = Counter(all_at_once([post] * 40))
    assert answers == {200: 10, 429: 30}, answers
    guesses = Counter(all_at_once(prepared(workers, [("busy", f"wrong {i}") for i in range(40)])))
    assert guesses[401] <= ATTEMPTS and guesses[401] + guesses[429] == 40, guesses
