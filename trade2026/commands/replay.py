"""``trade2026 replay``: publish recorded venue files to NATS as if the venue were live.

Each recorded line goes to ``md.raw.<venue>.<symbol>`` with the venue's bytes untouched
and the recorded receive time in the ``T26-Recv-Ns`` header, so everything downstream of
the raw subjects (normaliser, books, sinks) runs exactly as it would on a live feed, and
can be compared run to run. Files are merged by receive time; ``--speed`` keeps the
recorded gaps (scaled) or, with ``max``, publishes as fast as NATS takes them.

``--from-delta ROOT`` replays the project's own Delta tick tables instead (the root the
ticks sink writes, holding ``ticks/trades|quotes|book_deltas``): canonical ticks go back
onto ``md.ticks.<instrument>``, merged by event time across partitions and files in the
total order of :mod:`sources.delta`, so two replays of one range publish the very same
sequence. ``--start/--end`` then bound the *event* time and ``--instruments`` picks
instrument ids.

Exit codes: 0 ok, 2 usage error, 3 an input file cannot be read (missing, corrupt gzip,
a bad line under ``--strict``, no Delta tick tables at ``--from-delta``), 4 NATS cannot be
reached or is lost mid-replay.

Only light modules are imported at the top so ``trade2026 --help`` stays fast; nats,
rich and the reader are imported inside the command.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from trade2026 import exitcodes

if TYPE_CHECKING:
    from sources.recorded import RecordingError, ReplaySummary

#: Mirrors ``sources.recorded.FEEDS`` (a test keeps them equal) so --help imports nothing.
VENUES = ("binance", "binance-usdm", "coinbase")
EXIT_INPUT = exitcodes.BAD_INPUT  # 3
EXIT_NATS = exitcodes.UNREACHABLE  # 4
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NATS_HINT = "set NATS_URL (or --nats-url) to a running nats-server, or run `trade2026 demo`"


def parse_time_ns(value: str) -> int:
    """An integer ns timestamp, or an ISO 8601 time (naive means UTC), as integer ns.

    Converted through ``timedelta`` integer arithmetic, never a float, so a microsecond
    boundary given on the command line is exactly the boundary applied.
    """
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither integer nanoseconds nor ISO 8601; "
            "hint: e.g. 2024-08-08T23:55:00Z or 1723161300000000000"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_time_ns(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _speed_option(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    text = value.strip().lower()
    if text == "max":
        return None
    text = text.removesuffix("x")  # "10x" reads as 10
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if not speed > 0 or speed == float("inf"):
        raise click.BadParameter(f"{value!r}; hint: a positive number (1, 10) or max")
    return speed


def _symbols_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> frozenset[str] | None:
    if value is None:
        return None
    symbols = frozenset(s.strip().lower() for s in value.split(",") if s.strip())
    if not symbols:
        raise click.BadParameter("no symbols given; hint: e.g. --symbols BTCUSDT,ETHUSDT")
    return symbols


def _list_option(value: str | None, example: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(s.strip() for s in value.split(",") if s.strip())
    if not items:
        raise click.BadParameter(f"empty list; hint: e.g. {example}")
    return items


def _fmt_ns(ts: int | None) -> str:
    if ts is None:
        return "-"
    dt = _EPOCH + timedelta(microseconds=ts // 1000)
    return dt.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _input_error(err: RecordingError, *, published: int = 0) -> None:
    click.echo(f"error: {err.path}:{err.line_no}: {err.reason}", err=True)
    if published:
        click.echo(f"note: {published:,} messages were published before the error", err=True)
    click.echo(f"hint: {err.hint}", err=True)


@click.command("replay")
# Plain paths, not click.Path(exists=True): an unreadable input is exit 3, not a usage error.
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "--from-delta",
    "from_delta",
    metavar="ROOT",
    default=None,
    help="Replay the Delta tick tables under ROOT (local path or s3:// URI) onto "
    "md.ticks.<instrument>, merged by event time, instead of recorded files.",
)
@click.option(
    "--instruments",
    callback=lambda c, p, v: _list_option(v, "--instruments BTCUSDT.BINANCE,ETHUSDT.BINANCE"),
    help="With --from-delta: comma-separated instrument ids to keep.",
)
@click.option(
    "--venue",
    type=click.Choice(VENUES),
    default="binance",
    show_default=True,
    help="Feed the files were recorded from; names the subjects md.raw.<venue>.<symbol>.",
)
@click.option(
    "--speed",
    default="max",
    show_default=True,
    callback=_speed_option,
    help="Replay speed: 1 keeps recorded gaps, 10 is ten times faster, max does not wait.",
)
@click.option(
    "--start",
    callback=_time_option,
    help="Skip lines received before this time (ISO 8601, naive = UTC, or integer ns); "
    "with --from-delta, ticks whose event time is earlier.",
)
@click.option(
    "--end",
    callback=_time_option,
    help="Stop before lines received at/after this time (with --from-delta: event time).",
)
@click.option(
    "--symbols", callback=_symbols_option, help="Comma-separated symbols to keep, e.g. BTCUSDT."
)
@click.option(
    "--strict", is_flag=True, help="Fail (exit 3) on a malformed line instead of skipping it."
)
@click.option(
    "--nats-url",
    default=None,
    help="NATS server URL(s), comma-separated. Default: $NATS_URL or nats://127.0.0.1:4222.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def replay_command(
    ctx: click.Context,
    paths: tuple[str, ...],
    from_delta: str | None,
    instruments: tuple[str, ...] | None,
    venue: str,
    speed: float | None,
    start: int | None,
    end: int | None,
    symbols: frozenset[str] | None,
    strict: bool,
    nats_url: str | None,
    quiet: bool,
) -> None:
    """Publish recorded raw venue files (PATH...) to NATS, merged by receive time,
    or with --from-delta ROOT the stored canonical ticks, merged by event time."""
    if start is not None and end is not None and end <= start:
        raise click.BadParameter("--end must be after --start", param_hint="--end")
    if from_delta is not None:
        if paths:
            raise click.UsageError("give either PATHS or --from-delta, not both")
        if symbols is not None or strict:
            raise click.UsageError(
                "--symbols and --strict apply to recorded files; hint: use --instruments"
            )
        ctx.exit(
            _replay_from_delta(
                from_delta, start=start, end=end, instruments=instruments, speed=speed,
                nats_url=nats_url, quiet=quiet,
            )
        )  # fmt: skip
    if not paths:
        raise click.UsageError("no input; hint: give recorded files (PATHS) or --from-delta ROOT")
    if instruments is not None:
        raise click.UsageError("--instruments applies to --from-delta; hint: use --symbols")
    import asyncio
    import contextlib
    import itertools
    import time

    from rich.console import Console

    from sources.recorded import (
        BadLineLog,
        Pacer,
        ReadStats,
        RecordingError,
        merge_recorded,
    )
    from trade2026.natsconf import NatsConfig

    err_console = Console(stderr=True)
    bad_log = BadLineLog(keep=5)
    stats = ReadStats()
    lines = merge_recorded(
        list(paths),
        feed=venue,
        start_ns=start,
        end_ns=end,
        symbols=symbols,
        strict=strict,
        on_bad_line=bad_log,
        stats=stats,
    )
    # Read the first line before connecting: a missing file or a file that is not gzip
    # after all fails with exit 3 whether or not NATS is up.
    try:
        first = next(lines, None)
    except RecordingError as exc:
        _input_error(exc)
        ctx.exit(EXIT_INPUT)
    primed = lines if first is None else itertools.chain((first,), lines)

    overrides: dict[str, Any] = {"max_reconnect_attempts": 2}
    if nats_url:
        overrides["servers"] = tuple(s.strip() for s in nats_url.split(",") if s.strip())
    config = NatsConfig.from_env(**overrides)
    total_bytes = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    show_bar = not quiet and err_console.is_terminal

    async def run() -> ReplaySummary | int:
        import nats
        from nats.errors import Error as NatsError

        from sources.recorded import replay_to_nats

        nats_errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            nats_errors.append(exc)

        try:
            nc = await nats.connect(**config.connect_kwargs(), error_cb=on_error)
        except (NatsError, OSError, TimeoutError) as exc:
            cause = nats_errors[-1] if nats_errors else exc
            click.echo(
                f"error: replay: cannot reach NATS at {', '.join(config.servers)} ({cause})",
                err=True,
            )
            click.echo(f"hint: {_NATS_HINT}", err=True)
            return EXIT_NATS
        pacer = Pacer(speed, time.monotonic_ns, asyncio.sleep)
        published = 0

        def seen(n: int) -> None:
            nonlocal published
            published = n

        try:
            if show_bar:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                )

                with Progress(
                    TextColumn("replay"),
                    BarColumn(),
                    DownloadColumn(),
                    TextColumn("{task.fields[msgs]} msgs"),
                    TimeRemainingColumn(),
                    console=err_console,
                    transient=True,
                ) as bar:
                    task = bar.add_task("replay", total=total_bytes, msgs="0")

                    def tick(n: int) -> None:
                        seen(n)
                        bar.update(task, completed=stats.bytes_read, msgs=f"{n:,}")

                    return await replay_to_nats(
                        primed, nc, pacer=pacer, progress=tick, bad_lines=bad_log
                    )
            return await replay_to_nats(primed, nc, pacer=pacer, progress=seen, bad_lines=bad_log)
        except RecordingError as exc:
            _input_error(exc, published=published)
            return EXIT_INPUT
        except (NatsError, OSError, TimeoutError) as exc:
            click.echo(f"error: replay: lost NATS after {published:,} messages ({exc})", err=True)
            click.echo(f"hint: {_NATS_HINT}", err=True)
            return EXIT_NATS
        finally:
            if not nc.is_closed:
                # Closing a connection that already died has nothing left to report.
                with contextlib.suppress(Exception):
                    await nc.close()

    result = asyncio.run(run())
    if isinstance(result, int):
        ctx.exit(result)
    for bad in bad_log.examples:
        click.echo(f"warning: {bad.path}:{bad.line_no}: {bad.reason} (skipped)", err=True)
    if bad_log.count > len(bad_log.examples):
        more = bad_log.count - len(bad_log.examples)
        click.echo(f"warning: ... and {more:,} more bad lines skipped", err=True)
    _print_summary(result, venue, speed)


def _print_summary(summary: ReplaySummary, venue: str, speed: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    table = Table(title=f"replayed to md.raw.{venue}.<symbol>", title_justify="left")
    table.add_column("symbol")
    table.add_column("stream")
    table.add_column("messages", justify="right")
    for subject, kinds in summary.counts.items():
        symbol = subject.rsplit(".", 1)[-1]
        for kind, count in kinds.items():
            table.add_row(symbol, kind or "-", f"{count:,}")
    table.add_section()
    table.add_row("total", "", f"{summary.messages:,}")
    console.print(table)
    span_s = summary.span_ns / 1e9
    pace = "max" if speed is None else f"{speed:g}x"
    console.print(
        f"skipped lines: {summary.bad_lines:,}\n"
        f"span: {_fmt_ns(summary.first_ts)} -> {_fmt_ns(summary.last_ts)} UTC ({span_s:,.1f} s)\n"
        f"elapsed: {summary.elapsed_s:,.2f} s at speed {pace}, "
        f"{summary.msgs_per_s:,.0f} msg/s",
        highlight=False,
    )


# -- --from-delta ---------------------------------------------------------------------------
def _replay_from_delta(
    root: str,
    *,
    start: int | None,
    end: int | None,
    instruments: tuple[str, ...] | None,
    speed: float | None,
    nats_url: str | None,
    quiet: bool,
) -> int:
    """Publish the stored ticks of ``[start, end)`` in replay order; returns the exit code.

    The publish loop is :func:`sources.delta.replay_delta_to_nats`'s (same order source,
    payload, header and pacer), written out here only to drive a progress bar, which
    that function has no hook for.
    """
    import asyncio
    import contextlib
    import time

    from rich.console import Console

    from schemas.canonical import Tick
    from sources.delta import Pacer, ReplayStats, iter_ticks, publish_ticks
    from trade2026.natsconf import NatsConfig

    err_console = Console(stderr=True)
    total = _delta_rows(root, start, end, instruments)
    if total is None:
        click.echo(f"error: replay --from-delta: no Delta tick tables under {root!r}", err=True)
        click.echo(
            "hint: point it at the root the ticks sink writes (it holds ticks/trades, "
            "ticks/quotes, ticks/book_deltas), e.g. var/lake",
            err=True,
        )
        return EXIT_INPUT
    overrides: dict[str, Any] = {"max_reconnect_attempts": 2}
    if nats_url:
        overrides["servers"] = tuple(s.strip() for s in nats_url.split(",") if s.strip())
    config = NatsConfig.from_env(**overrides)
    show_bar = not quiet and err_console.is_terminal
    counts: dict[tuple[str, str], int] = {}

    async def run() -> ReplayStats | int:
        import nats
        from nats.errors import Error as NatsError

        nats_errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:  # keeps nats-py from logging tracebacks
            nats_errors.append(exc)

        try:
            nc = await nats.connect(**config.connect_kwargs(), error_cb=on_error)
        except (NatsError, OSError, TimeoutError) as exc:
            cause = nats_errors[-1] if nats_errors else exc
            click.echo(
                f"error: replay: cannot reach NATS at {', '.join(config.servers)} ({cause})",
                err=True,
            )
            click.echo(f"hint: {_NATS_HINT}", err=True)
            return EXIT_NATS
        stats = ReplayStats()
        pacer = Pacer(speed, time.monotonic_ns, asyncio.sleep)
        bar, task = _progress(err_console, total) if show_bar else (None, None)

        def on_published(t: Tick) -> None:
            key = (t.instrument_id, str(type(t).__struct_config__.tag))
            counts[key] = counts.get(key, 0) + 1
            if bar is not None and stats.published % 1000 == 0:
                bar.update(task, completed=stats.published)

        try:
            batches = iter_ticks(root, start=start, end=end, instruments=instruments)
            await publish_ticks(nc, batches, pacer, stats, on_published=on_published)
        except (NatsError, OSError, TimeoutError) as exc:
            click.echo(
                f"error: replay: lost NATS after {stats.published:,} ticks ({exc})", err=True
            )
            click.echo(f"hint: {_NATS_HINT}", err=True)
            return EXIT_NATS
        finally:
            if bar is not None:
                bar.stop()
            if not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.drain()
        return stats

    t0 = time.perf_counter()
    result = asyncio.run(run())
    elapsed = time.perf_counter() - t0
    if isinstance(result, int):
        return result
    _print_delta_summary(root, result, counts, speed, elapsed)
    return exitcodes.OK


def _delta_rows(
    root: str, start: int | None, end: int | None, instruments: tuple[str, ...] | None
) -> int | None:
    """Rows the replay will publish (for the bar), or None when there are no tick tables."""
    import polars as pl
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from sinks.delta import KINDS, storage_options_from_env, table_uri

    opts = storage_options_from_env(root)
    total = 0
    found = False
    for kind in KINDS:
        try:
            dt = DeltaTable(table_uri(root, kind), storage_options=opts)
        except TableNotFoundError:
            continue
        found = True
        lf = pl.scan_delta(dt)
        if start is not None:
            lf = lf.filter(pl.col("ts_event") >= start)
        if end is not None:
            lf = lf.filter(pl.col("ts_event") < end)
        if instruments:
            lf = lf.filter(pl.col("instrument_id").is_in(list(instruments)))
        total += int(lf.select(pl.len()).collect().item())
    return total if found else None


def _progress(console: Any, total: int) -> tuple[Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "replay from delta",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("replay", total=total)
    bar.start()
    return bar, task


def _print_delta_summary(
    root: str,
    stats: Any,
    counts: dict[tuple[str, str], int],
    speed: float | None,
    elapsed: float,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout)
    table = Table(title=f"replayed {root} to md.ticks.<instrument>", title_justify="left")
    table.add_column("instrument")
    table.add_column("kind")
    table.add_column("ticks", justify="right")
    for (inst, kind), n in sorted(counts.items()):
        table.add_row(inst, kind, f"{n:,}")
    table.add_section()
    table.add_row("total", "", f"{stats.published:,}")
    console.print(table)
    first, last = stats.first_ts_event, stats.last_ts_event
    span_s = 0.0 if first is None or last is None else (last - first) / 1e9
    pace = "max" if speed is None else f"{speed:g}x"
    rate = stats.published / elapsed if elapsed > 0 else 0.0
    console.print(
        f"event time: {_fmt_ns(first)} -> {_fmt_ns(last)} UTC ({span_s:,.1f} s)\n"
        f"elapsed: {elapsed:,.2f} s at speed {pace}, {rate:,.0f} ticks/s",
        highlight=False,
    )
