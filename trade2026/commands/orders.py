"""``trade2026 orders submit``: one order from the command line, answered by the orders flow.

Prints the risk decision; exit 0 approved, 1 denied (or no answer in time: the order is
kept in the ORDERS stream and decided when the flow runs), 2 usage, 4 NATS unreachable.
"""

from __future__ import annotations

import sys
import time

import click

from trade2026.exitcodes import PROBLEM_FOUND, UNREACHABLE

__all__ = ["orders_group"]


@click.group("orders")
def orders_group() -> None:
    """Order entry over NATS (the flow answers on the request's T26-Reply-To)."""


@orders_group.command("submit")
@click.option("--symbol", required=True, help="Instrument id, e.g. BTCUSDT.BINANCE.")
@click.option("--side", required=True, type=click.Choice(["BUY", "SELL"], case_sensitive=False))
@click.option("--qty", required=True, help="Quantity as a decimal string (exact).")
@click.option("--price", default=None, help="Limit price as a decimal string (exact).")
@click.option(
    "--type",
    "order_type",
    default="LIMIT",
    show_default=True,
    type=click.Choice(["LIMIT", "MARKET"], case_sensitive=False),
)
@click.option(
    "--tif",
    default="GTC",
    show_default=True,
    type=click.Choice(["GTC", "IOC", "FOK", "DAY", "GTD"], case_sensitive=False),
)
@click.option("--account", default="default", show_default=True)
@click.option("--client-order-id", default=None, help="Default: cli-<ns timestamp>.")
@click.option("--timeout", default=2.0, show_default=True, type=float)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@click.option("--nats-url", envvar="NATS_URL", default=None, help="NATS server(s) (env NATS_URL).")
def submit_command(
    symbol: str,
    side: str,
    qty: str,
    price: str | None,
    order_type: str,
    tif: str,
    account: str,
    client_order_id: str | None,
    timeout: float,
    as_json: bool,
    nats_url: str | None,
) -> None:
    """Submit one order and print the decision (approved, or the denial reason)."""
    import asyncio
    import os
    from decimal import Decimal, InvalidOperation

    import msgspec

    from schemas.common import OrderType, Side, TimeInForce
    from schemas.orders import SubmitOrder
    from trade2026.natsconf import NatsConfig
    from trade2026.natsloop import connect
    from trade2026.natsserver import nats_answers
    from trade2026.orderclient import OrderClient, OrderTimeout, ensure_order_streams

    try:
        quantity = Decimal(qty)
        limit = Decimal(price) if price is not None else None
    except InvalidOperation:
        raise click.BadParameter(
            f"--qty {qty!r} / --price {price!r} must be decimal numbers, e.g. 0.001 and 45000"
        ) from None
    order = SubmitOrder(
        client_order_id=client_order_id or f"cli-{time.time_ns()}",
        account_id=account,
        instrument_id=symbol,
        side=Side(side.upper()),
        order_type=OrderType(order_type.upper()),
        quantity=quantity,
        price=limit,
        time_in_force=TimeInForce(tif.upper()),
    )
    env = {**os.environ, "NATS_URL": nats_url} if nats_url else None
    config = NatsConfig.from_env(env, max_reconnect_attempts=0, connect_timeout_s=2.0)

    async def main() -> int:
        # nats-py retries a refused first connect forever; ask the port first.
        if not any(nats_answers(u) for u in config.servers):
            click.echo(
                f"error: {'orders submit'}: no NATS server answers at {', '.join(config.servers)}; "
                "hint: start one (`nats-server -js`) or set NATS_URL / --nats-url",
                err=True,
            )
            return UNREACHABLE
        try:
            nc = await asyncio.wait_for(
                connect(config, step="orders submit", allow_reconnect=False),
                config.connect_timeout_s + 3,
            )
        except (ConnectionError, TimeoutError) as exc:
            click.echo(f"error: {exc}", err=True)
            return UNREACHABLE
        try:
            await ensure_order_streams(nc.jetstream())
            async with OrderClient(nc=nc, timeout_s=timeout) as client:
                try:
                    decision = await client.submit(order)
                except OrderTimeout as exc:
                    click.echo(f"error: {exc}", err=True)
                    return PROBLEM_FOUND
        finally:
            await nc.close()
        if as_json:
            click.echo(msgspec.json.encode(decision).decode())
        elif decision.approved:
            click.echo(f"APPROVED {decision.account_id}:{decision.client_order_id}")
        else:
            click.echo(
                f"DENIED {decision.account_id}:{decision.client_order_id} "
                f"{decision.reason}: {decision.detail}"
            )
        return 0 if decision.approved else PROBLEM_FOUND

    sys.exit(asyncio.run(main()))
