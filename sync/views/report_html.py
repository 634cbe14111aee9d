"""`tasksync report --html FILE`: the report as one self-contained page, charts drawn as inline
SVG by this module (no script, no network, no fonts to fetch), light and dark by the reader's
preference, every chart's numbers also in a table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from sync.views.report import ALL, Report, Row

STATUSES = (
    ("succeeded", "ok", "succeeded"),
    ("failed", "fail", "failed"),
    ("cancelled", "cancel", "cancelled"),
    ("unfinished", "open", "unfinished"),
)
SERIES = (
    ("queue", "p50", "q50", "queue p50"),
    ("queue", "p95", "q95", "queue p95"),
    ("run", "p50", "r50", "run p50"),
    ("run", "p95", "r95", "run p95"),
)
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
W, H, PAD_L, PAD_B, PAD_T = 760, 240, 56, 34, 12

CSS = """
:root { --bg: #ffffff; --fg: #1d1d1f; --muted: #6e6e73; --grid: #d8d8dc; --ok: #2e7d32;
  --fail: #c62828; --cancel: #8e8e93; --open: #ef8f00; --q50: #1565c0; --q95: #64b5f6;
  --r50: #6a1b9a; --r95: #ce93d8; --heat: #1565c0; --bar: #c62828; color-scheme: light dark; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #161618; --fg: #ececf0; --muted: #a1a1a6; --grid: #3a3a3e; --ok: #66bb6a;
    --fail: #ef5350; --cancel: #aeaeb2; --open: #ffb74d; --q50: #64b5f6; --q95: #1e88e5;
    --r50: #ce93d8; --r95: #8e24aa; --heat: #64b5f6; --bar: #ef5350; } }
body { background: var(--bg); color: var(--fg); font: 14px/1.45 system-ui, sans-serif;
  margin: 2rem auto; max-width: 820px; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2.5rem; }
figure { margin: 1.5rem 0; } figcaption { font-weight: 600; margin-bottom: .4rem; }
svg { display: block; width: 100%; height: auto; }
svg text { fill: var(--muted); font-size: 11px; }
svg .grid { stroke: var(--grid); stroke-width: 1; }
.ok { fill: var(--ok); } .fail { fill: var(--fail); } .cancel { fill: var(--cancel); }
.open { fill: var(--open); } .bar { fill: var(--bar); } .heat { fill: var(--heat); }
.line { fill: none; stroke-width: 2; }
.q50 { stroke: var(--q50); } .q95 { stroke: var(--q95); stroke-dasharray: 5 3; }
.r50 { stroke: var(--r50); } .r95 { stroke: var(--r95); stroke-dasharray: 5 3; }
.key { display: flex; gap: 1rem; flex-wrap: wrap; color: var(--muted); font-size: 12px; }
.key span::before { content: ""; display: inline-block; width: .8em; height: .8em;
  margin-right: .3em; vertical-align: -0.1em; background: var(--c); }
table { border-collapse: collapse; font-size: 12px; margin-top: .5rem; }
th, td { padding: .15rem .5rem; text-align: right; border-bottom: 1px solid var(--grid); }
th:first-child, td:first-child { text-align: left; white-space: nowrap; }
.scroll { max-height: 16rem; overflow: auto; }
.note { color: var(--muted); }
"""


def _num(value: float | int | None, scale: float = 1.0, digits: int = 1) -> str:
    return "–" if value is None else f"{value / scale:,.{digits}f}"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], caption: str) -> str:
    out = [f'<div class="scroll"><table><caption class="note">{escape(caption)}</caption><tr>']
    out += [f'<th scope="col">{escape(h)}</th>' for h in head]
    out.append("</tr>")
    for row in rows:
        cells = [f"<td>{escape(str(c))}</td>" for c in row]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def _nice(top: float) -> float:
    """A round axis maximum at or above `top`."""
    if top <= 0:
        return 1.0
    step = 10.0 ** len(str(int(top))) / 10
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * step >= top:
            return m * step
    return float(top)


def _axes(ymax: float, labels: Sequence[str], unit: str) -> list[str]:
    """Horizontal grid lines with values, and up to 8 period labels along the bottom."""
    out = []
    for k in range(5):
        y = PAD_T + (H - PAD_T - PAD_B) * (1 - k / 4)
        out.append(f'<line class="grid" x1="{PAD_L}" x2="{W}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_num(ymax * k / 4, digits=0 if ymax >= 8 else 1)}{unit}</text>"
        )
    every = max(1, -(-len(labels) // 8))
    slot = (W - PAD_L) / max(len(labels), 1)
    for i, name in enumerate(labels):
        if i % every == 0:
            x = PAD_L + slot * (i + 0.5)
            out.append(f'<text x="{x:.1f}" y="{H - 12}" text-anchor="middle">{escape(name)}</text>')
    return out


def _svg(body: list[str], label: str) -> str:
    return (
        f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def volume_chart(rows: list[Row]) -> str:
    """Tasks per period, stacked by status."""
    totals = [r.succeeded + r.failed + r.cancelled + r.unfinished for r in rows]
    ymax = _nice(max(totals, default=0))
    body = _axes(ymax, [r.period for r in rows], "")
    slot = (W - PAD_L) / max(len(rows), 1)
    span = H - PAD_T - PAD_B
    for i, r in enumerate(rows):
        x, y = PAD_L + slot * i + slot * 0.1, H - PAD_B
        for attr, cls, name in STATUSES:
            n = getattr(r, attr)
            if not n:
                continue
            h = span * n / ymax
            y -= h
            body.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
                f'height="{h:.1f}"><title>{escape(r.period)}: {n} {name}</title></rect>'
            )
    key = "".join(f'<span style="--c: var(--{c})">{n}</span>' for _a, c, n in STATUSES)
    table = _table(
        ["period", "tasks", "succeeded", "failed", "cancelled", "unfinished", "success %"],
        (
            (
                r.period,
                r.tasks,
                r.succeeded,
                r.failed,
                r.cancelled,
                r.unfinished,
                _num(r.success_rate),
            )
            for r in rows
        ),
        "Tasks per period by status",
    )
    return (
        _svg(body, "Tasks per period, stacked by status") + f'<div class="key">{key}</div>' + table
    )


def times_chart(rows: list[Row]) -> str:
    """p50 and p95 of queue and run time per period, in seconds."""
    values = [getattr(getattr(r, m), p) for r in rows for m, p, _c, _n in SERIES]
    ymax = _nice(max((v / 1000 for v in values if v is not None), default=0))
    body = _axes(ymax, [r.period for r in rows], "s")
    slot = (W - PAD_L) / max(len(rows), 1)
    span = H - PAD_T - PAD_B
    for measure, pct, cls, name in SERIES:
        points = []
        for i, r in enumerate(rows):
            v = getattr(getattr(r, measure), pct)
            if v is not None:
                x = PAD_L + slot * (i + 0.5)
                points.append(f"{x:.1f},{H - PAD_B - span * (v / 1000) / ymax:.1f}")
        if len(points) == 1:  # one period: a short level line, still visible
            px, py = points[0].split(",")
            points = [f"{float(px) - slot * 0.3:.1f},{py}", f"{float(px) + slot * 0.3:.1f},{py}"]
        if points:
            body.append(
                f'<polyline class="line {cls}" points="{" ".join(points)}">'
                f"<title>{escape(name)}</title></polyline>"
            )
    key = "".join(f'<span style="--c: var(--{c})">{escape(n)}</span>' for _m, _p, c, n in SERIES)
    table = _table(
        [
            "period",
            "queue p50 s",
            "queue p95 s",
            "queue max s",
            "run p50 s",
            "run p95 s",
            "run max s",
        ],
        (
            [
                r.period,
                _num(r.queue.p50, 1000),
                _num(r.queue.p95, 1000),
                _num(r.queue.max, 1000),
                _num(r.run.p50, 1000),
                _num(r.run.p95, 1000),
                _num(r.run.max, 1000),
            ]
            for r in rows
        ),
        "Queue and run time per period, seconds",
    )
    return (
        _svg(body, "Queue and run time per period, p50 and p95")
        + f'<div class="key">{key}</div>'
        + table
    )


def reasons_chart(reasons: list[tuple[str, int]], other: int) -> str:
    """The top failure reasons as horizontal bars."""
    if not reasons:
        return '<p class="note">No failed tasks in this range.</p>'
    top = max(n for _r, n in reasons)
    row_h = 22
    height = row_h * len(reasons) + 8
    body = []
    for i, (reason, n) in enumerate(reasons):
        y = 4 + i * row_h
        width = (W - 330) * n / top
        short = reason if len(reason) <= 48 else reason[:47] + "…"
        body.append(
            f'<text x="0" y="{y + 14}">{escape(short)}</text>'
            f'<rect class="bar" x="300" y="{y + 3}" width="{max(width, 1):.1f}" '
            f'height="{row_h - 8}">'
            f"<title>{escape(reason)}: {n}</title></rect>"
            f'<text x="{300 + width + 6:.1f}" y="{y + 14}">{n}</text>'
        )
    svg = (
        f'<svg viewBox="0 0 {W} {height}" role="img" aria-label="Top failure reasons" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )
    rows = [*reasons, *([("(other reasons)", other)] if other else [])]
    return svg + _table(
        ["reason", "failed tasks"], rows, "Failure reasons, ids and numbers as <id>, <n>"
    )


def heat_chart(heat: list[list[int]], tz: str) -> str:
    """Tasks by weekday (rows) and hour of day (columns)."""
    top = max((n for day in heat for n in day), default=0) or 1
    cell_w, cell_h, left, head = (W - 50) / 24, 24, 44, 18
    body = []
    for hour in range(0, 24, 3):
        x = left + cell_w * (hour + 0.5)
        body.append(f'<text x="{x:.1f}" y="12" text-anchor="middle">{hour:02d}</text>')
    for d, name in enumerate(DAYS):
        y = head + d * cell_h
        body.append(f'<text x="0" y="{y + 16}">{name}</text>')
        for hour in range(24):
            n = heat[d][hour]
            opacity = 0.06 + 0.94 * n / top
            body.append(
                f'<rect class="heat" x="{left + hour * cell_w:.1f}" y="{y}" '
                f'width="{cell_w - 2:.1f}" height="{cell_h - 2}" fill-opacity="{opacity:.2f}">'
                f"<title>{name} {hour:02d}:00 {escape(tz)}: {n} tasks</title></rect>"
            )
    svg = (
        f'<svg viewBox="0 0 {W} {head + 7 * cell_h + 4}" role="img" '
        f'aria-label="Tasks by weekday and hour of day" xmlns="http://www.w3.org/2000/svg">'
        + "".join(body)
        + "</svg>"
    )
    table = _table(
        ["day", *(f"{h:02d}" for h in range(24))],
        ([name, *heat[d]] for d, name in enumerate(DAYS)),
        f"Tasks by weekday and hour ({tz})",
    )
    return svg + table


def _figure(caption: str, body: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{body}</figure>"


DETAIL_HEAD = (
    "period",
    "action",
    "tasks",
    "ok",
    "failed",
    "cancelled",
    "unfinished",
    "success %",
    "queue p50 s",
    "queue p95 s",
    "run p50 s",
    "run p95 s",
)


def _detail(r: Row) -> list[Any]:
    return [
        r.period,
        r.action,
        r.tasks,
        r.succeeded,
        r.failed,
        r.cancelled,
        r.unfinished,
        _num(r.success_rate),
        _num(r.queue.p50, 1000),
        _num(r.queue.p95, 1000),
        _num(r.run.p50, 1000),
        _num(r.run.p95, 1000),
    ]


def _images(counts: dict[str, int] | None) -> str:
    if not counts:
        return ""
    return (
        f'<p class="note">Images (all time): {counts["fetched"]} fetched '
        f"({counts['bytes'] / 1e6:,.1f} MB on disk), {counts['pending']} pending, "
        f"{counts['failed']} failed, {counts['expired']} expired.</p>"
    )


def _span(report: Report) -> str:
    ends = [f"{t:%Y-%m-%d %H:%M} UTC" for t in (report.since, report.until) if t is not None]
    if not ends:
        return "everything archived"
    if report.since is None:
        return f"before {ends[0]}"
    return " to ".join(ends) if report.until is not None else f"from {ends[0]}"


def render_html(report: Report) -> str:
    """The whole page."""
    by, tz = report.by, escape(report.tz)
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>tasksync report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>tasksync report</h1>",
        f'<p class="note">By {by}; {by}s and hours in {tz}; tasks by submit time, '
        f"{escape(_span(report))}.</p>",
    ]
    if report.undated:
        parts.append(
            f'<p class="note">{report.undated} tasks have no submit time and are in no period.</p>'
        )
    if not report.rows:
        parts.append("<p>No tasks in this range.</p>")
    for source in report.sources:
        overall = [r for r in report.rows if r.source == source and r.action == ALL]
        reasons = report.reasons.get(source, [])
        heat = report.heat.get(source, [[0] * 24 for _ in range(7)])
        parts += [
            f"<h2>Source {escape(source)}</h2>",
            _figure(f"Tasks per {by}, by status", volume_chart(overall)),
            _figure(f"Queue and run time per {by} (seconds)", times_chart(overall)),
            _figure(
                "Top failure reasons",
                reasons_chart(reasons, report.other_reasons.get(source, 0)),
            ),
            _figure(f"Tasks by weekday and hour ({report.tz})", heat_chart(heat, report.tz)),
            _images(report.images.get(source)),
            f"<h3>Per {by} and action</h3>",
            _table(
                DETAIL_HEAD,
                (_detail(r) for r in report.rows if r.source == source and r.action != ALL),
                f"Per {by} and action",
            ),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
