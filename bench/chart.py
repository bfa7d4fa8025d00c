#!/usr/bin/env python3
"""bench/chart.py: draw bench/run.sh's summary as an SVG chart, with the stdlib only.

    python3 bench/chart.py [RESULTS.md [CHART.svg]]

Reads the markdown summary that bench/run.sh writes (default: bench/results-latest.md)
and writes CHART.svg (default: chart.svg beside the results file) with two panels:

- events/s (200s) against connections, one line per delivery mode (inline, inbox), on a
  log scale, with the same run's `openssl speed` one-core RSA-2048 verify/s as a dashed
  horizontal line (the ceiling one core of RSA verification allows);
- p99 latency (ms) against connections, one line per delivery mode.

Whatever modes and connection counts the run had (the MODES and CONNS knobs) are drawn.
Exits non-zero, writing nothing, when the file holds no results table.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parent.parent

# Okabe-Ito colours (readable for colour-blind readers), one per mode; markers differ too.
STYLE = {
    "inline": ("#0072B2", "circle"),
    "inbox": ("#D55E00", "square"),
}
EXTRA_COLOURS = ["#009E73", "#CC79A7", "#E69F00", "#56B4E9"]
CEILING_COLOUR = "#555555"


def parse(text: str) -> dict:
    """The run's title facts, openssl verify/s and {mode: {conns: row}} from the summary."""
    out: dict = {"title": "", "commit": "", "openssl": None, "rows": {}}
    m = re.search(r"^# (.+)$", text, re.M)
    if m:
        out["title"] = m.group(1).strip()
    m = re.search(r"^- commit: (\S+)", text, re.M)
    if m:
        out["commit"] = m.group(1)
    m = re.search(r"openssl speed[^\n]*?\*\*([\d\s.,]+) verify/s\*\*", text)
    if m:
        out["openssl"] = float(re.sub(r"[\s,]", "", m.group(1)))

    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = split_row(line)
        if not cells or cells[:2] != ["mode", "conns"]:
            continue
        header = cells
        for row_line in lines[i + 2 :]:  # skip the |---| line
            row = split_row(row_line)
            if not row:
                break
            rec = dict(zip(header, row))
            try:
                conns = int(rec["conns"])
                eps = number(rec["events/s (200s)"])
                p99 = number(rec["p99 ms"])
            except (KeyError, ValueError):
                continue
            out["rows"].setdefault(rec["mode"], {})[conns] = {"eps": eps, "p99": p99}
        break
    return out


def split_row(line: str) -> list[str] | None:
    line = line.strip()
    if not (line.startswith("|") and line.endswith("|")):
        return None
    return [c.strip() for c in line[1:-1].split("|")]


def number(cell: str) -> float:
    """A table cell's leading number: '19 086', '3.07', '0 (+2 socket errors)'."""
    m = re.match(r"[\d\s.,]*\d", cell.replace("\u202f", " ").replace("\u00a0", " "))
    if not m:
        raise ValueError(cell)
    return float(re.sub(r"[\s,]", "", m.group(0)))


def fmt(v: float) -> str:
    """19086 -> '19 086'; 3.07 -> '3.07'."""
    if v >= 1000:
        return f"{v:,.0f}".replace(",", "\u2009")
    return f"{v:.2f}"


def tick_label(v: float) -> str:
    if v >= 1000 and v % 1000 == 0:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    """A 1-2-5 log axis covering [lo, hi]: (axis min, axis max, ticks)."""
    lo, hi = lo / 1.15, hi * 1.15  # keep points off the frame
    steps = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 2):
        for m in (1, 2, 5):
            steps.append(m * 10.0**e)
    amin = max(s for s in steps if s <= lo)
    amax = min(s for s in steps if s >= hi)
    return amin, amax, [s for s in steps if amin <= s <= amax]


def linear_ticks(hi: float, target: int = 5) -> tuple[float, float, list[float]]:
    """A 0-based linear axis up to a round step above hi."""
    hi = hi if hi > 0 else 1.0
    raw = hi / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    amax = step * math.ceil(hi / step)
    n = round(amax / step)
    return 0.0, amax, [i * step for i in range(n + 1)]


class Svg:
    def __init__(self, width: int, height: int):
        self.w, self.h = width, height
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#222", rotate=None, extra=""):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}"{tr}{extra}>{escape(s)}</text>'
        )

    def line(self, x1, y1, x2, y2, stroke="#222", width=1.0, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{stroke}" stroke-width="{width}"{d}/>'
        )

    def marker(self, kind, x, y, colour):
        if kind == "square":
            self.add(
                f'<rect x="{x - 4.5:.1f}" y="{y - 4.5:.1f}" width="9" height="9" '
                f'fill="{colour}" stroke="white" stroke-width="1"/>'
            )
        else:
            self.add(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}" '
                f'stroke="white" stroke-width="1"/>'
            )

    def render(self) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
            f'viewBox="0 0 {self.w} {self.h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">'
        )
        bg = f'<rect x="0" y="0" width="{self.w}" height="{self.h}" fill="white"/>'
        return "\n".join([head, bg, *self.parts, "</svg>"]) + "\n"


