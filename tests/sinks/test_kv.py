"""The hot cache against a real nats-server's JetStream key-value buckets."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import nats
import pytest

from schemas.canonical import Position, Quote
from sinks.kv import (
    HotCache,
    HotCacheConfig,
    HotCacheSink,
    decode_key_part,
    encode_key_part,
    position_key,
)
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer


def quote(inst: str, bid: str, ts: int) -> Quote:
    return Quote(
        inst,
        Decimal(bid),
        Decimal("1.5"),
        Decimal(bid) + Decimal("0.01"),
        Decimal("2"),
        ts,
        ts,
        ts + 1,
    )


def position(acct: str, inst: str, qty: str, upnl: str, ts: int) -> Position:
    return Position(
        account_id=acct,
        instrument_id=inst,
        quantity=Decimal(qty),
        avg_open_price=Decimal("100.10"),
        realized_pnl=Decimal("1.25"),
        unrealized_pnl=Decimal(upnl),
        mark_price=Decimal("101.00"),
        fees=Decimal("0.05"),
        ts_event=ts,
    )


def run(server: LocalNatsServer, body: Any) -> Any:
    async def main() -> Any:
        nc = await nats.connect(server.url)
        try:
            return await body(nc)
        finally:
            await nc.close()

    return asyncio.run(main())


def test_keys_escape_reversibly_and_keep_accounts_apart() -> None:
    assert encode_key_part("BTCUSDT.BINANCE") == "BTCUSDT.BINANCE"
    assert encode_key_part("a b=c") == "a=20b=3Dc"
    assert decode_key_part("a=20b=3Dc") == "a b=c"
    assert position_key("desk.1", "ETH-USD.COINBASE") == "desk=2E1.ETH-USD.COINBASE"
    assert decode_key_part(encode_key_part("ünï.")) == "ünï."


def test_latest_quote_wins_by_event_time_not_arrival(own_nats_server: LocalNatsServer) -> None:
    async def body(nc: Any) -> tuple[Quote | None, Quote | None, int]:
        cache = await HotCache.open(nc)
        n = await cache.put_quotes(
            [quote("BTCUSDT.BINANCE", "65000.10", 20), quote("BTCUSDT.BINANCE", "64000.00", 10)]
        )
        # a late, older quote in a later batch (and from a second writer) changes nothing
        other = await HotCache.open(nc)
        await other.put_quotes([quote("BTCUSDT.BINANCE", "1.00", 15)])
        await cache.put_quotes([quote("BTCUSDT.BINANCE", "65001.00", 30)])
        return await other.get_quote("BTCUSDT.BINANCE"), await other.get_quote("NOPE.X"), n

    got, missing, written = run(own_nats_server, body)
    assert written == 1
    assert got is not None
    assert got.bid_price == Decimal("65001.00")
    assert got.ts_event == 30
    assert missing is None


def test_positions_listed_per_account(own_nats_server: LocalNatsServer) -> None:
    async def body(nc: Any) -> tuple[list[Position], list[Position]]:
        cache = await HotCache.open(nc, HotCacheConfig(storage="memory"))
        await cache.put_positions(
            [
                position("ACC1", "ETHUSDT.BINANCE", "2", "3.10", 5),
                position("ACC1", "BTCUSDT.BINANCE", "-0.5", "-7.00", 5),
                position("ACC1.X", "BTCUSDT.BINANCE", "9", "0", 5),
                position("ACC1", "ETHUSDT.BINANCE", "3", "4.20", 6),
            ]
        )
        return await cache.get_positions("ACC1"), await cache.get_positions("NOBODY")

    acc1, nobody = run(own_nats_server, body)
    assert [(p.instrument_id, p.quantity, p.unrealized_pnl) for p in acc1] == [
        ("BTCUSDT.BINANCE", Decimal("-0.5"), Decimal("-7.00")),
        ("ETHUSDT.BINANCE", Decimal("3"), Decimal("4.20")),
    ]
    assert nobody == []


def test_bytewax_sink_fills_the_cache(own_nats_server: LocalNatsServer) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    items = [
        quote("ETHUSDT.BINANCE", "3000.01", 1),
        position("ACC9", "ETHUSDT.BINANCE", "1", "0.5", 2),
    ]
    flow = Dataflow("hot_cache_test")
    stream = op.input("in", flow, TestingSource(items))
    op.output("out", stream, HotCacheSink(NatsConfig(servers=(own_nats_server.url,))))
    run_main(flow)

    async def body(nc: Any) -> tuple[Quote | None, list[Position]]:
        cache = await HotCache.open(nc, create=False)
        return await cache.get_quote("ETHUSDT.BINANCE"), await cache.get_positions("ACC9")

    q, ps = run(own_nats_server, body)
    assert q is not None and q.bid_price == Decimal("3000.01")
    assert [p.unrealized_pnl for p in ps] == [Decimal("0.5")]


def test_reader_does_not_create_buckets(own_nats_server: LocalNatsServer) -> None:
    from nats.js.errors import BucketNotFoundError

    async def body(nc: Any) -> None:
        await HotCache.open(nc, create=False)

    with pytest.raises(BucketNotFoundError):
        run(own_nats_server, body)
