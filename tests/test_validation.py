"""Decoding a request body, in process: what JSON allows but nothing downstream can take is a 400 saying why.
(The fields of a chat body are in test_units.py and test_canonical.py.)"""

from __future__ import annotations

import pytest

from clawweb.errors import ApiError
from clawweb.validation import MAX_DEPTH, parse_json_object


def refusal(raw: bytes) -> str:
    with pytest.raises(ApiError) as refused:
        parse_json_object(raw)
    assert refused.value.status == 400
    return refused.value.message


def nested(depth: int) -> bytes:
    """A body whose innermost value is ``depth`` levels deep, the body itself being level 1."""
    lists = depth - 2
    return b'{"a": ' + b"[" * lists + b"1" + b"]" * lists + b"}"


def test_a_json_object_is_decoded_whatever_its_spacing() -> None:
    assert parse_json_object(b' \n{"model": "m", "n": [1, 2.5, true, null]}\n') == {
        "model": "m",
        "n": [1, 2.5, True, None],
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body; expected a JSON object"),
        (b" \r\n\t", "missing request body; expected a JSON object"),
        (b"null", "request body must be a JSON object"),
        (b"[1]", "request body must be a JSON object"),
        (b'"text"', "request body must be a JSON object"),
        (b'{"a":', "request body is not valid JSON: Expecting value: line 1 column 6 (char 5)"),
        (b"\xef\xbb\xbf{}", "request body is not valid JSON: Unexpected UTF-8 BOM"),
    ],
)
def test_no_object_no_body(raw: bytes, message: str) -> None:
    assert refusal(raw).startswith(message)


@pytest.mark.parametrize(("raw", "at"), [(b"\xff{}", 0), (b'{"a": "caf\xc3"}', 10), (b'{"a": "\xed\xa0\x80"}', 7)])
def test_invalid_utf8_names_the_byte(raw: bytes, at: int) -> None:
    assert refusal(raw) == f"request body is not valid UTF-8 (byte {at})"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_javascript_constants_are_not_json(constant: str) -> None:
    message = refusal(b'{"options": {"temperature": %b}}' % constant.encode())
    assert message == f"request body holds {constant}, which is not JSON (Ollama refuses it)"


def test_numbers_too_large_to_forward_are_refused() -> None:
    assert refusal(b'{"a": 1e999}') == "request body holds a number too large for a double (1e999)"
    assert refusal(b'{"a": 1' + b"0" * 5000 + b"}").startswith("request body has a value clawweb cannot read: ")
    assert (
        parse_json_object(b'{"a": 1e308, "b": 123456789012345678901234567890}')["b"] == 123456789012345678901234567890
    )


def test_nesting_up_to_the_limit_passes_one_more_level_does_not() -> None:
    assert parse_json_object(nested(MAX_DEPTH))
    assert refusal(nested(MAX_DEPTH + 1)) == f"request body is nested deeper than {MAX_DEPTH} levels"


def test_nesting_deep_enough_to_overflow_the_decoder_is_the_same_400() -> None:
    assert refusal(b"[" * 100_000 + b"]" * 100_000) == f"request body is nested deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize("raw", [b'{"a": "\\ud800"}', b'{"a": ["x", "\\udfff y"]}', b'{"\\ud800": 1}'])
def test_an_unpaired_surrogate_anywhere_is_refused(raw: bytes) -> None:
    assert refusal(raw) == "request body holds an unpaired UTF-16 surrogate (not text)"


def test_a_surrogate_pair_is_one_character() -> None:
    assert parse_json_object(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
