"""Ollama's other routes through the gateway (real gunicorn, the simulator): ``/api/generate`` in its three shapes,
load requests, ``/api/embed`` and ``/api/embeddings`` with their own slots, ``/api/show``, and ``HEAD``/``GET /``."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import requests

from clawweb.simulator import answer_tokens

from .support.factories import StartGateway, StartSimulator
from .support.servers import Gateway, wait_for
from .support.simproc import SimProcess, chat, sim_line
from .support.sseclient import events

EMBED_MODEL = "nomic-embed-text:latest"
CODER = "qwen2.5-coder:7b"  # a model with Ollama's "insert" capability: it takes a suffix
SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator(
        "--ttft", "0.05", "--tps", "100", "--tokens", "8", "--model", "qwen3:32b", "--model", CODER
    )


@pytest.fixture(scope="module")
def gateway(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(
        sim.url, auth="required", heartbeat_s=0.3, max_active=1, max_embed_inputs=3, max_active_embed=2
    )


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return gateway.new_user("alice")


@pytest.fixture(scope="module")
def admin_key(gateway: Gateway, key: str) -> str:
    return gateway.cli("keys", "create", "alice", "--admin").split()[-1]


@pytest.fixture(autouse=True)
def fresh_counters(sim: SimProcess) -> None:
    sim.reset()


def post(gateway: Gateway, path: str, body: dict[str, Any], key: str, **headers: str) -> requests.Response:
    return requests.post(
        gateway.url + path, json=body, headers={"Authorization": f"Bearer {key}", **headers}, timeout=20
    )


def lines(response: requests.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line]


# --- /api/generate -------------------------------------------------------------------------------------------


def test_generate_streams_ndjson_as_ollama_does(gateway: Gateway, sim: SimProcess, key: str) -> None:
    body = {"model": "qwen3:32b", "prompt": "Say hello" + sim_line(tokens=5), "system": "Be brief", "raw": False}
    response = post(gateway, "/api/generate", body, key)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/x-ndjson"
    got = lines(response)
    assert "".join(line["response"] for line in got) == "".join(answer_tokens(5))
    assert got[-1]["done"] is True and got[-1]["done_reason"] == "stop" and isinstance(got[-1]["context"], list)
    sent = sim.stats()["last_request"]
    assert sent["prompt"] == body["prompt"] and sent["system"] == "Be brief" and sent["raw"] is False


def test_generate_whole_and_as_sse(gateway: Gateway, key: str) -> None:
    whole = post(gateway, "/api/generate", {"prompt": "hi" + sim_line(tokens=4), "stream": False}, key)
    assert whole.status_code == 200 and whole.json()["response"] == "".join(answer_tokens(4))
    assert whole.json()["done"] is True
    with requests.post(
        gateway.url + "/api/generate",
        json={"prompt": "hi" + sim_line(tokens=3)},
        headers={"Authorization": f"Bearer {key}", **SSE},
        stream=True,
        timeout=20,
    ) as streamed:
        received = list(events(streamed))
    frames = [json.loads(e.data) for e in received if e.is_line]
    assert "".join(frame["response"] for frame in frames) == "".join(answer_tokens(3))
    stages = [json.loads(e.data)["stage"] for e in received if e.event == "status"]
    assert stages and stages[-1] == "writing"


def test_generate_forwards_the_suffix_and_only_canonical_fields(gateway: Gateway, sim: SimProcess, key: str) -> None:
    body = {
        "model": CODER,
        "prompt": "def add(a, b):\n",
        "suffix": "\n    return c\n",
        "options": {"temperature": 0},
        "x": 1,
    }
    response = post(gateway, "/api/generate", {**body, "stream": False}, key)
    assert response.status_code == 200, response.text
    sent = sim.stats()["last_request"]
    assert sent["suffix"] == body["suffix"] and sent["options"] == {"temperature": 0} and "x" not in sent
    assert "keep_alive" not in sent
    refused_by_ollama = post(gateway, "/api/generate", {**body, "model": "qwen3:32b", "stream": False}, key)
    assert refused_by_ollama.status_code == 400 and "insert" in refused_by_ollama.json()["error"]  # as it says
    wrongs: list[tuple[dict[str, Any], str]] = [
        ({"Prompt": "hi"}, "Prompt"),
        ({"prompt": 3}, "prompt"),
        ({"suffix": ["a"]}, "suffix"),
    ]
    for wrong, field in wrongs:
        refused = post(gateway, "/api/generate", wrong, key)
        assert refused.status_code == 400 and field in refused.json()["error"], refused.text


def test_generates_texts_count_together_against_max_chars(limited: Gateway, sim: SimProcess) -> None:
    fits = {"model": CODER, "prompt": "a" * 50, "suffix": "b" * 50, "stream": False}
    assert requests.post(limited.url + "/api/generate", json=fits, timeout=10).status_code == 200
    over = {**fits, "system": "c"}  # 101 characters in all, each text under the limit alone
    refused = requests.post(limited.url + "/api/generate", json=over, timeout=10)
    assert refused.status_code == 413 and "CLAWWEB_MAX_CHARS" in refused.json()["error"]


def test_a_load_request_needs_an_admin_key(gateway: Gateway, sim: SimProcess, key: str, admin_key: str) -> None:
    unload = {"model": "qwen3:32b", "prompt": "", "keep_alive": 0}
    refused = post(gateway, "/api/generate", unload, key)
    assert refused.status_code == 403 and "admin" in refused.json()["error"]
    assert sim.stats()["requests"] == 0  # nothing reached Ollama
    done = post(gateway, "/api/generate", {**unload, "stream": False}, admin_key)
    assert done.status_code == 200 and done.json()["done_reason"] == "unload", done.text
    assert sim.stats()["last_request"]["keep_alive"] == 0  # an admin's keep_alive is sent
    loaded = post(gateway, "/api/generate", {"model": "qwen3:32b", "stream": False}, key)  # no keep_alive: a plain load
    assert loaded.status_code == 200 and loaded.json()["done_reason"] == "load"
    assert "admin" in gateway.cli("keys", "list")


# --- embeddings ----------------------------------------------------------------------------------------------


def test_embed_one_and_several_inputs(gateway: Gateway, sim: SimProcess, key: str) -> None:
    one = post(gateway, "/api/embed", {"model": EMBED_MODEL, "input": "hello"}, key)
    assert one.status_code == 200, one.text
    assert len(one.json()["embeddings"]) == 1 and len(one.json()["embeddings"][0]) == 768
    several = post(gateway, "/api/embed", {"model": EMBED_MODEL, "input": ["hello", "world", "x"]}, key)
    vectors = several.json()["embeddings"]
    assert len(vectors) == 3 and vectors[0] == one.json()["embeddings"][0]  # deterministic
    old = post(gateway, "/api/embeddings", {"model": EMBED_MODEL, "prompt": "hello"}, key)
    assert old.status_code == 200 and len(old.json()["embedding"]) == 768
    assert sim.stats()["embeds"] == 3


def test_embed_inputs_are_counted_and_capped(gateway: Gateway, sim: SimProcess, key: str) -> None:
    too_many = post(gateway, "/api/embed", {"model": EMBED_MODEL, "input": ["a", "b", "c", "d"]}, key)
    assert too_many.status_code == 400 and "CLAWWEB_MAX_EMBED_INPUTS" in too_many.json()["error"]
    for wrong in ({"model": EMBED_MODEL}, {"model": EMBED_MODEL, "input": [1]}, {"model": EMBED_MODEL, "Input": "a"}):
        refused = post(gateway, "/api/embed", wrong, key)
        assert refused.status_code == 400 and "input" in refused.json()["error"].lower(), refused.text
    assert sim.stats()["embeds"] == 0


def test_embeddings_do_not_wait_behind_answers(gateway: Gateway, sim: SimProcess, key: str) -> None:
    """The one answer slot is taken by a long answer and another waits for it: embeddings go through at once."""
    slow = chat({"tokens": 400, "tps": 40})
    stop = threading.Event()

    def answer() -> None:
        with requests.post(
            gateway.url + "/api/chat", json=slow, headers={"Authorization": f"Bearer {key}"}, stream=True, timeout=30
        ) as response:
            for _ in response.iter_lines():
                if stop.is_set():
                    return

    answering = [threading.Thread(target=answer) for _ in range(2)]
    for thread in answering:
        thread.start()
    try:
        wait_for(lambda: queue(gateway, key) == (1, 1))
        embedded = [post(gateway, "/api/embed", {"model": EMBED_MODEL, "input": "q"}, key) for _ in range(3)]
        assert [r.status_code for r in embedded] == [200, 200, 200]
        assert queue(gateway, key) == (1, 1)  # the answers still held and waited for their slot meanwhile
    finally:
        stop.set()
        for thread in answering:
            thread.join(timeout=30)


def queue(gateway: Gateway, key: str) -> tuple[int, int]:
    now = requests.get(gateway.url + "/api/queue", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()
    return now["active"], now["waiting"]


def test_a_chat_model_asked_to_embed_is_ollamas_answer(gateway: Gateway, key: str) -> None:
    """Ollama's own status and message come back as they are (the gateway does not guess capabilities)."""
    response = post(gateway, "/api/embed", {"model": "qwen3:32b", "input": "hello"}, key)
    assert response.status_code != 200 and response.json()["error"]


