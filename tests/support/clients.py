"""What the tests of clients no one here wrote share: the simulator's models, a Python tool function as the
clients' docs write one, and the ``#sim`` line that makes the model call it."""

from __future__ import annotations

from .simproc import sim_line

CHAT_MODEL = "qwen3:32b"
CODE_MODEL = "qwen2.5-coder:7b"  # fills in the middle: Ollama refuses a `suffix` to a model without "insert"
EMBED_MODEL = "nomic-embed-text:latest"  # the simulator's own embedding model, the one Ollama's docs use
SIM_ARGS = ("--ttft", "0.02", "--tps", "200", "--model", CHAT_MODEL, "--model", CODE_MODEL)

# The tool call the simulator makes when the request has tools and the last user message carries this line.
CALL_WEATHER = sim_line(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}])
QUESTION = "What is the weather in Paris?" + CALL_WEATHER


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The name of the city

    Returns:
        str: The weather there
    """
    # A Google-style docstring: ollama-python and LangChain build the tool's JSON schema from it.
    return f"Sunny, 22 °C in {city}"
