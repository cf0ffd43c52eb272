"""``clawweb doctor``: find out why answers do not stream, and ``clawweb warmup``: load the model.

Each check prints pass/fail, the figure it measured and, on failure, the fix. The seed of clawweb is an
operator's table of symptoms and fixes; this is that table, run against the real setup.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .config import redact_url, split_urls

PROMPT = [{"role": "user", "content": "Count from one to twenty."}]
PROBE_TOKENS = 16


@dataclass
class Check:
    name: str
    ok: bool
    figure: str
    fix: str = ""


@dataclass
class Timing:
    ttft_s: float  # request sent to first token
    span_s: float  # first token to last
    arrivals: int


def _lines(response: requests.Response, is_token: Callable[[bytes], bool]) -> Iterator[float]:
    """Arrival times of the token-bearing lines of a streamed response."""
    for line in response.iter_lines(chunk_size=None):
        if line and is_token(line):
            yield time.monotonic()


def _measure(response: requests.Response, started: float, is_token: Callable[[bytes], bool]) -> Timing:
    times = list(_lines(response, is_token))
    if not times:
        raise RuntimeError("no tokens arrived")
    return Timing(times[0] - started, times[-1] - times[0], len(times))


def _chat_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": PROMPT,
        "stream": True,
        "think": False,
        "options": {"num_predict": PROBE_TOKENS},
    }


class Doctor:
    def __init__(
        self, ollama_url: str, model: str, heartbeat_s: float, verify: bool | str = True, key: str | None = None
    ) -> None:
        """``ollama_url``: ``CLAWWEB_OLLAMA_URL`` as it is, one URL or several separated by commas."""
        self.ollama_urls = split_urls(ollama_url)
        self.model, self.heartbeat_s, self.verify = model, heartbeat_s, verify
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.checks: list[Check] = []
        self.direct: Timing | None = None  # the fastest host's, the floor the gateway is compared with

    def check(self, name: str, ok: bool, figure: str, fix: str = "") -> bool:
        self.checks.append(Check(name, ok, figure, "" if ok else fix))
        return ok

    def ollama(self) -> None:
        """Every Ollama host in turn: each must answer, since the gateway sends requests to any of them. With
        several, a host without the model is fine (requests for it go to the others) unless none has it."""
        several = len(self.ollama_urls) > 1
        present = [self._ollama(url, f" at {redact_url(url)}" if several else "", several) for url in self.ollama_urls]
        if several and not any(present):
            self.check("model present", False, f"{self.model} on none of the hosts", f"ollama pull {self.model}")

    def _ollama(self, url: str, at: str, several: bool) -> bool:
        """True when the host has the model. ``url`` is used as configured, shown without its credentials."""
        shown = redact_url(url)
        try:
            started = time.monotonic()
            version = requests.get(url + "/api/version", timeout=5).json()["version"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            self.check(
                "ollama reachable" + at,
                False,
                f"{shown}: {type(exc).__name__}",
                "start Ollama (systemctl start ollama) or set CLAWWEB_OLLAMA_URL",
            )
            return False
        self.check(
            "ollama reachable" + at,
            True,
            f"{shown}, version {version}, {(time.monotonic() - started) * 1000:.0f} ms",
        )
        names = {m.get("name") for m in requests.get(url + "/api/tags", timeout=5).json()["models"]}
        if several and self.model not in names:
            self.check("model present" + at, True, f"{self.model} is not on this host: it goes to the others")
            return False
        if not self.check("model present" + at, self.model in names, self.model, f"ollama pull {self.model}"):
            return False
        started = time.monotonic()
        with requests.post(url + "/api/chat", json=_chat_body(self.model), stream=True, timeout=(5, 600)) as response:
            direct = _measure(response, started, lambda line: b'"done":false' in line)
        if self.direct is None or direct.ttft_s < self.direct.ttft_s:
            self.direct = direct
        self.check("time to first token, direct" + at, True, f"{direct.ttft_s * 1000:.0f} ms")
        loaded = {m.get("name") for m in requests.get(url + "/api/ps", timeout=5).json()["models"]}
        self.check(
            "model loaded" + at,
            self.model in loaded,
            "in GPU memory" if self.model in loaded else "not loaded",
            "python -m clawweb warmup (and OLLAMA_KEEP_ALIVE=24h) so users do not wait for a load",
        )
        return True

    def gateway(self, url: str) -> None:
        started = time.monotonic()
        try:
            response = requests.post(
                url.rstrip("/") + "/api/chat",
                json=_chat_body(self.model),
                stream=True,
                headers={"Accept": "text/event-stream", **self.auth},
                timeout=(5, 600),
                verify=self.verify,
            )
        except requests.RequestException as exc:
            self.check(
                "gateway reachable",
                False,
                f"{redact_url(url)}: {type(exc).__name__}",
                "is clawweb running (systemctl status clawweb) and nginx proxying to it?",
            )
            return
        with response:
            kind = response.headers.get("Content-Type", "")
            self.check(
                "gateway answers",
                response.status_code == 200,
                f"HTTP {response.status_code}",
                "see the JSON error in the response and the gateway log (journalctl -u clawweb)",
            )
            if response.status_code != 200:
                return
            self.check(
                "content type",
                kind.startswith("text/event-stream"),
                kind or "none",
                "the proxy rewrites the response: pass text/event-stream through unchanged",
            )
            length = response.headers.get("Content-Length")
            self.check(
                "no Content-Length",
                length is None,
                "absent" if length is None else length,
                "something buffers the whole answer to measure it: proxy_buffering off, no gzip",
            )
            comments: list[bytes] = []

            def is_token(line: bytes) -> bool:
                if line.startswith(b":"):
                    comments.append(line)  # the opening comment, and heartbeats: the same kind of line
                return line.startswith(b"data: {") and b'"done":false' in line

            timing = _measure(response, started, is_token)
        self.check(
            "comments pass (heartbeats)",
            bool(comments),
            f"{len(comments)} comment line(s)",
            "the proxy drops SSE comments: heartbeats cannot keep idle streams alive through it",
        )
        extra = f" (+{(timing.ttft_s - self.direct.ttft_s) * 1000:.0f} ms over direct)" if self.direct else ""
        self.check("time to first token, through " + redact_url(url), True, f"{timing.ttft_s * 1000:.0f} ms{extra}")
        # One burst: all tokens within a fraction of the time Ollama took to write them.
        expected = self.direct.span_s if self.direct else 0.0
        streams = timing.arrivals > 1 and (expected < 0.2 or timing.span_s > expected / 4)
        self.check(
            "tokens arrive one by one",
            streams,
            f"{timing.arrivals} events over {timing.span_s * 1000:.0f} ms (Ollama: {expected * 1000:.0f} ms)",
            "a proxy buffers the stream: nginx `proxy_buffering off;` and `gzip off;` on the streaming "
            "locations, do not ignore X-Accel-Buffering; Caddy: flush_interval -1",
        )

    def proxy_timeouts(self, site: Path) -> None:
        text = site.read_text()
        timeouts = [
            int(value) * (60 if unit == "m" else 1)
            for value, unit in re.findall(r"proxy_read_timeout\s+(\d+)(s|m)?\s*;", text)
        ]
        short = [t for t in timeouts if t <= 2 * self.heartbeat_s]  # silence gets a heartbeat within two
        self.check(
            "proxy timeout above heartbeat",
            not short,
            f"proxy_read_timeout {min(timeouts, default=60)} s, heartbeat {self.heartbeat_s:g} s",
            f"raise proxy_read_timeout in {site} above twice CLAWWEB_HEARTBEAT_S (600s is a good value), "
            "or lower CLAWWEB_HEARTBEAT_S: idle streams are cut while the model loads",
        )


def warmup(ollama_url: str, model: str, wait_s: float) -> int:
    """Load ``model`` into every Ollama host (an empty generate request each), retrying while Ollama starts.

    Every host: the gateway prefers a host where the model is loaded, so one left cold would get no traffic."""
    urls = split_urls(ollama_url)
    deadline = time.monotonic() + wait_s
    statuses = [_warmup(url, model, deadline, wait_s, f"{redact_url(url)}: " if len(urls) > 1 else "") for url in urls]
    # With several hosts a 404 only means the model lives on the others, which the gateway sends it to.
    fine = {200, 404} if len(urls) > 1 else {200}
    return 0 if 200 in statuses and all(status in fine for status in statuses) else 1


def _warmup(url: str, model: str, deadline: float, wait_s: float, prefix: str) -> int:
    """Ollama's status for the load request, 0 when it did not answer."""
    while True:
        try:
            response = requests.post(url + "/api/generate", json={"model": model}, timeout=(5, 900))
            print(f"warmup: {prefix}{model}: HTTP {response.status_code} {response.text.strip()[:200]}")
            return response.status_code
        except requests.ConnectionError:
            if time.monotonic() >= deadline:
                print(f"warmup: Ollama at {redact_url(url)} did not answer within {wait_s:g} s", file=sys.stderr)
                return 0
            time.sleep(2)
