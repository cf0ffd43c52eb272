"""The Ollama simulator as a real subprocess, for tests (and the port it picked)."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from .servers import ServerProcess


class SimProcess(ServerProcess):
    def __init__(self, *args: str) -> None:
        log = Path(tempfile.mkdtemp(prefix="clawweb-sim-")) / "simulator.log"
        argv = [sys.executable, "-m", "clawweb.simulator", *args]
        if "--port" not in args:
            argv += ["--port", "0"]
        super().__init__(argv, log)
        found: list[str] = []

        def listening() -> bool:
            found[:] = re.findall(r"listening on (http://\S+)", self.log)
            return bool(found)

        self.wait_until(listening)
        self.url = found[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stats(self, timeout: float = 5) -> dict[str, Any]:
        """``timeout``: a simulator writing many fast streams at once may take longer to answer."""
        return dict(requests.get(self.url + "/_sim/stats", timeout=timeout).json())

    def reset(self) -> dict[str, Any]:
        return dict(requests.post(self.url + "/_sim/reset", timeout=5).json())


def sim_line(**directive: Any) -> str:
    """The ``#sim {...}`` line a message ends with to change the simulator's answer (nothing without a directive)."""
    return f"\n#sim {json.dumps(directive)}" if directive else ""


def chat(directive: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """An /api/chat body whose last user message carries a ``#sim`` directive for the simulator."""
    content = "hello" + sim_line(**(directive or {}))
    return {"model": "qwen3:32b", "messages": [{"role": "user", "content": content}], "think": False, **fields}
