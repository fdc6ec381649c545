"""``trade2026 get quote|positions``: read the hot cache (NATS JetStream key-value buckets).

Exit codes: 0 found, 1 the key is absent (nothing cached yet for it), 4 NATS cannot be
reached or the buckets do not exist yet. ``--json`` prints the cached record as is
(prices as exact decimal strings) for scripts.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from trade2026.exitcodes import PROBLEM_FOUND, UNREACHABLE

_HINT = "set NATS_URL (or --nats-url) to a running nats-server, or run `trade2026 demo`"


def _nats_option(fn: Any) -> Any:
    return click.option(
        "--nats-url",
        envvar="NATS_URL",
        default=None,
        help="NATS server(s), comma-separated (env NATS_URL).",
    )(fn)


def _run(nats_url: str | None, step: str, body: Any) -> Any:
    """Connect, open the cache read-only, run ``body(cache)``; exit 4 when unreachable."""
    import asyncio
    import os

    from sinks.kv import HotCache
    from trade2026.natsconf import NatsConfig
    from trade2026.natsloop import connect

    env = {**os.environ, "NATS_URL": nats_url} if nats_url else None
    config = NatsConfig.from_env(env, max_reconnect_attempts=1, connect_timeout_s=2.0)

    async def main() -> Any:
        from trade2026.natsserver import nats_answers

        # nats-py retries a refused first connect forever; ask the servers first.
        if not any(nats_answers(url, timeout_s=1.0) for url in config.servers):
            raise _Unreachable(f"{step}: cannot reach NATS at {list(config.servers)}")
        try:
            nc = await asyncio.wait_for(
                connect(config, step=step, allow_reconnect=False), config.connect_timeout_s * 3
            )
        except (ConnectionError, TimeoutError) as exc:
            raise _Unreachable(f"{step}: cannot reach NATS ({exc})") from None
        try:
            try:
                cache = await HotCache.open(nc, create=False)
            except Exception as exc:
                raise _Unreachable(
                    f"{step}: hot cache buckets not found at {config.url} ({type(exc).__name__}); "
                    "hint: start a flow with the hot-cache sink (or `trade2026 demo`) first"
                ) from None
            return await body(cache)
        finally:
            await nc.close()

    try:
        return asyncio.run(main())
    except _Unreachable as exc:
        click.echo(f"error: {exc}", err=True)
        if "hint" not in str(exc):
            click.echo(f"hint: {_HINT}", err=True)
        sys.exit(UNREACHABLE)


class _Unreachable(Exception):
    pass


@click.group("get")
def get_command() -> None:
    """Read the hot cache: latest quote per instrument, latest positions per account."""


@get_command.command("quote")
@click.argument("instrument")
@_nats_option
@click.option("--json", "as_json", is_flag=True, help="Print the cached record as JSON.")
def get_quote(instrument: str, nats_url: str | None, as_json: bool) -> None:
    """Latest cached quote for INSTRUMENT (e.g. BTCUSDT.BINANCE)."""
    import msgspec

    quote = _run(nats_url, "get quote", lambda cache: cache.get_quote(instrument))
    if quote is None:
        click.echo(
            f"error: no quote cached for {instrument}; hint: check the instrument id "
            "(e.g. BTCUSDT.BINANCE) and that the quotes flow is running",
            err=True,
        )
        sys.exit(PROBLEM_FOUND)
    if as_json:
        click.echo(msgspec.json.encode(quote).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{quote.instrument_id} (update {quote.update_id}, ts {quote.ts_event})")
    for col in ("bid size", "bid", "ask", "ask size", "spread"):
        table.add_column(col, justify="right")
    table.add_row(
        str(quote.bid_size),
        str(quote.bid_price),
        str(quote.ask_price),
        str(quote.ask_size),
        str(quote.ask_price - quote.bid_price),
    )
    Console(width=120).print(table)


@get_command.command("positions")
@click.argument("account")
@_nats_option
@click.option("--json", "as_json", is_flag=True, help="Print the cached records as JSON lines.")
def get_positions(account: str, nats_url: str | None, as_json: bool) -> None:
    """Latest cached position and P&L per instrument for ACCOUNT."""
    from decimal import Decimal

    import msgspec

    positions = _run(nats_url, "get positions", lambda cache: cache.get_positions(account))
    if not positions:
        click.echo(
            f"error: no positions cached for account {account}; hint: check the account id "
            "and that the positions flow is running",
            err=True,
        )
        sys.exit(PROBLEM_FOUND)
    if as_json:
        for p in positions:
            click.echo(msgspec.json.encode(p).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"positions of {account}")
    for col in ("instrument", "quantity", "avg open", "mark", "realized", "unrealized", "fees"):
        table.add_column(col, justify="left" if col == "instrument" else "right")

    def fmt(v: Decimal | None) -> str:
        return "-" if v is None else str(v)

    for p in positions:
        table.add_row(
            p.instrument_id,
            fmt(p.quantity),
            fmt(p.avg_open_price),
            fmt(p.mark_price),
            fmt(p.realized_pnl),
            fmt(p.unrealized_pnl),
            fmt(p.fees),
        )
    realized = sum((p.realized_pnl for p in positions), Decimal(0))
    unrealized = sum((p.unrealized_pnl for p in positions), Decimal(0))
    fees = sum((p.fees for p in positions), Decimal(0))
    table.add_row("total", "", "", "", str(realized), str(unrealized), str(fees))
    Console(width=120).print(table)
