"""The naive relay, the benchmark's yardstick: Ollama's /api/chat as SSE in 20 lines, no features at all.

A Flask generator over ``requests``' ``iter_lines``, run by bench/run.py under the same ``gunicorn -k gevent``
as clawweb: the floor of this stack (no validation, admission, heartbeats, metrics, accounts or cleanup), so
clawweb's cost over it is the cost of its features. ``NAIVE_OLLAMA_URL`` names the upstream.
"""

import os
from collections.abc import Iterator

import requests
from flask import Flask, Response, request

OLLAMA = os.environ.get("NAIVE_OLLAMA_URL", "http://127.0.0.1:11434")
app = Flask(__name__)
session = requests.Session()
session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=1000))  # one pooled connection per stream


@app.post("/api/chat")
def chat() -> Response:
    body = request.get_json()

    def frames() -> Iterator[bytes]:
        with session.post(OLLAMA + "/api/chat", json=body, stream=True) as upstream:
            for line in upstream.iter_lines(chunk_size=None):
                if line:
                    yield b"data: " + line + b"\n\n"

    return Response(frames(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
