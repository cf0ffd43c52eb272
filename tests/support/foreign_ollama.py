"""An Ollama-compatible server that is not Ollama, as Python proxies and servers write one: ``json.dumps`` with
its default spaces, fields in another order, and a final line without a trailing newline.

It shares none of the simulator's code (the simulator follows Ollama's bytes exactly, and so shares our
assumptions); it runs in a thread of the test process.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "qwen3:32b"
WORDS = ["Spaced ", "JSON ", "is ", "still ", "JSON."]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/tags":
            self._json({"models": [{"name": MODEL, "model": MODEL, "size": 1, "details": {"family": "qwen3"}}]})
        elif self.path == "/api/ps":
            self._json({"models": [{"name": MODEL, "model": MODEL, "size": 1, "size_vram": 1}]})
        elif self.path == "/api/version":
            self._json({"version": "0.0.0-foreign"})
        else:
            self._json({"status": "ok"})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        final = {
            "done": True,  # first, as a dict built in another order serialises
            "done_reason": "stop",
            "eval_count": len(WORDS),
            "eval_duration": 50_000_000,
            "message": {"content": "", "role": "assistant"},
            "model": MODEL,
            "created_at": "2026-01-01T00:00:00Z",
        }
        tokens = [{"message": {"content": word, "role": "assistant"}, "done": False, "model": MODEL} for word in WORDS]
        if request.get("stream") is False:
            self._json({**final, "message": {"role": "assistant", "content": "".join(WORDS)}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines = [json.dumps(chunk) + "\n" for chunk in tokens] + [json.dumps(final)]  # no newline after the last
        for line in lines:
            data = line.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class ForeignOllama:
    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