# --- show, probes, refusals ----------------------------------------------------------------------------------


def test_show_reads_a_models_details(gateway: Gateway, key: str) -> None:
    shown = post(gateway, "/api/show", {"model": "qwen3:32b"}, key)
    assert shown.status_code == 200, shown.text
    assert "completion" in shown.json()["capabilities"] and shown.json()["model_info"]
    by_old_name = post(gateway, "/api/show", {"name": "qwen3:32b"}, key)
    assert by_old_name.status_code == 200 and by_old_name.json() == shown.json()
    missing = post(gateway, "/api/show", {"model": "nope:1b"}, key)
    assert missing.status_code == 404 and "nope:1b" in missing.json()["error"]
    assert post(gateway, "/api/show", {}, key).status_code == 400


def test_probes_answer_as_ollama_does(gateway: Gateway) -> None:
    for method in ("GET", "HEAD"):
        probe = requests.request(method, gateway.url + "/", timeout=5)
        assert probe.status_code == 200 and probe.headers["Content-Type"].startswith("text/plain")
    assert requests.get(gateway.url + "/", timeout=5).text == "Ollama is running"
    assert "Accept" in requests.get(gateway.url + "/", timeout=5).headers["Vary"]
    shouted = requests.get(gateway.url + "/", headers={"Accept": "TEXT/HTML"}, allow_redirects=False, timeout=5)
    assert shouted.status_code == 302  # media types ignore case: a browser all the same
    page = requests.get(gateway.url + "/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=5)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login")  # a browser: the page


