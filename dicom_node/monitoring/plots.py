"""Server-rendered charts for the monitoring page (Pillow, no front-end build): for one model
version on one scanner, the gate distance and the mean structure confidence of each inference
over time, the reference window shaded and its median drawn across."""

from __future__ import annotations

import io
from datetime import datetime

from PIL import Image, ImageDraw

from .drift import Drift

WIDTH, HEIGHT, MARGIN = 640, 170, 44
GREY, BLUE, RED, SHADE, TEXT = (120, 126, 140), (31, 96, 196), (180, 35, 24), (232, 236, 244), (29, 35, 48)


def _panel(draw: ImageDraw.ImageDraw, top: int, title: str, times: list[float], values: list[float],
           t0: float, t1: float, reference_end: float, reference_median: float | None) -> None:
    left, right, bottom = MARGIN, WIDTH - 12, top + HEIGHT - 26
    draw.text((left, top + 2), title, fill=TEXT)
    upper = top + 18
    if not values:
        draw.text((left, upper + 30), "no records", fill=GREY)
        return
    lo, hi = min(values), max(values)
    if reference_median is not None:
        lo, hi = min(lo, reference_median), max(hi, reference_median)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    span = max(t1 - t0, 1.0)

    def x(t: float) -> float:
        return left + (right - left) * (t - t0) / span

    def y(v: float) -> float:
        return bottom - (bottom - upper) * (v - lo) / (hi - lo)

    draw.rectangle([left, upper, min(x(reference_end), right), bottom], fill=SHADE)
    draw.line([left, bottom, right, bottom], fill=GREY)
    draw.line([left, upper, left, bottom], fill=GREY)
    draw.text((2, upper - 4), f"{hi:.2f}", fill=GREY)
    draw.text((2, bottom - 8), f"{lo:.2f}", fill=GREY)
    if reference_median is not None:
        draw.line([left, y(reference_median), right, y(reference_median)], fill=RED, width=1)
    for t, v in zip(times, values):
        cx, cy = x(t), y(v)
        draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=BLUE)


def drift_png(drift: Drift, points: list[tuple[float, float | None, float | None]]) -> bytes:
    """``points``: (time, gate distance, mean confidence) of each gated inference."""
    image = Image.new("RGB", (WIDTH, 2 * HEIGHT + 24), "white")
    draw = ImageDraw.Draw(image)
    t0 = min((p[0] for p in points), default=drift.reference.start)
    t1 = max((p[0] for p in points), default=drift.recent.end)
    draw.text((MARGIN, 4), f"{drift.key}  ({datetime.fromtimestamp(t0):%Y-%m-%d} to {datetime.fromtimestamp(t1):%Y-%m-%d}; "
                           "shaded: reference window)", fill=TEXT)
    distance = [(t, d) for t, d, _ in points if d is not None]
    confidence = [(t, c) for t, _, c in points if c is not None]
    _panel(draw, 20, "gate distance (spreads from the training data)", [t for t, _ in distance], [d for _, d in distance],
           t0, t1, drift.reference.end, drift.reference.distance_median)
    _panel(draw, 20 + HEIGHT, "mean structure confidence", [t for t, _ in confidence], [c for _, c in confidence],
           t0, t1, drift.reference.end, drift.reference.confidence_mean)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