def panel(svg, x0, y0, w, h, title, ylabel, conns, series, key, log, ceiling=None):
    """One chart: x = connection counts (evenly spaced), y = `key` of each mode's rows."""
    values = [r[key] for rows in series.values() for r in rows.values()]
    if ceiling is not None:
        values.append(ceiling)
    if log and values and min(values) > 0:
        amin, amax, ticks = log_ticks(min(values), max(values))
        to_y = lambda v: y0 + h - (math.log10(v) - math.log10(amin)) / (math.log10(amax) - math.log10(amin)) * h
    else:
        log = False
        amin, amax, ticks = linear_ticks(max(values, default=1.0) * 1.08)
        to_y = lambda v: y0 + h - (v - amin) / (amax - amin) * h
    pad = w / (2 * len(conns)) if conns else w / 2
    to_x = {c: x0 + pad + i * (w - 2 * pad) / max(len(conns) - 1, 1) for i, c in enumerate(conns)}
    if len(conns) == 1:
        to_x = {conns[0]: x0 + w / 2}

    svg.text(x0 + w / 2, y0 - 16, title, size=15, anchor="middle", weight="bold")
    # grid, y ticks
    for t in ticks:
        y = to_y(t)
        svg.line(x0, y, x0 + w, y, stroke="#e3e3e3")
        svg.text(x0 - 8, y + 4, tick_label(t), size=11, anchor="end", fill="#444")
    svg.line(x0, y0, x0, y0 + h, stroke="#444")
    svg.line(x0, y0 + h, x0 + w, y0 + h, stroke="#444")
    for c, x in to_x.items():
        svg.line(x, y0 + h, x, y0 + h + 5, stroke="#444")
        svg.text(x, y0 + h + 19, str(c), size=12, anchor="middle", fill="#222")
    svg.text(x0 + w / 2, y0 + h + 40, "concurrent connections (wrk)", size=12, anchor="middle")
    svg.text(x0 - 52, y0 + h / 2, ylabel + (" (log scale)" if log else ""), size=12,
             anchor="middle", rotate=-90)

    if ceiling is not None:
        y = to_y(ceiling)
        svg.line(x0, y, x0 + w, y, stroke=CEILING_COLOUR, width=1.6, dash="7 4")
        svg.text(x0 + w - 4, y - 6, f"openssl, 1 core: {fmt(ceiling)} verify/s", size=11,
                 anchor="end", fill=CEILING_COLOUR)

    labels: dict[int, list[list]] = {}  # conns -> [label y, text, colour]
    for mode, rows in series.items():
        colour, kind = style_for(mode)
        pts = [(c, to_x[c], to_y(rows[c][key]), rows[c][key]) for c in conns if c in rows]
        if len(pts) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for _, x, y, _ in pts)
            svg.add(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2.2"/>')
        for c, x, y, v in pts:
            svg.marker(kind, x, y, colour)
            labels.setdefault(c, []).append([y + 4, fmt(v), colour])
    # value labels outside the lines' span: left of the first column, right of the others;
    # labels in one column are pushed apart so they do not overlap
    for c, items in labels.items():
        items.sort()
        for a, b in zip(items, items[1:]):
            if b[0] - a[0] < 14:
                b[0] = a[0] + 14
        left = c == conns[0] and len(conns) > 1
        for y, s, colour in items:
            svg.text(to_x[c] + (-10 if left else 10), y, s, size=11,
                     anchor="end" if left else "start", fill=colour, weight="bold")


_extra: dict[str, tuple[str, str]] = {}


def style_for(mode: str) -> tuple[str, str]:
    if mode in STYLE:
        return STYLE[mode]
    if mode not in _extra:
        _extra[mode] = (EXTRA_COLOURS[len(_extra) % len(EXTRA_COLOURS)], "circle")
    return _extra[mode]


def draw(data: dict) -> str:
    series = data["rows"]
    conns = sorted({c for rows in series.values() for c in rows})
    W, H = 960, 470
    svg = Svg(W, H)
    title = "kinde-webhooks on loopback: inline vs inbox delivery"
    sub = data["title"].replace("kinde-webhooks benchmark: ", "run of ") if data["title"] else ""
    if data["commit"]:
        sub += f", commit {data['commit']}"
    svg.text(W / 2, 26, title, size=17, anchor="middle", weight="bold")
    if sub:
        svg.text(W / 2, 46, sub + " (bench/run.sh)", size=12, anchor="middle", fill="#555")

    top, ph = 92, 270
    panel(svg, 95, top, 370, ph, "Throughput", "events/s (200s)", conns, series, "eps",
          log=True, ceiling=data["openssl"])
    panel(svg, 570, top, 360, ph, "p99 latency", "p99 latency (ms)", conns, series, "p99",
          log=False)

    # legend, one row under both panels
    ly = top + ph + 72
    items = [(m, *style_for(m)) for m in series]
    x = 170
    for mode, colour, kind in items:
        svg.line(x, ly, x + 30, ly, stroke=colour, width=2.2)
        svg.marker(kind, x + 15, ly, colour)
        svg.text(x + 38, ly + 4, f"{mode} delivery", size=12)
        x += 160
    if data["openssl"] is not None:
        svg.line(x, ly, x + 30, ly, stroke=CEILING_COLOUR, width=1.6, dash="7 4")
        svg.text(x + 38, ly + 4, "openssl speed rsa2048 verify/s, one core (same run)", size=12)
    return svg.render()


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else ROOT / "bench" / "results-latest.md"
    dst = Path(argv[2]) if len(argv) > 2 else src.parent / "chart.svg"
    try:
        data = parse(src.read_text(encoding="utf-8"))
    except OSError as e:
        print(f"chart.py: cannot read {src}: {e}", file=sys.stderr)
        return 1
    if not data["rows"]:
        print(f"chart.py: no results table (| mode | conns | ...) in {src}", file=sys.stderr)
        return 1
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text(draw(data), encoding="utf-8")
    os.replace(tmp, dst)
    print(f"chart.py: wrote {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
