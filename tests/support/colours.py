"""Colours as a browser computed them, and WCAG 2's contrast ratio between them (what axe and a reader measure)."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Locator

RGB = tuple[float, float, float]

# The element's text colour and the background colours from it up to <html> (a transparent one lets the next show).
_LAYERS = """(element) => {
  const layers = [];
  for (let node = element; node; node = node.parentElement) layers.push(getComputedStyle(node).backgroundColor);
  return { color: getComputedStyle(element).color, layers };
}"""


def parse(css: str) -> tuple[RGB, float]:
    """``rgb(r, g, b)`` or ``rgba(r, g, b, a)`` (Chromium's computed form) → ((r, g, b), alpha)."""
    numbers = [float(n) for n in re.findall(r"[\d.]+", css)]
    assert css.startswith("rgb") and len(numbers) in (3, 4), css
    return (numbers[0], numbers[1], numbers[2]), numbers[3] if len(numbers) == 4 else 1.0


def _over(top: RGB, alpha: float, under: RGB) -> RGB:
    return (
        top[0] * alpha + under[0] * (1 - alpha),
        top[1] * alpha + under[1] * (1 - alpha),
        top[2] * alpha + under[2] * (1 - alpha),
    )


def luminance(rgb: RGB) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2])


def contrast(a: RGB, b: RGB) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def colours(locator: Locator) -> tuple[RGB, RGB]:
    """(text, background) of an element as seen: its background blended over its ancestors' (white under all)."""
    found: dict[str, Any] = locator.evaluate(_LAYERS)
    background: RGB = (255.0, 255.0, 255.0)
    for layer in reversed(found["layers"]):
        rgb, alpha = parse(layer)
        background = _over(rgb, alpha, background)
    text, alpha = parse(found["color"])
    return _over(text, alpha, background), background


def text_contrast(locator: Locator) -> float:
    text, background = colours(locator)
    return contrast(text, background)
