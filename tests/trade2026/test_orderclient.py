"""OrderClient and the ORDERS stream against a real nats-server (no orders flow needed)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from nats.js import api as js_api

from schemas.common import OrderType, Side
from schemas.orders import SubmitOrder
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import connect
from trade2026.orderclient import OrderClient, OrderTimeout, ensure_order_streams

SUBJECTS = ["orders.cancel", "orders.control", "orders.replace", "orders.submit"]


def test_ensure_order_streams_is_idempotent_and_repairs_the_subjects(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> list[Any]:
        nc = await connect(NatsConfig(servers=(own_nats_server.url,)))
        js = nc.jetstream()
        # Someone created it by hand with too few subjects and acks on.
        await js.add_stream(name="ORDERS", subjects=["orders.submit"])
        repaired = await ensure_order_streams(js)
        again = await ensure_order_streams(js)
        await nc.close()
        return [repaired, again]

    repaired, again = asyncio.run(main())
    for info in (repaired, again):
        assert sorted(info.config.subjects) == SUBJECTS
        assert info.config.no_ack is True


def test_ensure_order_streams_creates_a_file_stream(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> Any:
        nc = await connect(NatsConfig(servers=(own_nats_server.url,)))
        await ensure_order_streams(nc.jetstream())
        info = await nc.jetstream().stream_info("ORDERS")
        await nc.close()
        return info

    info = asyncio.run(main())
    assert info.config.storage == js_api.StorageType.FILE
    assert sorted(info.config.subjects) == SUBJECTS and info.config.no_ack


def test_unanswered_submit_times_out_but_is_kept_in_the_stream(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    order = SubmitOrder(
        client_order_id="t1",
        account_id="alice",
        instrument_id="BTCUSDT.BINANCE",
        side=Side.SELL,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.001"),
        price=Decimal("45000"),
    )

    async def main() -> tuple[OrderTimeout, Any]:
        config = NatsConfig(servers=(own_nats_server.url,))
        nc = await connect(config)
        js = nc.jetstream()
        await ensure_order_streams(js)
        async with OrderClient(config, timeout_s=0.2, clock=lambda: 1_700_000_000_000_000_000) as c:
            with pytest.raises(OrderTimeout) as err:
                await c.submit(order)
        stored = await js.get_last_msg("ORDERS", "orders.submit")
        await nc.close()
        return err.value, stored

    err, stored = asyncio.run(main())
    assert "trade2026 run orders" in str(err)
    # The client stamped ts_submit from its clock; the retry request is exactly what was stored.
    assert err.request.ts_submit == 1_700_000_000_000_000_000
    assert stored.data == msgspec.json.encode(err.request)
    assert stored.headers is not None and stored.headers["T26-Reply-To"].startswith("_INBOX.")


def test_a_closed_client_says_how_to_connect() -> None:
    client = OrderClient(NatsConfig(servers=("nats://127.0.0.1:1",)))
    with pytest.raises(RuntimeError, match="async with OrderClient"):
        _ = client.nc


def test_order_path_streams_are_made_once_even_by_flows_starting_together(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    from trade2026.orderclient import ensure_order_path_streams

    subjects = [
        "orders.submit", "venue.commands.BINANCE", "exec.reports.SIM", "orders.events.a",
        "orders.alerts", "risk.decisions.a", "fills.a", "positions.a", "pnl.a",
        "tca.fills.a", "md.ticks.X", "dlq.orders",
    ]  # fmt: skip

    async def main() -> dict[str, int]:
        nc = await connect(NatsConfig(servers=(own_nats_server.url,)))
        js = nc.jetstream()
        # Four flows starting at once each make sure the streams exist.
        await asyncio.gather(*(ensure_order_path_streams(js) for _ in range(4)))
        for s in subjects:  # a plain core publish, as the flows' sinks do
            await nc.publish(s, b"{}")
        await nc.flush()
        # VENUE_IN copies from VENUE and MD asynchronously: poll, bounded.
        for _ in range(500):
            if (await js.stream_info("VENUE_IN")).state.messages >= 2:
                break
            await asyncio.sleep(0.01)
        names = [n async for n in _stream_names(js)]
        counts = {n: int((await js.stream_info(n)).state.messages) for n in names}
        await nc.close()
        return counts

    counts = asyncio.run(main())
    # Each subject stored by exactly one capture stream; VENUE_IN holds copies of the
    # venue command and the tick.
    assert counts.pop("VENUE_IN") == 2
    assert sum(counts.values()) == len(subjects), counts


def test_a_stream_overlapping_the_order_path_is_named_in_the_error(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    from trade2026.orderclient import ensure_order_path_streams

    async def main() -> None:
        nc = await connect(NatsConfig(servers=(own_nats_server.url,)))
        js = nc.jetstream()
        await js.add_stream(name="MINE", subjects=["fills.>"])
        try:
            await ensure_order_path_streams(js)
        finally:
            await nc.close()

    with pytest.raises(RuntimeError, match="overlapping subjects"):
        asyncio.run(main())


async def _stream_names(js: Any) -> Any:
    for info in await js.streams_info():
        yield info.config.name
