"""``trade2026 status``: every running flow's throughput, lag, backlog and dead letters.

It reads the same Prometheus endpoints Grafana does (``trade2026 run --metrics-port``),
so an operator on a box with no Grafana sees the same numbers, and a script can use
``--once --json``. Rates are counter deltas between two scrapes, so a counter reset (a
restarted flow) shows as a gap for one round, never as a negative rate.

Exit codes: 0 every endpoint answered; 1 some did not; 4 none did.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import click

from trade2026 import exitcodes

ENV_ENDPOINTS = "TRADE2026_METRICS_ENDPOINTS"

_BACKLOG_METRICS = (
    "trade2026_sink_backlog",
    "trade2026_questdb_backlog_rows",
    "trade2026_questdb_spill_rows",
)


@dataclass
class StageSnapshot:
    records_in: float = 0.0
    out: float = 0.0
    dead_lettered: float = 0.0
    duplicates: float = 0.0
    #: (upper bound, cumulative count) of the latency histogram, summed over labels.
    latency_buckets: dict[float, float] = field(default_factory=dict)

    @property
    def unaccounted(self) -> float:
        return self.records_in - self.out - self.dead_lettered - self.duplicates


@dataclass
class EndpointSnapshot:
    """What one scrape of one endpoint said (``error`` set when it did not answer)."""

    endpoint: str
    taken_at: float
    error: str | None = None
    flow: str = "-"
    process_id: str = "-"
    stages: dict[str, StageSnapshot] = field(default_factory=dict)
    dead_letters: dict[tuple[str, str], float] = field(default_factory=dict)
    problems: dict[tuple[str, str], float] = field(default_factory=dict)
    lag: float = 0.0
    backlog: float = 0.0
    disconnects: float = 0.0

    @property
    def up(self) -> bool:
        return self.error is None


def normalize_endpoint(raw: str) -> str:
    """``host:port`` and ``http://host:port`` both mean ``http://host:port/metrics``."""
    url = raw.strip()
    if "://" not in url:
        url = f"http://{url}"
    scheme, _, rest = url.partition("://")
    if "/" not in rest:
        url = f"{scheme}://{rest}/metrics"
    return url


