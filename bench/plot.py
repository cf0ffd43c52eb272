"""The benchmark's plot as hand-written SVG: time to first token and token latency against open streams, per target.

Two log-log panels from one run's report (bench/run.py's JSON): the seed levels (1 to 16 streams) and the
high-load levels (200, 500) on one axis of streams. Both show measured values, not differences, so the
simulator direct is the floor every other line stands on. The colours are the Okabe-Ito palette (told apart
with colour blindness too) on a background of the plot's own, light or dark by ``prefers-color-scheme``, so
the SVG reads the same on a light or dark GitHub page. ``.venv/bin/python bench/plot.py [REPORT.json] [OUT.svg]``
redraws it from a saved report.
"""

from __future__ import annotations

import json
import math
import sys
from html import escape
from pathlib import Path
from typing import Any

# (the name in the report, the legend's label, the colour, the dash pattern)
TARGETS = (
    ("simulator direct", "simulator direct (the floor)", "#8c8c8c", "5 4"),
    ("nginx → simulator", "nginx (C)", "#0072b2", ""),
    ("naive relay", "naive relay (20 lines of Flask)", "#009e73", ""),
    ("clawweb", "clawweb", "#d55e00", ""),
)
# The simulated model's own time to first token per part of the run (bench/run.py's simulators).
MODEL_TTFT_MS = {"seed": 820.0, "high_load": 200.0}
WIDTH, HEIGHT = 920, 430
PANEL_W, PANEL_H = 360, 250
PANEL_TOP = 126
PANELS_LEFT = (80, 530)
FLOOR_MS = 0.1  # log axes: a value at or under it (a figure lost in the noise) sits on the axis

STYLE = """
  .bg { fill: #ffffff; } .fg { fill: #1f2328; } .muted { fill: #59636e; }
  .grid { stroke: #d1d9e0; } .axis { stroke: #59636e; }
  @media (prefers-color-scheme: dark) {
    .bg { fill: #0d1117; } .fg { fill: #e6edf3; } .muted { fill: #9198a1; }
    .grid { stroke: #30363d; } .axis { stroke: #9198a1; }
  }
  text { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
"""


def series(report: dict[str, Any], name: str, value: str) -> list[tuple[int, float]]:
    """(streams, figure) of one target over the seed and high-load parts, in order of streams."""
    points: list[tuple[int, float]] = []
    for part, model_ms in MODEL_TTFT_MS.items():
        for level, figures in (report.get(part, {}).get(name) or {}).items():
            figure = figures[value] - (model_ms if value == "ttft_p50_ms" else 0.0)
            if math.isfinite(figure):
                points.append((int(level), figure))
    return sorted(points)


def decades(low: float, high: float) -> tuple[float, float]:
    return 10 ** math.floor(math.log10(max(low, FLOOR_MS))), 10 ** math.ceil(math.log10(max(high, FLOOR_MS * 10)))


