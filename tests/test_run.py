"""The two entry points a new user meets: ``make run`` (scripts/run.sh) and gunicorn's start-up validation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from .support.factories import log_problem
from .support.servers import BIN, ROOT, ServerProcess, free_port
from .support.sseclient import content_of, events

pytestmark = pytest.mark.integration  # scripts/run.sh and gunicorn, started for real


def test_make_run_falls_back_to_the_simulator_and_says_so(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    env = {
        "CLAWWEB_OLLAMA_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "CLAWWEB_BIND": f"127.0.0.1:{port}",
        "CLAWWEB_SIMULATOR_PORT": str(sim_port),
    }
    server = ServerProcess([str(ROOT / "scripts" / "run.sh")], tmp_path / "run.log", env)
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_until(lambda: requests.get(url + "/readyz", timeout=1).status_code == 200)
        assert "using the built-in Ollama SIMULATOR" in server.log
        assert f"relaying to Ollama simulator at http://127.0.0.1:{sim_port}" in server.log
        page = requests.get(url + "/", headers={"Accept": "text/html"}, timeout=5)
        banner = '<p class="banner" role="note">Simulator: no Ollama was found, answers are canned text.</p>'
        assert page.status_code == 200 and banner in page.text  # the chat page says so too
        body = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}
        with requests.post(url + "/api/chat", json=body, headers={"Accept": "text/event-stream"}, stream=True) as r:
            assert content_of(list(events(r)))
    finally:
        assert server.stop() == 0
    assert log_problem(server.log) is None, server.log  # the gateway's log rule (conftest), for run.sh's gateway
    with pytest.raises(requests.ConnectionError):  # the simulator went away with it
        requests.get(f"http://127.0.0.1:{sim_port}/", timeout=1)


def test_bad_setting_stops_gunicorn_with_one_readable_line() -> None:
    env = {**os.environ, "CLAWWEB_HEARTBEAT_S": "-1"}
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "clawweb: CLAWWEB_HEARTBEAT_S=-1: must be a positive number"