def parse_metrics(endpoint: str, text: str, taken_at: float) -> EndpointSnapshot:
    """Fold a Prometheus text exposition into per-stage totals."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = EndpointSnapshot(endpoint=endpoint, taken_at=taken_at)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == "trade2026_stage_records_total":
                st = snap.stages.setdefault(labels.get("stage", "?"), StageSnapshot())
                outcome = labels.get("outcome")
                if outcome == "in":
                    st.records_in += value
                elif outcome == "out":
                    st.out += value
                elif outcome == "dead_lettered":
                    st.dead_lettered += value
                elif outcome == "duplicate":
                    st.duplicates += value
            elif name == "trade2026_dead_letters_total":
                key = (labels.get("stage", "?"), labels.get("reason", "?"))
                snap.dead_letters[key] = snap.dead_letters.get(key, 0.0) + value
            elif name == "trade2026_sequence_problems_total":
                key = (labels.get("stage", "?"), labels.get("problem", "?"))
                snap.problems[key] = snap.problems.get(key, 0.0) + value
            elif name == "trade2026_stage_latency_seconds_bucket":
                st = snap.stages.setdefault(labels.get("stage", "?"), StageSnapshot())
                le = float(labels.get("le", "inf"))
                st.latency_buckets[le] = st.latency_buckets.get(le, 0.0) + value
            elif name in ("trade2026_consumer_lag", "trade2026_stage_lag"):
                snap.lag += value
            elif name in _BACKLOG_METRICS:
                snap.backlog += value
            elif name == "trade2026_nats_disconnects_total":
                snap.disconnects += value
            elif name == "trade2026_flow_info":
                snap.flow = labels.get("flow", "-")
                snap.process_id = labels.get("process_id", "-")
    return snap


def scrape(endpoint: str, timeout_s: float) -> EndpointSnapshot:
    import urllib.error
    import urllib.request

    taken_at = time.monotonic()
    try:
        with urllib.request.urlopen(endpoint, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return EndpointSnapshot(endpoint=endpoint, taken_at=taken_at, error=str(reason))
    try:
        return parse_metrics(endpoint, text, taken_at)
    except ValueError as exc:
        return EndpointSnapshot(
            endpoint=endpoint, taken_at=taken_at, error=f"not Prometheus text: {exc}"
        )


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Estimate a quantile from cumulative buckets, interpolating inside the bucket.

    The same estimate as PromQL's ``histogram_quantile``; None when nothing was observed.
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _rate(now: float, before: float | None, seconds: float) -> float | None:
    if before is None or seconds <= 0 or now < before:
        return None
    return (now - before) / seconds


@dataclass
class StageRow:
    endpoint: str
    flow: str
    stage: str
    counts: StageSnapshot
    in_rate: float | None
    out_rate: float | None
    dead_rate: float | None
    p50_s: float | None
    p99_s: float | None


def stage_rows(
    current: list[EndpointSnapshot], previous: dict[str, EndpointSnapshot]
) -> list[StageRow]:
    rows: list[StageRow] = []
    for snap in current:
        if not snap.up:
            continue
        prev = previous.get(snap.endpoint)
        dt = snap.taken_at - prev.taken_at if prev is not None and prev.up else 0.0
        for stage, st in sorted(snap.stages.items()):
            before = prev.stages.get(stage) if prev is not None and prev.up else None
            rows.append(
                StageRow(
                    endpoint=snap.endpoint,
                    flow=snap.flow,
                    stage=stage,
                    counts=st,
                    in_rate=_rate(st.records_in, None if before is None else before.records_in, dt),
                    out_rate=_rate(st.out, None if before is None else before.out, dt),
                    dead_rate=_rate(
                        st.dead_lettered, None if before is None else before.dead_lettered, dt
                    ),
                    p50_s=quantile(st.latency_buckets, 0.5),
                    p99_s=quantile(st.latency_buckets, 0.99),
                )
            )
    return rows


# -- rendering ------------------------------------------------------------------------------
def _n(x: float) -> str:
    return f"{x:,.0f}"


def _r(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.2f}ms"


def render(current: list[EndpointSnapshot], previous: dict[str, EndpointSnapshot]) -> Any:
    """The view: one table of flows, one of stages, one of dead letters by reason."""
    from rich.console import Group
    from rich.table import Table

    flows = Table(title="Flows", title_justify="left", expand=False)
    for col in ("endpoint", "flow", "process", "state", "lag", "backlog", "disconnects"):
        flows.add_column(
            col, justify="right" if col in ("lag", "backlog", "disconnects") else "left"
        )
    for snap in current:
        if snap.up:
            flows.add_row(
                snap.endpoint,
                snap.flow,
                snap.process_id,
                "[green]up[/]",
                _n(snap.lag),
                _n(snap.backlog),
                _n(snap.disconnects),
            )
        else:
            flows.add_row(snap.endpoint, "-", "-", f"[red]down[/] ({snap.error})", "-", "-", "-")

    stages = Table(title="Stages (rates per second)", title_justify="left", expand=False)
    stages.add_column("flow")
    stages.add_column("stage")
    # Short headers: the view must fit an 80-column terminal without cutting numbers.
    for col in ("in", "out", "dlq", "dup", "unacc", "in/s", "out/s", "dlq/s", "p50", "p99"):
        stages.add_column(col, justify="right", no_wrap=True)
    for row in stage_rows(current, previous):
        c = row.counts
        unaccounted = _n(c.unaccounted)
        stages.add_row(
            row.flow,
            row.stage,
            _n(c.records_in),
            _n(c.out),
            _n(c.dead_lettered),
            _n(c.duplicates),
            unaccounted if c.unaccounted == 0 else f"[yellow]{unaccounted}[/]",
            _r(row.in_rate),
            _r(row.out_rate),
            _r(row.dead_rate),
            _ms(row.p50_s),
            _ms(row.p99_s),
        )

    reasons: dict[tuple[str, str, str], float] = defaultdict(float)
    for snap in current:
        for (stage, reason), n in snap.dead_letters.items():
            reasons[(snap.flow, stage, reason)] += n
        for (stage, problem), n in snap.problems.items():
            reasons[(snap.flow, stage, f"sequence: {problem}")] += n
    dlq = Table(title="Dead letters and sequence problems", title_justify="left", expand=False)
    dlq.add_column("flow")
    dlq.add_column("stage")
    dlq.add_column("reason")
    dlq.add_column("count", justify="right")
    for (flow, stage, reason), n in sorted(reasons.items()):
        dlq.add_row(flow, stage, reason, _n(n))
    return Group(flows, stages, dlq)


def snapshot_json(current: list[EndpointSnapshot], previous: dict[str, EndpointSnapshot]) -> Any:
    rows = stage_rows(current, previous)
    return {
        "endpoints": [
            {
                "endpoint": s.endpoint,
                "up": s.up,
                "error": s.error,
                "flow": s.flow,
                "process_id": s.process_id,
                "lag": s.lag,
                "backlog": s.backlog,
                "disconnects": s.disconnects,
                "dead_letters": [
                    {"stage": st, "reason": r, "count": n}
                    for (st, r), n in sorted(s.dead_letters.items())
                ],
                "sequence_problems": [
                    {"stage": st, "problem": p, "count": n}
                    for (st, p), n in sorted(s.problems.items())
                ],
            }
            for s in current
        ],
        "stages": [
            {
                "endpoint": r.endpoint,
                "flow": r.flow,
                "stage": r.stage,
                "in": r.counts.records_in,
                "out": r.counts.out,
                "dead_lettered": r.counts.dead_lettered,
                "duplicates": r.counts.duplicates,
                "unaccounted": r.counts.unaccounted,
                "in_per_s": r.in_rate,
                "out_per_s": r.out_rate,
                "dead_lettered_per_s": r.dead_rate,
                "latency_p50_s": r.p50_s,
                "latency_p99_s": r.p99_s,
            }
            for r in rows
        ],
    }


def _endpoints(given: tuple[str, ...]) -> list[str]:
    raw = list(given) or [os.environ.get(ENV_ENDPOINTS, "")]
    out: list[str] = []
    for item in raw:
        for part in item.replace(",", " ").split():
            url = normalize_endpoint(part)
            if url not in out:
                out.append(url)
    return out


def _exit_code(snaps: list[EndpointSnapshot]) -> int:
    up = sum(s.up for s in snaps)
    if up == 0:
        return exitcodes.UNREACHABLE
    return exitcodes.OK if up == len(snaps) else exitcodes.PROBLEM_FOUND


@click.command("status")
@click.option(
    "--endpoint",
    "-e",
    "endpoints",
    multiple=True,
    metavar="URL",
    help=(
        "A flow's metrics endpoint (http://host:port/metrics or host:port); repeatable "
        f"(env {ENV_ENDPOINTS}: comma or space separated)."
    ),
)
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.0, 3600.0),
    help="Seconds between scrapes; with --once, how long to sample for rates (0: no rates).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.05, 60.0),
    help="Seconds to wait for each endpoint.",
)
@click.option("--once", is_flag=True, help="Print one snapshot and exit (for scripts and tests).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the snapshot as JSON.")
def status_command(
    endpoints: tuple[str, ...], interval: float, timeout_s: float, once: bool, as_json: bool
) -> None:
    """Show every running flow's throughput, lag, backlog and dead letters.

    Reads the Prometheus endpoints that `trade2026 run --metrics-port` serves. Exit 0 when
    every endpoint answers, 1 when some do not, 4 when none does.
    """
    urls = _endpoints(endpoints)
    if not urls:
        click.echo(
            f"error: status: no endpoint given; hint: pass --endpoint host:port or set "
            f"{ENV_ENDPOINTS}",
            err=True,
        )
        sys.exit(exitcodes.USAGE)
    if as_json and not once:
        click.echo("error: status: --json needs --once; hint: add --once", err=True)
        sys.exit(exitcodes.USAGE)
    if once:
        sys.exit(_run_once(urls, interval, timeout_s, as_json))
    sys.exit(_run_live(urls, interval or 2.0, timeout_s))


def _scrape_all(urls: list[str], timeout_s: float) -> list[EndpointSnapshot]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        return list(pool.map(lambda u: scrape(u, timeout_s), urls))


def _report_down(snaps: list[EndpointSnapshot]) -> None:
    for s in snaps:
        if not s.up:
            click.echo(
                f"warning: status: {s.endpoint} did not answer ({s.error}); "
                "hint: is the flow running with --metrics-port?",
                err=True,
            )


def _run_once(urls: list[str], interval: float, timeout_s: float, as_json: bool) -> int:
    import json

    from rich.console import Console

    first = _scrape_all(urls, timeout_s)
    previous: dict[str, EndpointSnapshot] = {}
    current = first
    if interval > 0 and any(s.up for s in first):
        time.sleep(interval)
        previous = {s.endpoint: s for s in first}
        current = _scrape_all(urls, timeout_s)
    code = _exit_code(current)
    if code == exitcodes.UNREACHABLE:
        click.echo(
            f"error: status: no metrics endpoint answers ({', '.join(urls)}); "
            "hint: start flows with `trade2026 run FLOW --metrics-port PORT`",
            err=True,
        )
        return code
    _report_down(current)
    if as_json:
        click.echo(json.dumps(snapshot_json(current, previous), indent=2))
    else:
        # Not a terminal (a pipe, a test): wide enough that no column is cut.
        width = None if sys.stdout.isatty() else 200
        Console(width=width, soft_wrap=False).print(render(current, previous))
    return code


def _run_live(urls: list[str], interval: float, timeout_s: float) -> int:
    from rich.live import Live

    current = _scrape_all(urls, timeout_s)
    if _exit_code(current) == exitcodes.UNREACHABLE:
        click.echo(
            f"error: status: no metrics endpoint answers ({', '.join(urls)}); "
            "hint: start flows with `trade2026 run FLOW --metrics-port PORT`",
            err=True,
        )
        return exitcodes.UNREACHABLE
    previous: dict[str, EndpointSnapshot] = {}
    try:
        with Live(render(current, previous), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                previous = {s.endpoint: s for s in current if s.up}
                current = _scrape_all(urls, timeout_s)
                live.update(render(current, previous))
    except KeyboardInterrupt:
        pass
    return _exit_code(current)
