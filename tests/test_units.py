"""Unit tests: configuration, validation and SSE framing (pure functions, exact bytes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from clawweb import create_app
from clawweb.config import ConfigError, Settings, load_settings
from clawweb.relay import sse
from clawweb.relay.upstream_stream import classify
from clawweb.services import services
from clawweb.validation import validate_chat
from clawweb.worker_count import WorkerCountError, worker_count

USER = [{"role": "user", "content": "hi"}]


# --- configuration -------------------------------------------------------------------------------------------


def test_workers_auto_is_one_per_core_with_redis_and_one_without() -> None:
    """CLAWWEB_WORKERS=auto (the deploy kit's unit): every core when the state is shared in Redis, else one; a
    number is taken as it is, and several without Redis are refused with the reason."""
    assert worker_count("auto", "redis://127.0.0.1/0", cores=8) == 8
    assert worker_count("auto", "", cores=8) == 1
    assert worker_count(" 3 ", "redis://127.0.0.1/0", cores=8) == 3
    assert worker_count("1", "", cores=8) == 1
    with pytest.raises(WorkerCountError, match="CLAWWEB_WORKERS=2 needs CLAWWEB_REDIS_URL"):
        worker_count("2", "", cores=8)
    with pytest.raises(WorkerCountError, match="not a number of workers or 'auto'"):
        worker_count("many", "redis://127.0.0.1/0", cores=8)
    with pytest.raises(WorkerCountError, match="at least 1"):
        worker_count("0", "redis://127.0.0.1/0", cores=8)


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.ollama_url == "http://127.0.0.1:11434"
    assert settings.bind == "127.0.0.1:8080"
    assert settings.default_model == "qwen3:32b"
    assert settings.max_body_bytes == 1 << 20


def test_environment_is_parsed_and_overrides_win() -> None:
    env = {"CLAWWEB_OLLAMA_URL": "http://10.0.0.2:11434/", "CLAWWEB_HEARTBEAT_S": "2.5"}
    settings = load_settings(env, {"max_messages": 7})
    assert settings.ollama_url == "http://10.0.0.2:11434"  # trailing slash dropped
    assert settings.heartbeat_s == 2.5
    assert settings.max_messages == 7


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CLAWWEB_OLLAMA_URL", "ftp://host", "CLAWWEB_OLLAMA_URL=ftp://host: must be an http(s) URL"),
        ("CLAWWEB_OLLAMA_URL", "http://h:99999", "has an invalid port"),
        ("CLAWWEB_HEARTBEAT_S", "-1", "CLAWWEB_HEARTBEAT_S=-1: must be a positive number"),
        ("CLAWWEB_HEARTBEAT_S", "soon", "must be a positive number"),
        ("CLAWWEB_MAX_BODY_BYTES", "0", "CLAWWEB_MAX_BODY_BYTES=0: must be a positive integer"),
        ("CLAWWEB_BIND", "8080", "must be HOST:PORT or unix:PATH"),
        ("CLAWWEB_DEFAULT_MODEL", " ", "must not be empty"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({name: value})
    assert expected in str(info.value)
    assert str(info.value).startswith(name)


# --- validation ----------------------------------------------------------------------------------------------

SETTINGS = Settings(max_messages=3, max_chars=20, max_num_ctx=4096)


def test_model_defaults_and_unknown_fields_are_dropped() -> None:
    # Dropped, not passed through: what Ollama ignores today a newer Ollama may read (tests/test_canonical.py).
    body = validate_chat({"messages": USER, "tools": [], "format": "json", "x_custom": 1}, SETTINGS)
    assert body == {"model": "qwen3:32b", "messages": USER, "tools": [], "format": "json"}


def test_keep_alive_is_accepted_but_never_forwarded() -> None:
    # One client's keep_alive 0 would unload the model for every user of the GPU.
    for keep_alive in (0, "0s", -1, "5m"):
        assert "keep_alive" not in validate_chat({"messages": USER, "keep_alive": keep_alive}, SETTINGS)


def test_num_ctx_is_clamped_other_options_kept() -> None:
    body = validate_chat({"messages": USER, "options": {"num_ctx": 10**9, "temperature": 0.2, "seed": 7}}, SETTINGS)
    assert body["options"] == {"num_ctx": 4096, "temperature": 0.2, "seed": 7}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "", "messages": USER}, 400, "'model'"),
        ({"model": 3, "messages": USER}, 400, "'model'"),
        ({"messages": []}, 400, "'messages'"),
        ({"messages": "hi"}, 400, "'messages'"),
        ({"messages": ["hi"]}, 400, "'messages[0]' must be an object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "'messages[0].role'"),
        ({"messages": [{"role": "user", "content": None}]}, 400, "'messages[0].content' must be a string"),
        ({"messages": [{"role": "user", "content": "x", "images": "abc"}]}, 400, "images"),
        ({"messages": USER * 4}, 400, "too many messages: 4 > 3"),
        ({"messages": [{"role": "user", "content": "x" * 21}]}, 413, "21 characters"),
        ({"messages": USER, "stream": "true"}, 400, "'stream' must be true or false"),
        ({"messages": USER, "think": "yes"}, 400, "'think'"),
        ({"messages": USER, "keep_alive": True}, 400, "'keep_alive'"),
        ({"messages": USER, "tools": {}}, 400, "'tools'"),
        ({"messages": USER, "options": []}, 400, "'options' must be an object"),
        ({"messages": USER, "options": {"num_ctx": "big"}}, 400, "'options.num_ctx' must be an integer"),
        ({"messages": USER, "options": {"num_predict": 1.5}}, 400, "'options.num_predict'"),
        ({"messages": USER, "options": {"temperature": True}}, 400, "'options.temperature' must be a number"),
        ({"messages": USER, "options": {"stop": "\n"}}, 400, "'options.stop' must be a list of strings"),
        ({"messages": USER, "options": {"use_mmap": True}}, 400, "'options.use_mmap' is not an option"),
        ({"messages": USER, "options": {"num_gpu": 0}}, 400, "'options.num_gpu' is not an option"),
        ({"messages": USER, "options": {"x": 1}}, 400, "'options.x' is not an option"),
        ({"messages": USER, "options": {"temperature": 1e9}}, 400, "'options.temperature' must be between 0 and 100"),
        ({"messages": USER, "options": {"num_predict": 10**12}}, 400, "'options.num_predict' must be between"),
        ({"messages": USER, "options": {"top_p": float("nan")}}, 400, "'options.top_p' must be between 0 and 1"),
        ({"messages": USER, "options": {"stop": ["x"] * 17}}, 400, "'options.stop' must be at most 16 strings"),
        ({"messages": USER, "options": {"stop": ["x" * 201]}}, 400, "at most 200 characters"),
    ],
)
def test_invalid_chat_bodies(body: dict[str, Any], status: int, fragment: str) -> None:
    from clawweb.errors import ApiError

    with pytest.raises(ApiError) as info:
        validate_chat(body, SETTINGS)
    assert info.value.status == status
    assert fragment in info.value.message


@pytest.mark.parametrize("think", [True, False, "high", None])
def test_think_values_accepted(think: Any) -> None:
    validate_chat({"messages": USER, "think": think, "options": None, "tools": None}, SETTINGS)


# --- SSE framing ---------------------------------------------------------------------------------------------


def test_frame_single_line_with_id() -> None:
    assert sse.frame(b'{"a":1}', id=3) == b'id: 3\ndata: {"a":1}\n\n'


def test_line_frame_is_frame_for_a_single_line() -> None:
    line = b'{"message":{"content":"a\\nb"},"done":false}'
    assert sse.line_frame(line, 12) == sse.frame(line, id=12) == b"id: 12\ndata: " + line + b"\n\n"


def test_frame_without_id() -> None:
    assert sse.frame(b"x") == b"data: x\n\n"


def test_frame_multiline_data_and_fields() -> None:
    assert sse.frame(b"one\ntwo\r\nthree\rfour", event="note", id="7", retry=3000) == (
        b"event: note\nid: 7\nretry: 3000\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
    )


def test_frame_empty_data_with_event() -> None:
    assert sse.frame(b"", event="ping") == b"event: ping\ndata: \n\n"


def test_json_frame_never_holds_a_raw_line_separator() -> None:
    framed = sse.json_frame({"error": "bad\nthing\u2028"}, event="error")
    assert framed == b'event: error\ndata: {"error":"bad\\nthing\\u2028"}\n\n'
    assert json.loads(framed.split(b"data: ")[1]) == {"error": "bad\nthing\u2028"}


# --- line classification -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "done", "error"),
    [
        (b'{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}', True, None),
        (b'{"model":"m","message":{"role":"assistant","content":"\\"done\\":true"},"done":false}', False, None),
        (b'{"done":false,"message":{"role":"assistant","content":"\\"done\\":true"}}', False, None),  # any order
        (b'{"message":{"tool_calls":[{"function":{"arguments":{"done":true}}}]},"done":false}', False, None),
        # Ollama-compatible servers written in Python: spaces, other orders, no trailing newline.
        (b'{"model": "m", "message": {"role": "assistant", "content": ""}, "done": true}', True, None),
        (b'{"done": true, "model": "m"}', True, None),
        (b'{ "done" : true }', True, None),
        (b'{"model": "m", "done": false}', False, None),
        (b'{"error":"out of memory"}', False, "out of memory"),
        (b'{"error": "model runner crashed", "done": false}', False, "model runner crashed"),
        (b'{"done":false}x', False, "Ollama sent a line that is not JSON: b'{\"done\":false}x'"),
        (b"[1, 2]", False, "Ollama sent a line that is not a JSON object: b'[1, 2]'"),
    ],
)
def test_classify_never_misses_the_end_or_an_error(line: bytes, done: bool, error: str | None) -> None:
    assert classify(line) == (done, error)


# --- thinking inside content (Ollama before 0.9) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("plain answer", ("", "plain answer")),
        ("<think>\nweigh it\n</think>\n\nThe answer.", ("weigh it", "The answer.")),
        ("  <think>still thinking", ("still thinking", "")),  # stopped before the tag closed
        ("An answer that mentions <think> later", ("", "An answer that mentions <think> later")),
    ],
)
def test_split_thinking(content: str, expected: tuple[str, str]) -> None:
    from clawweb.chat.generations import split_thinking

    assert split_thinking(content) == expected


@pytest.mark.parametrize(
    ("settings", "labelled"),
    [
        ({"simulator": "1"}, True),
        ({}, False),
        ({"upstream_label": "Ollama simulator"}, False),  # a name in the logs, not the mode
    ],
)
def test_the_page_says_simulator_exactly_when_the_setting_does(
    tmp_path: Path, settings: dict[str, str], labelled: bool
) -> None:
    app = create_app({"db": str(tmp_path / "clawweb.db"), "secret_key_file": str(tmp_path / "key"), **settings})
    try:
        page = app.test_client().get("/", headers={"Accept": "text/html"})
    finally:
        services(app).close()
    assert page.status_code == 200
    banner = '<p class="banner" role="note">Simulator: no Ollama was found, answers are canned text.</p>'
    assert (banner in page.text) is labelled


def test_readme_lists_every_setting() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for field in dataclasses.fields(Settings):
        assert f"| `CLAWWEB_{field.name.upper()}` |" in readme, field.name