def test_every_new_route_needs_a_key(gateway: Gateway, sim: SimProcess) -> None:
    for path in ("/api/generate", "/api/embed", "/api/embeddings", "/api/show"):
        response = requests.post(gateway.url + path, json={"model": "qwen3:32b", "prompt": "x"}, timeout=5)
        assert response.status_code == 401 and response.json()["error"], path
    assert sim.stats()["requests"] == 0


@pytest.fixture(scope="module")
def limited(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, max_chars=100, embed_rate_per_minute=3)


def test_embeddings_and_show_share_a_rate_of_their_own(limited: Gateway, sim: SimProcess) -> None:
    embed = {"model": EMBED_MODEL, "input": "x"}
    for path, body in [
        ("/api/embed", embed),
        ("/api/show", {"model": "qwen3:32b"}),
        ("/api/embeddings", {**embed, "prompt": "x"}),
    ]:
        assert requests.post(limited.url + path, json=body, timeout=10).status_code == 200, path
    refused = requests.post(limited.url + "/api/show", json={"model": "qwen3:32b"}, timeout=10)
    assert refused.status_code == 429 and "CLAWWEB_EMBED_RATE_PER_MINUTE" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) > 0
    answer = {"model": "qwen3:32b", "prompt": "hi", "stream": False}
    assert requests.post(limited.url + "/api/generate", json=answer, timeout=10).status_code == 200  # not answers'''s


@pytest.fixture(scope="module")
def allow_listed(sim: SimProcess, start_module_gateway: StartGateway) -> Gateway:
    return start_module_gateway(sim.url, models="qwen3:32b", default_model="qwen3:32b")


def test_the_allow_list_holds_on_every_route(allow_listed: Gateway, sim: SimProcess) -> None:
    for path, body in [
        ("/api/generate", {"model": EMBED_MODEL, "prompt": "x"}),
        ("/api/embed", {"model": EMBED_MODEL, "input": "x"}),
        ("/api/embeddings", {"model": EMBED_MODEL, "prompt": "x"}),
        ("/api/show", {"model": EMBED_MODEL}),
    ]:
        response = requests.post(allow_listed.url + path, json=body, timeout=5)
        assert response.status_code == 403 and "CLAWWEB_MODELS" in response.json()["error"], path
    assert sim.stats()["requests"] == 0 and sim.stats()["embeds"] == 0


def test_the_pages_model_picker_leaves_out_embedding_models(gateway: Gateway, sim: SimProcess, key: str) -> None:
    listed = requests.get(gateway.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()
    assert EMBED_MODEL in [m["name"] for m in listed["models"]]  # Ollama lists it with the others
    picker = requests.get(gateway.url + "/api/chat-models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert picker.status_code == 200 and picker.json()["models"] == ["qwen3:32b", CODER]
    asked = sim.stats()["shows"]
    requests.get(gateway.url + "/api/chat-models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert sim.stats()["shows"] == asked  # each model's capabilities are asked once (per digest), not per page
