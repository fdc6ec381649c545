"""The quality report: one self-contained HTML page plus GX Data Docs pages per stage.

Everything comes from the quality store (see :mod:`operators.quality.batch`): the
validations and expectations Delta tables written by the batch validators, and the
accounting and dead-letter snapshots written by :func:`~operators.quality.batch.record_accounting`.
The index page draws its plots as inline SVG (no JavaScript, no CDN: the report opens
offline). For the latest validation of each stage, GX's own Data Docs renderer writes a
page under ``gx/``; GX's page template links CSS/JS from CDNs, which are stripped so the
page never reaches the network (it renders unstyled but complete).
"""

from __future__ import annotations

import html
import json
import os
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from operators.quality.batch import QualityStore

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
td.t,th.t{text-align:left}
.bad{color:#b00}.ok{color:#070}
code{font-size:12px}
"""


def fmt_ns(ns: int | None) -> str:
    if ns is None:
        return ""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _latest_per_stage(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows of each stage's most recent snapshot (rows are sorted by ts)."""
    last_ts: dict[str, int] = {}
    for r in rows:
        last_ts[r["stage"]] = r["ts"]
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["ts"] == last_ts[r["stage"]]:
            out[r["stage"]].append(r)
    return dict(out)


def collect(
    store: str | Path, since: int | None = None, until: int | None = None, buckets: int = 20
) -> dict[str, Any]:
    """The report's numbers, straight from the store (``since``/``until`` in ns, inclusive)."""
    qs = QualityStore(store)
    vals = qs.read("validations", since, until)
    exps = qs.read("expectations", since, until)
    acc = qs.read("accounting", since, until)
    dls = qs.read("dead_letters", since, until)

    summary: dict[str, dict[str, Any]] = {}
    for v in vals:
        s = summary.setdefault(
            v["stage"],
            {"batches": 0, "passed": 0, "failed": 0, "errored": 0, "rows": 0},
        )
        s["batches"] += 1
        s["rows"] += v["rows"]
        if v["success"]:
            s["passed"] += 1
        elif v["error"]:
            s["errored"] += 1
        else:
            s["failed"] += 1
        s["skipped_batches"] = v["skipped_batches"]  # cumulative: the latest wins
        s["skipped_rows"] = v["skipped_rows"]
        s["latest_batch"] = v
    for s in summary.values():
        s["pass_rate"] = s["passed"] / s["batches"]

    series: dict[str, list[tuple[int, float, int]]] = {}
    if vals:
        lo, hi = vals[0]["ts"], vals[-1]["ts"]
        width = max(1, -(-(hi - lo + 1) // buckets))
        tally: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        for v in vals:
            b = tally[v["stage"]][(v["ts"] - lo) // width]
            b[0] += int(bool(v["success"]))
            b[1] += 1
        for stage, by in tally.items():
            series[stage] = [(lo + k * width, p / n, n) for k, (p, n) in sorted(by.items())]

    accounting = {}
    for stage, rows in _latest_per_stage(acc).items():
        accounting[stage] = {
            "ts": rows[0]["ts"],
            **{
                k: sum(r[k] for r in rows)
                for k in ("records_in", "out", "dead_lettered", "duplicates")
            },
        }
    dead = {
        stage: {r["reason"]: r["count"] for r in rows}
        for stage, rows in _latest_per_stage(dls).items()
    }
    failing = sorted(
        (e for e in exps if not e["success"]), key=lambda e: (e["ts"], e["batch_id"]), reverse=True
    )
    return {
        "since": since,
        "until": until,
        "summary": dict(sorted(summary.items())),
        "series": dict(sorted(series.items())),
        "accounting": dict(sorted(accounting.items())),
        "dead_letters": dict(sorted(dead.items())),
        "failing": failing,
    }


def _svg_lines(series: dict[str, list[tuple[int, float, int]]]) -> str:
    w, h, left, bottom, top, right = 760, 260, 48, 36, 12, 150
    pts = [t for s in series.values() for t, _, _ in s]
    if not pts:
        return "<p>No validations in this range.</p>"
    t0, t1 = min(pts), max(pts)
    span = max(1, t1 - t0)
    pw, ph = w - left - right, h - top - bottom

    def x(t: int) -> float:
        return left + (t - t0) / span * pw if t1 > t0 else left + pw / 2

    def y(rate: float) -> float:
        return top + (1 - rate) * ph

    parts = [
        f'<svg id="pass-rate-plot" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="pass rate per stage over time">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>',
    ]
    for frac in (0, 0.25, 0.5, 0.75, 1):
        yy = y(frac)
        parts.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{yy + 4:.1f}" font-size="11" text-anchor="end">'
            f"{int(frac * 100)}%</text>"
        )
    parts.append(
        f'<text x="{left}" y="{h - 8}" font-size="11">{html.escape(fmt_ns(t0))}</text>'
        f'<text x="{left + pw}" y="{h - 8}" font-size="11" text-anchor="end">'
        f"{html.escape(fmt_ns(t1))}</text>"
    )
    for i, (stage, pts_) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        coords = " ".join(f"{x(t):.1f},{y(r):.1f}" for t, r, _ in pts_)
        parts.append(
            f'<polyline class="series" data-stage="{html.escape(stage)}" fill="none" '
            f'stroke="{color}" stroke-width="2" points="{coords}"/>'
        )
        for t, r, n in pts_:
            parts.append(
                f'<circle cx="{x(t):.1f}" cy="{y(r):.1f}" r="3" fill="{color}">'
                f"<title>{html.escape(stage)} {html.escape(fmt_ns(t))}: "
                f"{r:.0%} of {n} batches passed</title></circle>"
            )
        ly = top + 14 + i * 16
        parts.append(
            f'<rect x="{w - right + 12}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{w - right + 28}" y="{ly}" font-size="12">{html.escape(stage)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _svg_bars(dead: dict[str, dict[str, int]]) -> str:
    items = [(f"{s} {r}", n) for s, by in dead.items() for r, n in sorted(by.items())]
    if not items:
        return ""
    top = max(n for _, n in items) or 1
    w, row, label = 640, 18, 260
    h = row * len(items) + 8
    parts = [
        f'<svg id="dead-letter-plot" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="dead letters by reason">'
    ]
    for i, (name, n) in enumerate(items):
        bw = (w - label - 60) * n / top
        yy = 4 + i * row
        parts.append(
            f'<text x="{label - 6}" y="{yy + 12}" font-size="11" text-anchor="end">'
            f"{html.escape(name)}</text>"
            f'<rect x="{label}" y="{yy}" width="{bw:.1f}" height="{row - 4}" fill="#d62728"/>'
            f'<text x="{label + bw + 4:.1f}" y="{yy + 12}" font-size="11">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(table_id: str, head: list[str], rows: list[list[Any]], text_cols: int = 1) -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        cls = ' class="t"' if i < text_cols else ""
        return f"<{tag}{cls}>{html.escape('' if v is None else str(v))}</{tag}>"

    out = [f'<table id="{table_id}"><thead><tr>']
    out += [cell("th", i, h) for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for r in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


_EXTERNAL = re.compile(
    r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>|<link[^>]*\bhref=\"https?://[^\"]*\"[^>]*/?>"
    r"|<img[^>]*\bsrc=\"https?://[^\"]*\"[^>]*/?>",
    re.IGNORECASE,
)


def render_gx_page(result: dict[str, Any]) -> str:
    """A GX Data Docs validation page for one stored result, with CDN links stripped."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResultSchema,
    )
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    loaded = ExpectationSuiteValidationResultSchema().load(json.loads(json.dumps(result)))
    document = ValidationResultsPageRenderer().render(loaded)
    page: str = DefaultJinjaPageView().render(document)
    return _EXTERNAL.sub("", page)


def build_report(
    store: str | Path,
    out: str | Path,
    since: int | None = None,
    until: int | None = None,
    gx_pages: bool = True,
    max_failures: int = 25,
) -> Path:
    """Write ``out/index.html`` (and ``out/gx/<stage>.html``); returns the index path."""
    data = collect(store, since, until)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    gx_links: dict[str, str] = {}
    gx_notes: list[str] = []
    if gx_pages:
        for stage, s in data["summary"].items():
            v = s["latest_batch"]
            try:
                doc = json.loads(Path(v["json_path"]).read_text())
                if not doc.get("result"):
                    continue
                page = render_gx_page(doc["result"])
            except Exception as exc:  # a report with a missing page beats no report
                gx_notes.append(f"{stage}: GX page not rendered ({type(exc).__name__}: {exc})")
                continue
            (out / "gx").mkdir(exist_ok=True)
            (out / "gx" / f"{stage}.html").write_text(page)
            gx_links[stage] = f"gx/{stage}.html"

    rng = f"{fmt_ns(since) or 'the beginning'} to {fmt_ns(until) or 'now'}"
    summary_rows = [
        [
            stage,
            s["batches"],
            s["passed"],
            s["failed"],
            s["errored"],
            f"{s['pass_rate'] * 100:.1f}%",
            s["rows"],
            s["skipped_batches"],
            s["skipped_rows"],
            fmt_ns(s["latest_batch"]["ts"]),
        ]
        for stage, s in data["summary"].items()
    ]
    acc_rows = [
        [
            stage,
            a["records_in"],
            a["out"],
            a["dead_lettered"],
            a["duplicates"],
            a["records_in"] - a["out"] - a["dead_lettered"] - a["duplicates"],
            fmt_ns(a["ts"]),
        ]
        for stage, a in data["accounting"].items()
    ]
    dl_rows = [[s, r, n] for s, by in data["dead_letters"].items() for r, n in sorted(by.items())]
    fail_rows = [
        [
            e["stage"],
            fmt_ns(e["ts"]),
            e["batch_id"],
            e["expectation_type"],
            e["column"],
            e["unexpected_count"],
            e["observed_value"],
            e["examples"],
            e["exception"],
        ]
        for e in data["failing"][:max_failures]
    ]
    links = "".join(
        f'<li><a href="{html.escape(href)}">{html.escape(stage)}</a></li>'
        for stage, href in sorted(gx_links.items())
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in gx_notes)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Trade2026 data quality</title>
<style>{_CSS}</style></head><body>
<h1>Trade2026 data quality</h1>
<p id="range">Results from {html.escape(rng)}.</p>
<h2>Batch validation per stage</h2>
{
        _table(
            "summary",
            [
                "stage",
                "batches",
                "passed",
                "failed",
                "errored",
                "pass rate",
                "rows validated",
                "skipped batches",
                "skipped rows",
                "latest",
            ],
            summary_rows,
        )
    }
<h2>Pass rate per stage over time</h2>
{_svg_lines(data["series"])}
<h2>In/out accounting per stage</h2>
<p>Each stage's latest snapshot in the range (cumulative since the flow started).
in = out + dead-lettered + duplicates; "unaccounted" must be 0.</p>
{
        _table(
            "accounting",
            ["stage", "in", "out", "dead-lettered", "duplicates", "unaccounted", "snapshot"],
            acc_rows,
        )
    }
<h2>Dead letters by reason</h2>
{_table("dead-letters", ["stage", "reason", "count"], dl_rows, text_cols=2)}
{_svg_bars(data["dead_letters"])}
<h2>Latest failing expectations</h2>
{
        _table(
            "failing",
            [
                "stage",
                "time",
                "batch",
                "expectation",
                "column",
                "unexpected",
                "observed",
                "examples",
                "error",
            ],
            fail_rows,
            text_cols=5,
        )
    }
<h2>Great Expectations Data Docs (latest batch per stage)</h2>
<ul id="gx-pages">{links}</ul>
<ul id="gx-notes">{notes}</ul>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    return index


__all__ = ["build_report", "collect", "fmt_ns", "render_gx_page"]
