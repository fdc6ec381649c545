"""``trade2026 demo``: the platform on embedded defaults, in under a minute.

It starts a local nats-server when none answers at NATS_URL and runs the normalize,
orders, venue and portfolio flows. It replays the bundled Binance recordings through
NATS while a scripted order scenario (data/scenarios) submits orders against them:
some are denied by risk, some filled, partly filled, canceled or replaced. It then
sends a handful of deliberately broken messages (and a few re-sent trades) so the
dead-letter and de-duplication paths show up, prints the accounting, the orders,
positions and P&L, validates the outputs against the GX suites and writes the quality
report. Everything it started, it stops.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import click

from trade2026 import exitcodes

#: Broken or repeated inputs the demo adds on purpose, each labelled with what should happen.
_BAD_MESSAGES: list[tuple[str, bytes]] = [
    ("md.raw.binance.btcusdt", b'{"stream":"btcusdt@trade","data":{"e":"trade"'),
    ("md.raw.binance.btcusdt", b"[1,2,3]"),
    (
        "md.raw.binance.zzzusdt",
        b'{"stream":"zzzusdt@trade","data":{"e":"trade","E":1,'
        b'"s":"ZZZUSDT","t":1,"p":"1.0","q":"1.0","T":1,"m":true}}',
    ),
    (
        "md.raw.binance.btcusdt",
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161599000,'
        b'"s":"BTCUSDT","t":1,"p":"-61000.0","q":"0.1","T":1723161599000,"m":true}}',
    ),
    (
        "md.raw.binance.ethusdt",
        b'{"stream":"ethusdt@bookTicker","data":{"u":1,"s":"ETHUSDT",'
        b'"b":"NaN","B":"1","a":"2500.0","A":"1"}}',
    ),
]
_RESENT_TRADES = 3


@click.command("demo")
@click.option(
    "--nats-url",
    envvar="NATS_URL",
    default=None,
    help="Use this NATS server (env NATS_URL); by default the demo starts its own, with a "
    "fresh JetStream store, so streams and de-duplication windows left by earlier runs "
    "cannot change the result.",
)
@click.option(
    "--speed",
    default="max",
    show_default=True,
    help="Replay pacing: max, or a factor of recorded time such as 1 or 10.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def demo_command(nats_url: str | None, speed: str, quiet: bool, paths: tuple[Path, ...]) -> None:
    """Replay the bundled recordings through NATS and the normalize flow; print the accounting.

    PATHS default to the sample recordings shipped in data/binance.
    """
    from trade2026.natsserver import LocalNatsServer, NatsServerError, ensure_nats
    from trade2026.sample import sample_files

    files = list(paths) or sample_files()
    pace = None if speed == "max" else float(speed)
    server: LocalNatsServer | None
    try:
        if nats_url is None:
            # The order path's streams persist, and replay from their first message on a
            # fresh start; a shared server's leftovers (an earlier demo's orders, ids
            # inside the duplicate window) would change this run's answers.
            server = LocalNatsServer().start()
            url = server.url
        else:
            url, server = ensure_nats(nats_url)
    except NatsServerError as exc:
        click.echo(f"error: demo: {exc}", err=True)
        sys.exit(exitcodes.UNREACHABLE)
    if server is not None:
        click.echo(f"started a local nats-server at {url} (stopped when the demo ends)")
    else:
        click.echo(f"using the NATS server at {url}")
    try:
        code = _run(url, files, pace, quiet)
    finally:
        if server is not None:
            server.stop()
    sys.exit(code)


def _run(url: str, files: list[Path], speed: float | None, quiet: bool) -> int:
    import asyncio

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from sources.recorded import RecordedLine, merge_recorded
    from trade2026.accounting import Accounting
    from trade2026.demo_orders import print_result, run_order_scenario
    from trade2026.flowregistry import RunContext, delta_root
    from trade2026.localstack import LocalStack
    from trade2026.natsconf import NatsConfig
    from trade2026.natsloop import NatsLoop

    console = Console()
    lines: list[RecordedLine] = list(merge_recorded([str(f) for f in files]))
    trades = [ln for ln in lines if b"@trade" in ln.data[:40]][-_RESENT_TRADES:]
    extra = [*_BAD_MESSAGES, *((t.subject, t.data) for t in trades)]
    total = len(lines) + len(extra)

    config = NatsConfig.from_env(servers=(url,), name="trade2026-demo")
    acct = Accounting()
    # The flows end once no input arrived for a few seconds after the replay.
    ctx = RunContext(nats=config, accounting=acct, idle_timeout_s=4.0)
    console.print("starting flows: normalize, orders (risk + order state), venue, portfolio, store")
    try:
        stack = LocalStack(ctx, store_root=delta_root()).start()
    except RuntimeError as exc:
        console.print(f"[red]error: demo: {exc}[/red]")
        return exitcodes.RUN_FAILED

    loop = NatsLoop.acquire()
    ticks: list[bytes] = []
    seen: Counter[str] = Counter()
    try:
        nc = loop.connect(config)

        async def count(msg) -> None:  # type: ignore[no-untyped-def]
            head = msg.data[:24]
            kind = head[9 : head.find(b'"', 9)].decode() if head.startswith(b'{"kind":"') else "?"
            seen[kind] += 1
            if msg.subject.startswith("md.ticks.") and kind != "?":
                ticks.append(msg.data)

        async def subscribe() -> None:
            for subject in ("md.ticks.>", "md.gaps.>", "dlq.normalize"):
                await nc.subscribe(subject, cb=count, pending_msgs_limit=1_000_000)
            await nc.flush()

        loop.run(subscribe())
        seen.clear()
        ticks.clear()  # the orders flow's start-up probe is not market data

        t0 = time.perf_counter()
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
            transient=True,
        ) as progress:
            task = progress.add_task("replaying market data and orders", total=len(lines))
            result = run_order_scenario(
                url,
                lines,
                accounting=acct,
                progress=lambda n: progress.update(task, completed=n),
            )

            async def send_extra() -> None:
                for subject, data in extra:
                    await nc.publish(subject, data)
                await nc.flush()

            loop.run(send_extra())
            progress.update(task, description="draining the flows")
            stack.join(timeout_s=60)
        elapsed = time.perf_counter() - t0

        async def settle() -> None:
            await nc.flush()
            await asyncio.sleep(0.2)
            await nc.close()

        loop.run(settle())
    finally:
        NatsLoop.release(loop)

    if stack.failures:
        console.print(f"[red]error: demo: a flow failed: {stack.failures[0]!r}[/red]")
        return exitcodes.RUN_FAILED
    _print_summary(console, acct, seen, total, elapsed)
    print_result(result, console)
    stored = acct.stage("store")
    console.print(
        f"order path persisted to Delta under {delta_root()}/orders: {stored.out:,} records "
        f"({stored.duplicates:,} duplicates dropped, {stored.dead_lettered:,} dead-lettered)"
    )
    report = _quality_report(console, acct, ticks, result)
    if report is not None:
        console.print(f"quality report: {report}")
    totals = acct.stage("normalize")
    surprises = _unexpected_outcomes(result)
    for line in surprises:
        console.print(f"[red]error: demo: {line}[/red]")
    ok = totals.balanced and totals.records_in == total and not surprises
    return exitcodes.OK if ok else exitcodes.RUN_FAILED


def _unexpected_outcomes(result: object) -> list[str]:
    """Orders whose final status differs from what the scenario says it must be."""
    from trade2026.demo_orders import ScenarioResult

    assert isinstance(result, ScenarioResult)
    final = {(o.account, o.client_order_id): o.status for o in result.orders}
    out = []
    for outcome in result.steps:
        step = outcome.step
        if step.action != "submit" or step.expect is None:
            continue
        status = final.get((step.account, step.client_order_id))
        if status is None and not outcome.approved:
            status = "DENIED"
        if status != step.expect:
            out.append(f"order {step.client_order_id} ended {status}, expected {step.expect}")
    return out


def _quality_report(
    console: object, acct: object, ticks: list[bytes], result: object
) -> Path | None:
    """Validate what the demo produced against the GX suites and write the HTML report."""
    import msgspec

    from operators.quality.batch import BatchValidator, BatchValidatorConfig, record_accounting
    from operators.quality.report import build_report
    from schemas.canonical import Tick
    from trade2026.accounting import Accounting
    from trade2026.demo_orders import ScenarioResult
    from trade2026.flowregistry import state_dir

    assert isinstance(acct, Accounting) and isinstance(result, ScenarioResult)
    store = Path(state_dir()) / "quality"
    decode = msgspec.json.Decoder(Tick).decode
    batches: dict[str, list[object]] = {
        "ticks": [decode(b) for b in ticks],
        "fills": list(result.fills),
        "positions": list(result.positions),
    }
    for stage, records in batches.items():
        if not records:
            continue
        validator = BatchValidator(
            BatchValidatorConfig(stage=stage, store=str(store), batch_rows=len(records)),
            clock=time.time_ns,
        ).start()
        validator.offer_many(records)
        stats = validator.close(timeout=60)
        verdict = "passed" if stats.failed_batches == 0 and stats.errored_batches == 0 else "FAILED"
        click.echo(
            f"quality: {stage}: {len(records):,} records checked against its GX suite: {verdict}"
        )
    record_accounting(acct, store, time.time_ns())
    return build_report(store, store / "report")


def _print_summary(
    console: object, acct: object, seen: Counter[str], published: int, elapsed: float
) -> None:
    """The normalize stage's accounting, what came back from NATS, and throughput."""
    from rich.console import Console
    from rich.table import Table

    from trade2026.accounting import Accounting

    assert isinstance(console, Console) and isinstance(acct, Accounting)
    table = Table(title="normalize: messages in = ticks out + dead-lettered + duplicates")
    for col in ("instrument", "in", "ticks out", "dead-lettered", "duplicates", "balanced"):
        table.add_column(col, justify="right" if col != "instrument" else "left")
    for inst in [*acct.instruments("normalize"), None]:
        c = acct.stage("normalize", inst)
        table.add_row(
            inst or "[b]total[/b]",
            f"{c.records_in:,}",
            f"{c.out:,}",
            f"{c.dead_lettered:,}",
            f"{c.duplicates:,}",
            "yes" if c.balanced else f"[red]no ({c.unaccounted:+})[/red]",
        )
    console.print(table)
    kinds = Table(title="received back from NATS")
    kinds.add_column("what")
    kinds.add_column("messages", justify="right")
    for kind, label in (
        ("trade", "trade ticks"),
        ("quote", "quotes"),
        ("book_delta", "book deltas"),
        ("data_gap", "gap/out-of-order reports"),
        ("dead_letter", "dead letters"),
    ):
        kinds.add_row(label, f"{seen.get(kind, 0):,}")
    console.print(kinds)
    reasons = acct.reasons("normalize")
    if reasons:
        console.print(
            "dead letters by reason: " + ", ".join(f"{r}={n}" for r, n in reasons.items())
        )
    problems = acct.problems("normalize")
    console.print(
        "sequence problems: " + (", ".join(f"{p}={n}" for p, n in problems.items()) or "none")
    )
    console.print(
        f"published {published:,} raw messages and the order scenario in {elapsed:.2f}s "
        "(replay paused at each scripted order for its decision)"
    )