def panel(report: dict[str, Any], left: int, title: str, value: str, levels: list[int]) -> list[str]:
    """One panel: its frame, gridlines, tick labels and a polyline with markers per target."""
    figures = [y for name, *_ in TARGETS for _, y in series(report, name, value)] or [1.0]
    y_low, y_high = decades(min(figures), max(figures))
    x_low, x_high = math.log10(levels[0]) - 0.1, math.log10(levels[-1]) + 0.1

    def x(streams: int) -> float:
        return left + (math.log10(streams) - x_low) / (x_high - x_low) * PANEL_W

    def y(ms: float) -> float:
        share = (math.log10(max(ms, y_low)) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low))
        return PANEL_TOP + PANEL_H - share * PANEL_H

    bottom = PANEL_TOP + PANEL_H
    out = [f'<text class="fg" x="{left}" y="{PANEL_TOP - 14}" font-size="14" font-weight="600">{escape(title)}</text>']
    tick = y_low
    while tick <= y_high * 1.001:
        label = f"{tick:g}"
        out.append(f'<line class="grid" x1="{left}" x2="{left + PANEL_W}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>')
        out.append(
            f'<text class="muted" x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end">{label}</text>'
        )
        tick *= 10
    for level in levels:
        out.append(f'<line class="grid" x1="{x(level):.1f}" x2="{x(level):.1f}" y1="{PANEL_TOP}" y2="{bottom}"/>')
        out.append(
            f'<text class="muted" x="{x(level):.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">'
            f"{level}</text>"
        )
    out.append(f'<path class="axis" fill="none" d="M{left},{PANEL_TOP}V{bottom}H{left + PANEL_W}"/>')
    out.append(
        f'<text class="fg" x="{left + PANEL_W / 2}" y="{bottom + 36}" font-size="12" text-anchor="middle">'
        "streams at once (log scale)</text>"
    )
    middle = PANEL_TOP + PANEL_H / 2
    out.append(
        f'<text class="fg" font-size="12" text-anchor="middle" transform="translate({left - 50},{middle}) '
        f'rotate(-90)">ms (log scale)</text>'
    )
    for name, label, colour, dash in TARGETS:
        points = series(report, name, value)
        if not points:
            continue
        path = " ".join(f"{x(s):.1f},{y(ms):.1f}" for s, ms in points)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2.5"{dashed} points="{path}">')
        out.append(f"<title>{escape(label)}</title></polyline>")
        for streams, ms in points:
            out.append(
                f'<circle cx="{x(streams):.1f}" cy="{y(ms):.1f}" r="3.5" fill="{colour}">'
                f"<title>{escape(label)}: {streams} streams, {ms:.1f} ms</title></circle>"
            )
    return out


def svg(report: dict[str, Any]) -> str:
    """The whole plot of one run's report."""
    levels = sorted({s for name, *_ in TARGETS for s, _ in series(report, name, "latency_p50_ms")}) or [1]
    date = str(report.get("started", ""))[:10]
    machine = report.get("machine", {})
    seed = sorted(int(level) for level in report.get("seed", {}).get("simulator direct", {}))
    high = sorted(int(level) for level in report.get("high_load", {}).get("simulator direct", {}))
    workloads = f"{seed[0]} to {seed[-1]} streams: 100 tokens each" if seed else ""
    workloads += f"; {', '.join(map(str, high))}: 200 tokens each" if high else ""
    body = [
        f'<rect class="bg" width="{WIDTH}" height="{HEIGHT}" rx="8"/>',
        '<text class="fg" x="24" y="30" font-size="17" font-weight="600">What relaying costs: the same streams '
        "four ways</text>",
        f'<text class="muted" x="24" y="50" font-size="12">{escape(report.get("command", "make bench"))}, {date}, '
        f"{machine.get('cores', '?')} cores, loopback. Medians (p50); {workloads}, at 38 tokens/s.</text>",
    ]
    body += panel(report, PANELS_LEFT[0], "Time to first token beyond the model's own", "ttft_p50_ms", levels)
    body += panel(report, PANELS_LEFT[1], "Token latency: arrival − the simulator's send", "latency_p50_ms", levels)
    x = 24
    for _, label, colour, dash in TARGETS:
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        body.append(f'<line x1="{x}" x2="{x + 26}" y1="76" y2="76" stroke="{colour}" stroke-width="3"{dashed}/>')
        body.append(f'<text class="fg" x="{x + 32}" y="80" font-size="12">{escape(label)}</text>')
        x += 42 + 7 * len(label)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'role="img" aria-labelledby="title">\n'
        '<title id="title">Time to first token and token latency against streams at once: simulator direct, '
        "nginx, the naive relay and clawweb</title>\n"
        f"<style>{STYLE}</style>\n" + "\n".join(body) + "\n</svg>\n"
    )


def main() -> None:
    results = Path(__file__).resolve().parent / "results"
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else results / "latest.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".svg")
    target.write_text(svg(json.loads(source.read_text())))
    print(target)


if __name__ == "__main__":
    main()
