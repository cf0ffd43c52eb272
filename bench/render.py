"""Benchmark part 4: the chat page in headless Chromium while a 4000-token answer streams at 100 tokens/s.

The relay can be fast and the page still stutter: this measures the browser's main thread while the answer
grows (long tasks, and frames missed by a requestAnimationFrame loop), because that is what a reader sees.
Loopback only: the simulator and clawweb under gunicorn, Debian's Chromium driven by Playwright.

``.venv/bin/python bench/render.py [--screenshot PATH] [--trace PATH]`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Browser, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

from clawweb.simulator import answer_tokens  # noqa: E402
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the tests' Chromium, launched the same way)
from tests.support.servers import Gateway  # noqa: E402
from tests.support.simproc import SimProcess  # noqa: E402

TOKENS, TPS = 4000, 100

# Installed before the page's own scripts, so nothing the page does escapes it. The rAF loop is the frame
# clock (a skipped frame shows as a longer interval). The end of the answer is stamped in the page's own clock
# when its "done" handler starts (wrapped for that), not when a Python poll happens to notice.
PROBE = """
(() => {
  const probe = { frames: [], longtasks: [], loaf: [], firstToken: null, finishStart: null, finish: 0, status: null };
  window.__render = probe;
  // The page's "done" handler swaps the streamed DOM for the stored answer: time it whole, even under 50 ms.
  const listen = EventSource.prototype.addEventListener;
  EventSource.prototype.addEventListener = function (type, listener, options) {
    const timed = function (event) {
      probe.finishStart = performance.now();
      try {
        return listener.call(this, event);
      } finally {
        probe.finish = performance.now() - probe.finishStart;
      }
    };
    return listen.call(this, type, type === "done" ? timed : listener, options);
  };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) probe.longtasks.push([e.startTime, e.duration]);
  }).observe({ type: "longtask", buffered: true });
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        const forced = e.scripts.reduce((sum, s) => sum + s.forcedStyleAndLayoutDuration, 0);
        const script = e.scripts.reduce((sum, s) => sum + s.duration, 0);
        const layout = e.styleAndLayoutStart ? e.startTime + e.duration - e.styleAndLayoutStart : 0;
        probe.loaf.push([e.startTime, e.duration, script, forced, layout]);
      }
    }).observe({ type: "long-animation-frame", buffered: true });
  } catch (_) {
    // no Long Animation Frames API in this browser: the long-task figures still stand
  }
  const tick = (now) => {
    probe.frames.push(now);
    if (probe.firstToken === null && document.querySelector(".message.assistant .content .tail")?.firstChild) {
      probe.firstToken = now;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  new MutationObserver((records) => {
    for (const r of records) {
      const status = r.target.dataset.status;
      if (r.target.classList.contains("assistant") && ["done", "stopped", "error"].includes(status)) {
        probe.status = status;
      }
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-status"] });
})();
"""


def frame_figures(stamps: list[float]) -> dict[str, float]:
    """Frames, median interval and dropped frames: an interval over 1.5 x the median hid round(i/median)-1.

    Rounded, not floored: rAF stamps jitter around the vsync (33.3 ms is 1.99 x 16.7), and a floor would count
    one missed vsync as none; 1.5 x is exactly where rounding starts to say "one frame missed".
    """
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    if not intervals:
        raise RuntimeError("no animation frames were observed while the answer streamed")
    median = statistics.median(intervals)
    slow = [i for i in intervals if i > 1.5 * median]
    return {
        "frames": float(len(stamps)),
        "frame_median_ms": median,
        "frame_p99_ms": sorted(intervals)[min(len(intervals) - 1, round(0.99 * (len(intervals) - 1)))],
        "frame_max_ms": max(intervals),
        "dropped_frames": float(sum(round(i / median) - 1 for i in slow)),
        "slow_frames": float(len(slow)),
        "frames_over_50ms": float(sum(i > 50 for i in intervals)),
    }


def task_figures(probe: dict[str, Any], start: float, end: float) -> dict[str, float]:
    """Long tasks while the answer grows, and apart, the one that swaps in the stored answer at the end."""
    finish_end = end + probe["finish"]
    # Long-task times are rounded to the millisecond: a millisecond of slack either side.
    finishing = [float(d) for s, d in probe["longtasks"] if s <= finish_end + 1 and s + d >= end - 1]
    growing = [float(d) for s, d in probe["longtasks"] if start <= s and s + d < end - 1]
    loaf = [entry for entry in probe["loaf"] if start <= entry[0] and entry[0] + entry[1] < end - 1]
    return {
        "longtask_max_ms": max(growing, default=0.0),
        "longtask_total_ms": float(sum(growing)),
        "longtasks": float(len(growing)),
        "finish_task_ms": max(finishing, default=0.0),  # 0: under the 50 ms of a long task
        "finish_script_ms": float(probe["finish"]),
        "loaf_count": float(len(loaf)),
        "loaf_script_ms": float(sum(entry[2] for entry in loaf)),
        "loaf_forced_layout_ms": float(sum(entry[3] for entry in loaf)),
        "loaf_style_layout_ms": float(sum(entry[4] for entry in loaf)),
    }


def _cpu_ticks(path: Path) -> int:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def cpu_ticks() -> dict[str, int]:
    """CPU ticks so far (from /proc) of the Chromium processes under this one, and of everything not ours.

    Long tasks and dropped frames only show work once it overflows a frame; CPU time shows it before that
    (on this 2-core box the page may be smooth and still cost a slower device its frames).
    """
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    ours, grew = {os.getpid()}, True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= found
        grew = bool(found)
    # "other": the rest of the machine (all cores), which on 2 cores explains most noise in the frame figures.
    busy = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = {"chromium": 0, "renderer": 0, "renderer_main": 0, "other": sum(int(busy[i]) for i in (0, 1, 2, 5, 6, 7))}
    for pid in ours:
        try:
            ticks["other"] -= _cpu_ticks(Path(f"/proc/{pid}/stat"))
            # Chromium rewrites its command line into one space-separated string.
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if not command.split(b" ", 1)[0].endswith(b"/chromium"):
                continue  # this process, Playwright's node driver, the simulator, gunicorn
            ticks["chromium"] += _cpu_ticks(Path(f"/proc/{pid}/stat"))
            if b" --type=renderer " in command:
                ticks["renderer"] += _cpu_ticks(Path(f"/proc/{pid}/stat"))
                ticks["renderer_main"] += _cpu_ticks(Path(f"/proc/{pid}/task/{pid}/stat"))  # CrRendererMain
        except OSError:
            pass
    return ticks


def cpu_percent(prefix: str, before: dict[str, int], after: dict[str, int], wall: float) -> dict[str, float]:
    """Percent of one core, per group of processes."""
    hertz = os.sysconf("SC_CLK_TCK")
    return {f"{prefix}{name}_cpu_pct": 100 * (after[name] - before[name]) / hertz / wall for name in before}


def measure(work: Path, screenshot: Path | None = None, trace: Path | None = None) -> dict[str, float]:
    """Stream one 4000-token answer into the chat page and return the main thread's figures while it grew.

    Raises RuntimeError unless the answer finished (``done``) with exactly the simulator's text on the page.
    ``screenshot`` saves the page at the end (to check by eye that the long answer rendered); ``trace``
    records a Chromium performance trace (it costs main-thread time, so the figures are a little worse).
    """
    work.mkdir(parents=True, exist_ok=True)
    sim = SimProcess("--ttft", "0.2", "--tps", str(TPS))
    try:
        gateway = Gateway(
            work / "gunicorn.log", sim.url, upstream_label="Ollama simulator", simulator=1, log_level="warning"
        )
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    return _stream_one_answer(browser, gateway.url, screenshot, trace)
                finally:
                    browser.close()
        finally:
            gateway.stop()
    finally:
        sim.stop()


def _stream_one_answer(browser: Browser, url: str, screenshot: Path | None, trace: Path | None) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="en-US")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.add_init_script(PROBE)
    page.goto(url + "/")
    page.wait_for_load_state("load")
    if page.evaluate("document.visibilityState") != "visible":
        raise RuntimeError("the page is not visible: rAF would be throttled and the figures meaningless")
    page.locator("#think").set_checked(False)  # the answer alone: no thinking section
    page.fill("#input", f"Write a long answer\n#sim {json.dumps({'tokens': TOKENS, 'tps': TPS, 'ttft': 0.2})}")
    time.sleep(0.5)  # let the page settle so start-up work is not counted
    idle_before, clock = cpu_ticks(), time.monotonic()
    time.sleep(2.0)  # the baseline: an idle page with the probe's own rAF loop
    idle_after, idle_wall = cpu_ticks(), time.monotonic() - clock
    if trace:
        browser.start_tracing(page=page, path=str(trace), screenshots=False)
    sent = float(page.evaluate("performance.now()"))
    cpu_before, clock = cpu_ticks(), time.monotonic()
    page.keyboard.press("Enter")
    # Poll on a timer, not rAF: the wait itself must not add work to every frame.
    try:
        page.wait_for_function("() => window.__render.status", polling=500, timeout=(TOKENS / TPS + 30) * 1000)
    except PlaywrightTimeout:
        raise RuntimeError(f"the answer did not finish within {TOKENS / TPS + 30:.0f} s") from None
    cpu_after, wall = cpu_ticks(), time.monotonic() - clock
    time.sleep(1.0)  # the final re-render's long task and a few more frames get reported
    if trace:
        browser.stop_tracing()
    probe = page.evaluate("window.__render")
    answer = page.locator(".message.assistant").last
    content = answer.locator(".content")
    raw = content.get_attribute("data-raw") or ""
    streamed = content.get_attribute("data-streamed") or ""
    shown = content.inner_text()
    expected = "".join(answer_tokens(TOKENS))
    if screenshot:
        page.screenshot(path=str(screenshot))
    context.close()
    if probe["status"] != "done" or probe["firstToken"] is None or probe["finishStart"] is None:
        raise RuntimeError(f"the answer did not finish: status {probe['status']!r}, page errors {errors}")
    if not shown.strip() or raw != expected or streamed != expected:
        raise RuntimeError(f"the page does not hold the whole answer ({len(raw)} of {len(expected)} chars)")
    if errors:
        raise RuntimeError(f"script errors on the page: {errors}")
    start, end = probe["firstToken"], probe["finishStart"]
    figures = {
        "tokens": float(TOKENS),
        "tokens_per_s_sent": float(TPS),
        "first_token_s": (start - sent) / 1000,
        "answer_s": (end - start) / 1000,
        "answer_chars": float(len(raw)),
        "shown_chars": float(len(shown)),
        **cpu_percent("", cpu_before, cpu_after, wall),
        **cpu_percent("idle_", idle_before, idle_after, idle_wall),
        **frame_figures([t for t in probe["frames"] if start <= t <= end]),
        **task_figures(probe, start, end),
    }
    return {name: round(value, 3) for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screenshot", type=Path, default=Path("/tmp/render-end.png"))
    parser.add_argument("--trace", type=Path, help="also write a Chromium performance trace (JSON) here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clawweb-render-"))
    print(json.dumps(measure(work, args.screenshot, args.trace), indent=2))


if __name__ == "__main__":
    main()
