"""Inline SVG charts, drawn in Python: no script, no fonts or images fetched.

Every label passes through `html.escape`; numbers are formatted here. Hovering
a bar shows its `<title>` (plain SVG, no JavaScript).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape

OK = "#3b6fb6"
REFUSED = "#c8372d"
BYTES = "#6a8f3a"
GRID = "#d9d9d9"
TEXT = "#333"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    return f"{n:,.0f}"


def _time_label(ts: float, span: float) -> str:
    dt = datetime.fromtimestamp(ts, timezone.utc)
    if span <= 120:
        return dt.strftime("%H:%M:%S")
    if span <= 2 * 86400:
        return dt.strftime("%H:%M")
    return dt.strftime("%m-%d %H:%M")


def bins(times: Sequence[float], t0: float, t1: float, n: int, weights: Sequence[float] | None = None) -> list[float]:
    """Sum of `weights` (or counts) of `times` in n equal buckets over [t0, t1]."""
    out = [0.0] * n
    span = (t1 - t0) or 1.0
    scale = n / span
    last = n - 1
    if weights is None:
        for t in times:
            i = int((t - t0) * scale)
            out[i if 0 <= i <= last else (last if i > last else 0)] += 1
    else:
        for t, w in zip(times, weights):
            i = int((t - t0) * scale)
            out[i if 0 <= i <= last else (last if i > last else 0)] += w
    return out


def _frame(width: int, height: int, label: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{escape(label)}" class="chart">']


def _axes(parts: list[str], left: int, top: int, w: int, h: int, ymax: float, t0: float, t1: float,
          yfmt) -> None:
    for frac in (0, 0.5, 1):
        y = top + h - frac * h
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="{GRID}" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{TEXT}">'
                     f'{escape(yfmt(ymax * frac))}</text>')
    span = t1 - t0
    for k in range(5):
        x = left + w * k / 4
        ts = t0 + span * k / 4
        anchor = "start" if k == 0 else "end" if k == 4 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="{anchor}" font-size="11" fill="{TEXT}">'
                     f'{escape(_time_label(ts, span))}</text>')


def timeline(ok: Sequence[float], refused: Sequence[float], t0: float | None, t1: float | None,
             n: int = 120, width: int = 1100, height: int = 190, label: str = "requests and refusals over time") -> str:
    """Stacked bars: allowed requests (blue) under refusals (red), per time bucket."""
    if t0 is None or t1 is None or (not ok and not refused):
        return '<p class="empty">No requests in this period.</p>'
    if t1 - t0 < 1:
        t1 = t0 + 1
    n = max(1, min(n, int(t1 - t0) + 1))
    a, r = bins(ok, t0, t1, n), bins(refused, t0, t1, n)
    ymax = max((x + y for x, y in zip(a, r)), default=1) or 1
    left, top, w, h = 56, 10, width - 66, height - 36
    parts = _frame(width, height, label)
    _axes(parts, left, top, w, h, ymax, t0, t1, human_count)
    bw = w / n
    step = (t1 - t0) / n
    for i in range(n):
        if not a[i] and not r[i]:
            continue
        x = left + i * bw
        ha = h * a[i] / ymax
        hr = h * r[i] / ymax
        start = _time_label(t0 + i * step, t1 - t0)
        tip = escape(f"{start}: {a[i]:,.0f} allowed, {r[i]:,.0f} refused")
        parts.append(f'<g><title>{tip}</title>')
        if ha:
            parts.append(f'<rect x="{x:.2f}" y="{top + h - ha:.2f}" width="{max(bw - 0.5, 0.5):.2f}" '
                         f'height="{ha:.2f}" fill="{OK}"/>')
        if hr:
            parts.append(f'<rect x="{x:.2f}" y="{top + h - ha - hr:.2f}" width="{max(bw - 0.5, 0.5):.2f}" '
                         f'height="{hr:.2f}" fill="{REFUSED}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def volume_over_time(times: Sequence[float], values: Sequence[int], t0: float | None, t1: float | None,
                     n: int = 120, width: int = 1100, height: int = 170,
                     label: str = "bytes sent over time") -> str:
    if t0 is None or t1 is None or not times:
        return '<p class="empty">No request bytes were sent.</p>'
    if t1 - t0 < 1:
        t1 = t0 + 1
    n = max(1, min(n, int(t1 - t0) + 1))
    b = bins(times, t0, t1, n, values)
    ymax = max(b) or 1
    left, top, w, h = 72, 10, width - 82, height - 36
    parts = _frame(width, height, label)
    _axes(parts, left, top, w, h, ymax, t0, t1, human_bytes)
    bw = w / n
    step = (t1 - t0) / n
    for i, v in enumerate(b):
        if not v:
            continue
        hh = h * v / ymax
        tip = escape(f"{_time_label(t0 + i * step, t1 - t0)}: {human_bytes(v)} sent")
        parts.append(f'<rect x="{left + i * bw:.2f}" y="{top + h - hh:.2f}" width="{max(bw - 0.5, 0.5):.2f}" '
                     f'height="{hh:.2f}" fill="{BYTES}"><title>{tip}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def hbars(items: Sequence[tuple[str, float, float]], width: int = 1100, label: str = "per-host volume",
          names=("sent", "received")) -> str:
    """Horizontal bars of the first value per label (bytes), the second one written beside it."""
    if not items:
        return '<p class="empty">No request bytes were sent.</p>'
    row = 20
    left = 330
    height = row * len(items) + 4
    w = width - left - 190
    vmax = max(a for _, a, _ in items) or 1
    parts = _frame(width, height, label)
    for i, (name, a, b) in enumerate(items):
        y = 4 + i * row
        shown = name if len(name) <= 48 else name[:47] + "…"
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end" font-size="12" fill="{TEXT}">'
                     f'{escape(shown)}<title>{escape(name)}</title></text>')
        wa = w * a / vmax
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{max(wa, 1):.1f}" height="14" fill="{BYTES}">'
                     f'<title>{escape(f"{name}: {human_bytes(a)} {names[0]}, {human_bytes(b)} {names[1]}")}</title>'
                     "</rect>")
        parts.append(f'<text x="{left + wa + 6:.1f}" y="{y + 13}" font-size="11" fill="{TEXT}">'
                     f'{escape(human_bytes(a))} {escape(names[0])} · {escape(human_bytes(b))} {escape(names[1])}</text>')
    parts.append("</svg>")
    return "".join(parts)
