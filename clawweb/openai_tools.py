"""OpenAI's tool calling translated to and from Ollama's: ``tools`` and ``tool_choice`` into Ollama's ``tools``,
assistant ``tool_calls`` and ``role: tool`` messages into Ollama's messages, Ollama's calls into OpenAI's.

The differences that matter (Ollama's docs/api.md and its own OpenAI layer, openai/openai.go):

* OpenAI's ``function.arguments`` is a JSON *string*; Ollama's is the object itself, both ways.
* OpenAI links a tool's result to the call by ``tool_call_id``; Ollama by the tool's name (``tool_name``), which
  Ollama's layer finds from the assistant's call of that id, the last one when ids repeat. So does this one,
  looking only at the messages before the result (a result answers an earlier call).
* Ollama's calls carry no id, or one of its own: an answer's calls get ``call_...`` ids here when they lack one.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from .errors import ApiError, InvalidField
from .validation import parse_json_object


def _function_tool(tool: Any, where: str) -> dict[str, Any]:
    """One ``{"type": "function", "function": {name, description, parameters, strict}}`` as Ollama's tool."""
    if not isinstance(tool, dict):
        raise InvalidField(where, 'must be an object {"type": "function", "function": {...}}')
    if tool.get("type") != "function":  # "custom" tools take free text, which Ollama's models cannot be held to
        raise InvalidField(f"{where}.type", 'must be "function" (the only kind of tool Ollama calls)')
    function = tool.get("function")
    if not isinstance(function, dict):
        raise InvalidField(f"{where}.function", "must be an object {name, description, parameters}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidField(f"{where}.function.name", "must be a non-empty string")
    # ``strict`` has no Ollama counterpart: accepted, and the client still validates the arguments it gets.
    kept = {key: function[key] for key in ("description", "parameters") if function.get(key) is not None}
    return {"type": "function", "function": {"name": name, **kept}}


def _chosen(choice: Any, names: list[str]) -> set[str]:
    """The names ``tool_choice`` allows: a named function, or ``allowed_tools`` (each must be offered)."""
    if not isinstance(choice, dict) or choice.get("type") not in ("function", "allowed_tools"):
        message = 'must be "none", "auto", "required", a function {"type": "function", "function": {"name"}}'
        raise InvalidField("tool_choice", message + ' or {"type": "allowed_tools", ...}')
    picks: Any
    if choice["type"] == "function":
        picks, where = [choice.get("function")], "tool_choice.function"
    else:
        allowed = choice.get("allowed_tools")
        allowed = allowed if isinstance(allowed, dict) else {}
        picks, where = allowed.get("tools"), "tool_choice.allowed_tools.tools"
        if not isinstance(picks, list) or not picks:
            raise InvalidField(where, "must be a non-empty list of function tools")
        if allowed.get("mode") not in ("auto", "required"):
            raise InvalidField("tool_choice.allowed_tools.mode", 'must be "auto" or "required"')
        picks = [pick.get("function") if isinstance(pick, dict) else None for pick in picks]
    chosen: set[str] = set()
    for pick in picks:
        name = pick.get("name") if isinstance(pick, dict) else None
        if name not in names:
            raise InvalidField(where, f"must name a function of 'tools' ({', '.join(names)})")
        chosen.add(name)
    return chosen


def ollama_tools(raw: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools Ollama is offered for the request's ``tools`` and ``tool_choice`` (None: none at all).

    Ollama has no ``tool_choice``: the model calls a tool it is offered, or answers in text. So "none" offers
    none, a named function (or ``allowed_tools``) offers only those, and "required" offers them all, like
    "auto". Why not refuse "required" instead: clients send it routinely (LangChain's ``bind_tools(...,
    tool_choice="any")``, agent loops), a named function cannot be forced either, and what happened is never
    hidden: an answer without a call says ``finish_reason: "stop"`` and has no ``tool_calls``."""
    tools, choice = raw.get("tools"), raw.get("tool_choice")
    if tools in (None, []):
        if choice not in (None, "none", "auto"):
            raise InvalidField("tool_choice", "needs 'tools' to choose from")
        return None
    if not isinstance(tools, list):
        raise InvalidField("tools", "must be a list of function tools")
    offered = [_function_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    if choice is None or choice in ("auto", "required"):
        return offered
    if choice == "none":
        return None
    chosen = _chosen(choice, [tool["function"]["name"] for tool in offered])
    return [tool for tool in offered if tool["function"]["name"] in chosen]


# --- messages ------------------------------------------------------------------------------------------------


def _arguments(value: Any, where: str) -> Any:
    """A call's ``arguments``, a JSON object in a string, as the object Ollama takes (decoded with the request
    body's own checks: no NaN, no unpaired surrogates, not nested too deep)."""
    try:
        if isinstance(value, str):
            return parse_json_object(value.encode())
    except ApiError:
        pass
    raise InvalidField(where, 'must be a string holding a JSON object, such as "{}" or "{\\"city\\": \\"Paris\\"}"')


def ollama_calls(calls: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """An assistant message's OpenAI ``tool_calls`` as Ollama's; each call's id and name go into ``names``, where
    the tool messages that answer them look their names up."""
    if not isinstance(calls, list):
        raise InvalidField(where, "must be a list of {id, type, function} calls")
    converted = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        if not isinstance(call, dict):
            raise InvalidField(at, "must be an object {id, type, function}")
        if call.get("type", "function") != "function":
            raise InvalidField(f"{at}.type", 'must be "function"')
        function = call.get("function")
        if not isinstance(function, dict):
            raise InvalidField(f"{at}.function", "must be an object {name, arguments}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidField(f"{at}.function.name", "must be a non-empty string")
        arguments = _arguments(function.get("arguments"), f"{at}.function.arguments")
        if isinstance(call.get("id"), str):
            names[call["id"]] = name  # a later call with the same id wins, as in Ollama's layer
        converted.append({"function": {"name": name, "arguments": arguments}})
    return converted


def tool_name(message: dict[str, Any], where: str, names: dict[str, str]) -> str:
    """The name of the tool whose result a ``role: tool`` message holds, from its ``tool_call_id``."""
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidField(f"{where}.tool_call_id", "is required: the id of the call this message answers")
    if call_id not in names:
        raise InvalidField(f"{where}.tool_call_id", "names no tool call of an earlier assistant message")
    return names[call_id]


# --- answers -------------------------------------------------------------------------------------------------


def openai_calls(calls: Any, first: int) -> list[dict[str, Any]]:
    """Ollama's ``message.tool_calls`` as OpenAI's, ``index`` counted from ``first``: a stream numbers its calls
    across lines, each call whole in one chunk (the official client's ``accumulate_delta`` concatenates the
    strings of chunks with the same index, so an id or name must come once per call)."""
    converted: list[dict[str, Any]] = []
    for call in calls if isinstance(calls, list) else []:
        call = call if isinstance(call, dict) else {}
        function = call["function"] if isinstance(call.get("function"), dict) else {}
        call_id = call["id"] if isinstance(call.get("id"), str) and call["id"] else None
        arguments = function.get("arguments")
        converted.append(
            {
                "index": first + len(converted),
                "id": call_id or "call_" + secrets.token_hex(12),
                "type": "function",
                "function": {
                    "name": str(function.get("name") or ""),
                    # Compact, non-ASCII kept, as OpenAI writes them; the frame around it is ASCII-escaped.
                    "arguments": json.dumps(arguments or {}, separators=(",", ":"), ensure_ascii=False),
                },
            }
        )
    return converted
