"""The upstream client and the non-streaming views, with Ollama mocked by ``responses``."""

from __future__ import annotations

import json

import pytest
import requests
import responses
from flask.testing import FlaskClient

from clawweb.config import Settings
from clawweb.errors import ApiError
from clawweb.upstream.client import OllamaClient
from clawweb.upstream.errors import OllamaTimeout, OllamaUnreachable
from clawweb.upstream.wire import model_key

from .conftest import OLLAMA

TAGS = {"models": [{"name": "qwen3:32b", "model": "qwen3:32b"}, {"name": "llama3:latest", "model": "llama3:latest"}]}
CHAT = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}


def make_client(**overrides: object) -> OllamaClient:
    return OllamaClient(Settings(ollama_url=OLLAMA, **overrides))  # type: ignore[arg-type]


def test_model_key() -> None:
    assert model_key("qwen3") == "qwen3:latest"
    assert model_key("qwen3:32b") == "qwen3:32b"
    assert model_key("registry:5000/ns/model") == "registry:5000/ns/model:latest"


@responses.activate
def test_models_are_cached_for_the_ttl() -> None:
    tags = responses.get(f"{OLLAMA}/api/tags", json=TAGS)
    client = make_client(tags_ttl_s=60)
    client.require_model("qwen3:32b")
    client.require_model("llama3")  # :latest implied
    with pytest.raises(ApiError) as info:
        client.require_model("mistral")
    assert (info.value.status, info.value.message) == (404, "model 'mistral' not found")
    assert tags.call_count == 1


@responses.activate
def test_upstream_request_carries_only_the_gateway_headers() -> None:
    chat = responses.post(f"{OLLAMA}/api/chat", json={"done": True})
    make_client().request("POST", "/api/chat", CHAT)
    sent = chat.calls[0].request
    assert json.loads(sent.body) == CHAT
    assert sent.headers["User-Agent"].startswith("clawweb/")
    assert "Origin" not in sent.headers and "Referer" not in sent.headers


@responses.activate
def test_refused_connection_names_the_url() -> None:
    responses.get(f"{OLLAMA}/api/tags", body=requests.ConnectionError("[Errno 111] Connection refused"))
    with pytest.raises(OllamaUnreachable) as info:
        make_client().models()
    assert info.value.status == 502
    assert info.value.message == f"cannot reach Ollama at {OLLAMA}: Connection refused"


@responses.activate
def test_read_timeout_is_a_504() -> None:
    responses.post(f"{OLLAMA}/api/chat", body=requests.ReadTimeout())
    with pytest.raises(OllamaTimeout) as info:
        make_client(read_timeout_s=7).request("POST", "/api/chat", CHAT)
    assert (info.value.status, info.value.message) == (504, "Ollama sent nothing for 7 s")


@responses.activate
def test_tags_error_status_is_a_502() -> None:
    responses.get(f"{OLLAMA}/api/tags", status=500, json={"error": "boom"})
    with pytest.raises(ApiError) as info:
        make_client().models()
    assert info.value.status == 502


@responses.activate
def test_adapter_pool_is_sized_from_settings() -> None:
    client = make_client(max_active=123)
    adapter = client.session.get_adapter(OLLAMA)
    assert adapter._pool_maxsize == 131  # type: ignore[attr-defined]


# --- views, upstream mocked ----------------------------------------------------------------------------------


@responses.activate
@pytest.mark.parametrize("path", ["/api/tags", "/api/ps", "/api/version"])
def test_pass_through_routes(client: FlaskClient, path: str) -> None:
    responses.get(f"{OLLAMA}{path}", json={"path": path}, status=200)
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == {"path": path}


@responses.activate
def test_model_management_is_not_exposed(client: FlaskClient) -> None:
    for path in ("/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/push"):
        assert client.post(path, json={}).status_code in (404, 405)
    assert len(responses.calls) == 0


@responses.activate
def test_unknown_model_is_404_before_anything_is_sent(client: FlaskClient) -> None:
    responses.get(f"{OLLAMA}/api/tags", json=TAGS)
    response = client.post("/api/chat", json={**CHAT, "model": "nope:1b"})
    assert response.status_code == 404
    assert response.get_json() == {"error": "model 'nope:1b' not found"}
    assert [c.request.url for c in responses.calls] == [f"{OLLAMA}/api/tags"]


@responses.activate
def test_non_streaming_passes_status_and_body_through(client: FlaskClient) -> None:
    responses.get(f"{OLLAMA}/api/tags", json=TAGS)
    responses.post(f"{OLLAMA}/api/chat", status=500, json={"error": "llama runner process has terminated"})
    response = client.post("/api/chat", json={**CHAT, "stream": False})
    assert response.status_code == 500
    assert response.get_json() == {"error": "llama runner process has terminated"}


@responses.activate
def test_non_streaming_answer(client: FlaskClient) -> None:
    responses.get(f"{OLLAMA}/api/tags", json=TAGS)
    answer = {"model": "qwen3:32b", "message": {"role": "assistant", "content": "hello"}, "done": True}
    chat = responses.post(f"{OLLAMA}/api/chat", json=answer)
    response = client.post("/api/chat", data=json.dumps({**CHAT, "stream": False}), content_type="text/plain")
    assert response.status_code == 200
    assert response.get_json() == answer
    assert json.loads(chat.calls[0].request.body)["stream"] is False


@responses.activate
def test_html_client_gets_html_errors_off_the_api(client: FlaskClient) -> None:
    response = client.get("/no/such/page", headers={"Accept": "text/html"})
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    api = client.get("/api/nothing", headers={"Accept": "text/html"})
    assert api.status_code == 404
    assert "error" in api.get_json()
