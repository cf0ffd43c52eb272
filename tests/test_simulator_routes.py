"""The simulator's generate, embed, show and tool calls follow Ollama's docs/api.md and api/types.go: checked on the
raw bytes and through the official ``ollama`` client pointed straight at it (so the simulator matches the client,
whatever the gateway does)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import ollama
import pytest
import requests

from clawweb.simulator import FIM_TEXT, JSON_TEXT, answer_tokens, default_tokens, thinking_tokens
from clawweb.simulator_models import go_float32, go_float64, normalize, schema_instance

from .support.factories import StartSimulator
from .support.simproc import SimProcess, sim_line

CODER = "qwen2.5-coder:7b"
EMBED = "nomic-embed-text"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def sim(start_module_simulator: StartSimulator) -> SimProcess:
    return start_module_simulator("--ttft", "0.01", "--tps", "500", "--model", "qwen3:32b", "--model", CODER)


@pytest.fixture
def client(sim: SimProcess) -> Iterator[ollama.Client]:
    """The official client pointed straight at the simulator."""
    with ollama.Client(host=sim.url) as direct:
        yield direct


def post(sim: SimProcess, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(sim.url + path, json=body, timeout=10)


def ndjson(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.iter_lines()]


def norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


# --- generate --------------------------------------------------------------------------------------------------------


def test_generate_lines_in_go_field_order_with_context(sim: SimProcess) -> None:
    response = post(
        sim, "/api/generate", {"model": "qwen3:32b", "prompt": "a <b>" + sim_line(tokens=3, think_tokens=2)}
    )
    raw = list(response.iter_lines())
    parsed = [json.loads(line) for line in raw]
    assert [list(p) for p in parsed[:2]] == [["model", "created_at", "response", "thinking", "done"]] * 2
    assert [list(p) for p in parsed[2:5]] == [["model", "created_at", "response", "done"]] * 3
    assert "".join(p.get("thinking", "") for p in parsed) == "".join(thinking_tokens(2))
    assert "".join(p["response"] for p in parsed) == "".join(answer_tokens(3))
    final = parsed[-1]
    assert list(final) == [
        "model", "created_at", "response", "done", "done_reason", "context", "total_duration", "load_duration",
        "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration",
    ]  # fmt: skip
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert all(isinstance(n, int) for n in final["context"]) and len(final["context"]) > 3
    # A context sent back comes first in the next one (Ollama detokenizes it into the prompt).
    again = post(sim, "/api/generate", {"model": "qwen3:32b", "prompt": "more", "context": final["context"]})
    assert ndjson(again)[-1]["context"][: len(final["context"])] == final["context"]
    # raw mode: the prompt as given, and no context (docs/api.md).
    raw_final = ndjson(post(sim, "/api/generate", {"model": "qwen3:32b", "prompt": "[INST] x [/INST]", "raw": True}))
    assert "context" not in raw_final[-1] and raw_final[-1]["done"] is True


def test_generate_stream_false_is_one_object_with_top_level_thinking(sim: SimProcess) -> None:
    body = {"model": "qwen3:32b", "prompt": "x" + sim_line(tokens=4, think_tokens=3), "stream": False, "think": True}
    answer = post(sim, "/api/generate", body).json()
    assert list(answer)[:7] == ["model", "created_at", "response", "thinking", "done", "done_reason", "context"]
    assert answer["response"] == "".join(answer_tokens(4)) and answer["thinking"] == "".join(thinking_tokens(3))
    no_think = post(sim, "/api/generate", {**body, "think": False, "system": "Be brief.", "images": ["aGk="]}).json()
    assert "thinking" not in no_think and no_think["eval_count"] == 4


def test_format_answers_json_a_schema_accepts(sim: SimProcess) -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}},
        "required": ["age"],
    }
    answer = post(sim, "/api/generate", {"model": "qwen3:32b", "prompt": "x", "format": schema, "stream": False})
    assert json.loads(answer.json()["response"]) == {"age": 42, "tags": ["a"]} == schema_instance(schema)
    chat = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "x"}], "format": "json", "think": False}
    assert json.loads("".join(p["message"]["content"] for p in ndjson(post(sim, "/api/chat", chat)))) == {
        "answer": JSON_TEXT
    }


def test_suffix_fills_the_middle_through_the_official_client(sim: SimProcess, client: ollama.Client) -> None:
    answer = client.generate(
        model=CODER, prompt="def add(a, b):", suffix="    return result", options={"temperature": 0}
    )
    assert answer.response == FIM_TEXT and answer.done and answer.done_reason == "stop" and answer.context
    streamed = "".join(
        part.response or "" for part in client.generate(model=CODER, prompt="x", suffix="y", stream=True)
    )
    assert streamed == FIM_TEXT
    # qwen3 has no "insert" capability: real Ollama refuses, quoting the model's full name.
    with pytest.raises(ollama.ResponseError) as refused:
        client.generate(model="qwen3:32b", prompt="def add(a, b):", suffix="    return result")
    assert refused.value.status_code == 400
    assert refused.value.error == "registry.ollama.ai/library/qwen3:32b does not support insert"


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/api/generate", {"model": "qwen3:32b", "prompt": "x", "raw": True, "system": "s"},
         "raw mode does not support template, system, or context"),
        ("/api/generate", {"model": CODER, "prompt": "x", "think": True}, f'"{CODER}" does not support thinking'),
        ("/api/generate", {"model": EMBED, "prompt": "x"}, f'"{EMBED}" does not support generate'),
        ("/api/generate", {"model": EMBED, "keep_alive": -1}, f'"{EMBED}" does not support generate'),
        ("/api/chat", {"model": EMBED, "messages": [{"role": "user", "content": "x"}]},
         f'"{EMBED}" does not support chat'),
    ],
)  # fmt: skip
def test_capability_errors_are_ollamas(sim: SimProcess, path: str, body: dict[str, Any], error: str) -> None:
    response = post(sim, path, body)
    assert (response.status_code, response.json()) == (400, {"error": error})


def test_keep_alive_zero_unloads_any_model(sim: SimProcess) -> None:
    def loaded() -> list[str]:
        return [m["name"] for m in requests.get(sim.url + "/api/ps", timeout=5).json()["models"]]

    post(sim, "/api/embed", {"model": EMBED, "input": "x"})
    assert "nomic-embed-text:latest" in loaded()
    unload = post(sim, "/api/generate", {"model": EMBED, "keep_alive": 0}).json()  # before any capability check
    assert unload["done_reason"] == "unload" and unload["response"] == ""
    assert "nomic-embed-text:latest" not in loaded()
    ndjson(post(sim, "/api/generate", {"model": "qwen3:32b", "prompt": "x", "keep_alive": 0}))
    assert "qwen3:32b" not in loaded()  # gone once it had answered


# --- embeddings ------------------------------------------------------------------------------------------------------


def test_embed_is_deterministic_normalized_of_the_declared_dimension(sim: SimProcess, client: ollama.Client) -> None:
    answer = client.embed(model=EMBED, input=["Why is the sky blue?", "Why is the grass green?"])
    first, second = answer.embeddings
    assert len(first) == len(second) == 768 and first != second
    assert abs(norm(first) - 1) < 1e-5 and abs(norm(second) - 1) < 1e-5
    assert client.embed(model=EMBED, input="Why is the sky blue?").embeddings == [first]  # a string, the same vector
    assert answer.model == EMBED and answer.prompt_eval_count == 14  # each text's tokens and its BOS and EOS
    assert answer.total_duration and answer.load_duration
    raw = post(sim, "/api/embed", {"model": EMBED, "input": "x"}).json()
    assert list(raw) == ["model", "embeddings", "total_duration", "load_duration", "prompt_eval_count"]
    # "dimensions" cuts and normalizes again, as server/routes.go does; more than the model has changes nothing.
    cut = client.embed(model=EMBED, input="Why is the sky blue?", dimensions=256).embeddings[0]
    assert len(cut) == 256 and abs(norm(cut) - 1) < 1e-5
    assert cut == pytest.approx(normalize(first[:256]), abs=1e-6)
    assert client.embed(model=EMBED, input="Why is the sky blue?", dimensions=4096).embeddings == [first]


def test_embed_inputs_empty_invalid_and_too_long(sim: SimProcess) -> None:
    assert post(sim, "/api/embed", {"model": EMBED, "input": []}).json() == {"model": EMBED, "embeddings": []}
    assert post(sim, "/api/embed", {"model": EMBED}).json() == {"model": EMBED, "embeddings": []}  # loads it
    for bad in ([1, "x"], 3, {"x": 1}):
        refused = post(sim, "/api/embed", {"model": EMBED, "input": bad})
        assert (refused.status_code, refused.json()) == (400, {"error": "invalid input type"})
    long_text = " ".join(["word"] * 20)
    small = {"model": EMBED, "input": long_text, "options": {"num_ctx": 10}}
    refused = post(sim, "/api/embed", {**small, "truncate": False})
    assert (refused.status_code, refused.json()) == (400, {"error": "the input length exceeds the context length"})
    truncated = post(sim, "/api/embed", small).json()  # truncate defaults to true: the first 8 tokens (10 - BOS, EOS)
    prefix = post(sim, "/api/embed", {"model": EMBED, "input": " ".join(["word"] * 8)}).json()
    assert truncated["embeddings"] == prefix["embeddings"] and truncated["prompt_eval_count"] == 10


def test_floats_are_written_as_go_writes_them() -> None:
    assert go_float32(0.010071029) == "0.010071029" and go_float32(-0.0017594862) == "-0.0017594862"
    assert go_float32(1e-7) == "1e-7" and go_float32(0.5) == "0.5" and go_float32(0.0) == "0"
    assert go_float64(0.5670403838157654) == "0.5670403838157654" and go_float64(3e-7) == "3e-7"
    assert go_float64(1e21) == "1e+21" and go_float64(-0.000001) == "-0.000001" and go_float64(2.0) == "2"


def test_older_embeddings_route_is_raw_not_normalized(sim: SimProcess, client: ollama.Client) -> None:
    old = client.embeddings(model=EMBED, prompt="Here is an article about llamas...").embedding
    new = client.embed(model=EMBED, input="Here is an article about llamas...").embeddings[0]
    assert len(old) == 768 and norm(old) > 2  # like docs/api.md's example, not unit length
    assert normalize(list(old)) == pytest.approx(new, abs=1e-6)  # the same direction
    assert post(sim, "/api/embeddings", {"model": EMBED}).json() == {"embedding": []}


@pytest.mark.parametrize("path", ["/api/embed", "/api/embeddings"])
def test_embedding_with_a_chat_model_or_an_unknown_one(sim: SimProcess, path: str) -> None:
    body = {"model": "qwen3:32b", "input": "x", "prompt": "x"}
    refused = post(sim, path, body)  # Ollama 0.12: the chat model's runner has no embeddings
    assert (refused.status_code, refused.json()) == (500, {"error": "this model does not support embeddings"})
    unknown = post(sim, path, {**body, "model": "bge-m3"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "model 'bge-m3' not found"})


def test_embedding_models_are_listed_and_configurable(
    sim: SimProcess, client: ollama.Client, start_simulator: StartSimulator
) -> None:
    tags = requests.get(sim.url + "/api/tags", timeout=5).json()["models"]
    assert [m["name"] for m in tags] == ["qwen3:32b", CODER, "nomic-embed-text:latest"]
    assert tags[2]["details"] == {
        "parent_model": "", "format": "gguf", "family": "nomic-bert", "families": ["nomic-bert"],
        "parameter_size": "137M", "quantization_level": "F16",
    }  # fmt: skip
    assert client.list().models[2].model == "nomic-embed-text:latest"
    other = start_simulator("--embed-model", "mxbai-embed-large=1024", "--embed-model", "all-minilm:l6=384")
    names = [m["name"] for m in requests.get(other.url + "/api/tags", timeout=5).json()["models"]]
    assert names == ["qwen3:32b", "mxbai-embed-large:latest", "all-minilm:l6"]
    with ollama.Client(host=other.url) as other_client:
        vectors = other_client.embed(model="all-minilm:l6", input=["a", "b"]).embeddings
        assert [len(v) for v in vectors] == [384, 384]
        assert other_client.show("mxbai-embed-large").modelinfo["bert.embedding_length"] == 1024
    bare = start_simulator("--embed-model", "none")
    assert [m["name"] for m in requests.get(bare.url + "/api/tags", timeout=5).json()["models"]] == ["qwen3:32b"]


def until(check: Any, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_embeddings_have_their_own_slots_and_are_counted(start_simulator: StartSimulator) -> None:
    slow = start_simulator(
        "--ttft", "0", "--tps", "20", "--parallel", "1", "--embed-parallel", "1", "--embed-delay", "0.4"
    )
    answer = requests.post(slow.url + "/api/chat", json={
        "model": "qwen3:32b", "think": False, "messages": [{"role": "user", "content": "x" + sim_line(tokens=200)}],
    }, stream=True, timeout=30)  # fmt: skip
    until(lambda: slow.stats()["active"] == 1)
    results: list[requests.Response] = []
    embed = {"model": EMBED, "input": ["one", "two", "three"]}
    threads = [
        threading.Thread(target=lambda: results.append(requests.post(slow.url + "/api/embed", json=embed, timeout=10)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    until(lambda: slow.stats()["queued_embeds"] == 1)
    assert slow.stats()["active_embeds"] == 1  # the second waits for the embedding model's one slot...
    for thread in threads:
        thread.join()
    stats = slow.stats()
    assert stats["active"] == 1  # ...while the chat answer still streams: neither waited for the other
    assert [r.status_code for r in results] == [200, 200]
    assert (stats["embeds"], stats["embed_inputs"], stats["max_active_embeds"]) == (2, 6, 1)
    assert stats["requests"] == 1 and stats["last_request"] == embed
    answer.close()
    # A "#sim" line in an input slows that one request down, or fails it.
    failed = requests.post(slow.url + "/api/embed", json={"model": EMBED, "input": "x" + sim_line(status=503)})
    assert (failed.status_code, failed.json()) == (503, {"error": "simulated error"})


# --- show ------------------------------------------------------------------------------------------------------------


def test_show_parses_with_the_official_client(sim: SimProcess, client: ollama.Client) -> None:
    shown = client.show("qwen3:32b")
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.details is not None and shown.details.family == "qwen3" and shown.details.families == ["qwen3"]
    assert shown.details.parameter_size == "32.8B" and shown.details.quantization_level == "Q4_K_M"
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "qwen3"
    assert shown.modelinfo["qwen3.context_length"] == 40960 and shown.modelinfo["qwen3.embedding_length"] == 5120
    assert shown.modelinfo["general.parameter_count"] == 32_762_123_264
    assert shown.template and ".Tools" in shown.template and shown.modified_at is not None
    assert shown.license and shown.modelfile and shown.modelfile.startswith('# Modelfile generated by "ollama show"')
    assert shown.parameters and 'stop                           "<|im_end|>"' in shown.parameters
    embedder = client.show(EMBED)
    assert embedder.capabilities == ["embedding"] and embedder.template is None
    assert embedder.modelinfo is not None and embedder.modelinfo["nomic-bert.embedding_length"] == 768
    assert client.show(CODER).capabilities == ["completion", "tools", "insert"]
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("gpt-9")
    assert (missing.value.status_code, missing.value.error) == (404, "model 'gpt-9' not found")


def test_show_bytes_field_order_and_verbose(sim: SimProcess) -> None:
    response = post(sim, "/api/show", {"model": "qwen3:32b"})
    shown = response.json()
    assert list(shown) == [
        "license", "modelfile", "parameters", "template", "details", "model_info", "capabilities", "modified_at",
    ]  # fmt: skip
    assert list(shown["model_info"]) == sorted(shown["model_info"])  # a Go map: sorted keys
    assert b"\\u003c|im_end|\\u003e" in response.content  # Go's escaping of < and >
    assert shown["model_info"]["tokenizer.ggml.tokens"] == []
    verbose = post(sim, "/api/show", {"model": "qwen3:32b", "verbose": True}).json()
    assert verbose["model_info"]["tokenizer.ggml.tokens"] and verbose["tensors"][0]["name"] == "token_embd.weight"
    assert post(sim, "/api/show", {"name": "qwen3:32b"}).status_code == 200  # the old spelling
    assert post(sim, "/api/show", {}).json() == {"error": "model is required"}


# --- tool calls ------------------------------------------------------------------------------------------------------


def tool_chat(**fields: Any) -> dict[str, Any]:
    calls = [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}, {"name": "get_time"}]
    content = "What is the weather in Paris?" + sim_line(tool_calls=calls)
    return {"model": "qwen3:32b", "messages": [{"role": "user", "content": content}], "tools": [WEATHER], **fields}


def test_tool_calls_streamed_one_chunk_each_then_done(sim: SimProcess) -> None:
    parsed = ndjson(post(sim, "/api/chat", tool_chat(think=False)))
    assert len(parsed) == 3
    first, second, final = parsed
    assert list(first["message"]) == ["role", "content", "tool_calls"] and first["message"]["content"] == ""
    call = first["message"]["tool_calls"][0]
    assert list(call) == ["id", "function"] and call["id"].startswith("call_") and len(call["id"]) == 13
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}
    assert list(call["function"]["arguments"]) == ["city", "unit"]  # the model's order, kept
    assert second["message"]["tool_calls"][0]["function"] == {"index": 1, "name": "get_time", "arguments": {}}
    assert (
        final["done"] is True
        and final["done_reason"] == "stop"
        and final["message"]
        == {
            "role": "assistant",
            "content": "",
        }
    )
    thought = ndjson(post(sim, "/api/chat", tool_chat(think=True)))  # thinking first, then the calls
    assert "".join(p["message"].get("thinking", "") for p in thought) == "".join(thinking_tokens(8))
    assert [len(p["message"].get("tool_calls", [])) for p in thought[-3:]] == [1, 1, 0]


def test_tool_call_whole_and_the_tools_answer_through_the_official_client(
    sim: SimProcess, client: ollama.Client
) -> None:
    body = tool_chat()
    first = client.chat(model="qwen3:32b", messages=body["messages"], tools=body["tools"], think=False)
    calls = first.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "C"}),
        ("get_time", {}),
    ]
    assert first.message.content == "" and first.done_reason == "stop"
    messages = [
        *body["messages"],
        first.message,
        {"role": "tool", "tool_name": "get_weather", "content": "18 °C & sunny"},
        {"role": "tool", "tool_name": "get_time", "content": "noon"},
    ]
    second = client.chat(model="qwen3:32b", messages=messages, tools=body["tools"], think=False)
    assert not second.message.tool_calls  # the loop ends: the model writes
    assert second.message.content == "get_weather answered: 18 °C & sunny get_time answered: noon"
    told = [*messages[:-1]]
    told[0] = {"role": "user", "content": "x" + sim_line(tool_calls=[{"name": "get_weather"}], text="It is sunny.")}
    assert client.chat(model="qwen3:32b", messages=told, tools=body["tools"]).message.content == "It is sunny."


def test_no_tool_calls_without_tools(sim: SimProcess) -> None:
    body = tool_chat(think=False, stream=False)
    del body["tools"]
    message = post(sim, "/api/chat", body).json()["message"]  # Ollama only calls tools it was given
    assert "tool_calls" not in message and message["content"] == "".join(answer_tokens(default_tokens()))
