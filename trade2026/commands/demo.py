"""``trade2026 demo``: the whole foundation path on embedded defaults, in under a minute.

It starts a local nats-server when none answers at NATS_URL, runs the normalize
flow, replays the bundled Binance recordings through NATS, then sends a handful of
deliberately broken messages (and a few re-sent trades) so the dead-letter and
de-duplication paths show up in the summary. Everything it started, it stops.
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
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="Use this NATS if it answers; otherwise start a local one (env NATS_URL).",
)
@click.option(
    "--speed",
    default="max",
    show_default=True,
    help="Replay pacing: max, or a factor of recorded time such as 1 or 10.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def demo_command(nats_url: str, speed: str, quiet: bool, paths: tuple[Path, ...]) -> None:
    """Replay the bundled recordings through NATS and the normalize flow; print the accounting.

    PATHS default to the sample recordings shipped in data/binance.
    """
    from trade2026.natsserver import NatsServerError, ensure_nats
    from trade2026.sample import sample_files

    files = list(paths) or sample_files()
    pace = None if speed == "max" else float(speed)
    try:
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
    import threading

    from bytewax.testing import run_main
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from sources.recorded import Pacer, RecordedLine, merge_recorded, replay_to_nats
    from trade2026.accounting import Accounting
    from trade2026.flowregistry import RunContext, build_normalize
    from trade2026.natsconf import NatsConfig
    from trade2026.natsloop import NatsLoop

    console = Console()
    lines: list[RecordedLine] = list(merge_recorded([str(f) for f in files]))
    trades = [ln for ln in lines if b"@trade" in ln.data[:40]][-_RESENT_TRADES:]
    extra = [(s, d) for s, d in _BAD_MESSAGES] + [(t.subject, t.data) for t in trades]
    total = len(lines) + len(extra)

    config = NatsConfig.from_env(servers=(url,), name="trade2026-demo")
    acct = Accounting()
    ctx = RunContext(nats=config, accounting=acct, stop_after=total, idle_timeout_s=15.0)
    flow, source = build_normalize(ctx)
    failure: list[BaseException] = []

    def run_flow() -> None:
        try:
            run_main(flow)
        except BaseException as exc:  # surfaced below, never swallowed
            failure.append(exc)

    loop = NatsLoop.acquire()
    try:
        nc = loop.connect(config)
        seen: Counter[str] = Counter()

        async def count(msg) -> None:  # type: ignore[no-untyped-def]
            head = msg.data[:24]
            kind = head[9 : head.find(b'"', 9)].decode() if head.startswith(b'{"kind":"') else "?"
            seen[kind] += 1

        async def subscribe() -> None:
            for subject in ("md.ticks.>", "md.gaps.>", "dlq.normalize"):
                await nc.subscribe(subject, cb=count, pending_msgs_limit=1_000_000)
            await nc.flush()

        loop.run(subscribe())
        thread = threading.Thread(target=run_flow, name="normalize-flow", daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not source.stats and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not source.stats:
            console.print("[red]error: demo: the normalize flow did not subscribe in time[/red]")
            return exitcodes.RUN_FAILED

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
            task = progress.add_task("replaying", total=len(lines))
            pacer = Pacer(speed, time.monotonic_ns, asyncio.sleep)
            summary = loop.run(
                replay_to_nats(
                    lines, nc, pacer=pacer, progress=lambda n: progress.update(task, completed=n)
                )
            )

            async def send_extra() -> None:
                for subject, data in extra:
                    await nc.publish(subject, data)
                await nc.flush()

            loop.run(send_extra())
            progress.update(task, description="normalizing")
            thread.join(timeout=60)
        elapsed = time.perf_counter() - t0

        async def settle() -> None:
            await nc.flush()
            await asyncio.sleep(0.3)

        loop.run(settle())
        nc_close = nc.close()
        loop.run(nc_close)
    finally:
        NatsLoop.release(loop)

    if failure:
        console.print(f"[red]error: demo: the normalize flow failed: {failure[0]!r}[/red]")
        return exitcodes.RUN_FAILED
    _print_summary(console, acct, seen, summary.messages + len(extra), elapsed)
    totals = acct.stage("normalize")
    return exitcodes.OK if totals.balanced and totals.records_in == total else exitcodes.RUN_FAILED


def _print_summary(
    console: object, acct: object, seen: Counter[str], published: int, elapsed: float
) -> None:
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
        f"published {published:,} raw messages; end to end {elapsed:.2f}s "
        f"= {published / elapsed:,.0f} msg/s through NATS and the flow"
    )
