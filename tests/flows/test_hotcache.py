"""The hot-cache flow against a real nats-server: latest by event time, read back by `get`."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import msgspec
import nats
from bytewax.testing import run_main
from click.testing import CliRunner

from flows.hotcache import DLQ_SUBJECT, PNL_BUCKET, STAGE, build_hotcache, pnl_key
from operators.portfolio import AccountPnl
from schemas.canonical import Position, Quote, TradeTick
from schemas.common import Aggressor
from sinks.kv import HotCacheConfig
from trade2026.accounting import Accounting
from trade2026.commands.get import get_command
from trade2026.flowregistry import RunContext
from trade2026.localstack import wait_until
from trade2026.natsconf import NatsConfig

T0 = 1_767_225_600 * 10**9
enc = msgspec.json.encode


def quote(bid: str, ts: int, inst: str = "BTCUSDT.BINANCE") -> Quote:
    return Quote(inst, Decimal(bid), Decimal("1"), Decimal(bid) + 1, Decimal("2"), ts, ts, ts)


def position(qty: str, ts: int) -> Position:
    return Position(
        "acc.1",
        "BTCUSDT.BINANCE",
        Decimal(qty),
        Decimal("87000"),
        Decimal("0"),
        Decimal("-2.5"),
        Decimal("86990"),
        Decimal("0.02"),
        ts,
    )


def pnl(net: str, ts: int) -> AccountPnl:
    return AccountPnl(
        "acc.1", Decimal("0"), Decimal(net), Decimal("0"), Decimal(net), Decimal("87"), 1, ts
    )


def test_latest_quote_position_and_pnl_reach_the_buckets(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    acct = Accounting()
    ctx = RunContext(nats=NatsConfig(servers=(url,)), accounting=acct, idle_timeout_s=1.5)
    flow, source = build_hotcache(ctx, HotCacheConfig(storage="memory"))
    failures: list[BaseException] = []

    def target() -> None:
        try:
            run_main(flow)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert wait_until(lambda: len(source.stats) == 3 or failures, 20), "never subscribed"
    dead: list[bytes] = []

    async def publish() -> None:
        nc = await nats.connect(url)

        async def on_dead(msg: Any) -> None:
            dead.append(msg.data)

        await nc.subscribe(DLQ_SUBJECT, cb=on_dead)
        # The newer quote first: the late, older one must not replace it.
        await nc.publish("md.ticks.BTCUSDT.BINANCE", enc(quote("87001.5", T0 + 20)))
        await nc.flush()
        await asyncio.sleep(0.3)  # a separate batch, so the sink's compare-and-set decides
        await nc.publish("md.ticks.BTCUSDT.BINANCE", enc(quote("86000", T0 + 10)))
        trade = TradeTick("BTCUSDT.BINANCE", Decimal("1"), Decimal("1"), Aggressor.BUY, "t", T0, T0)
        await nc.publish("md.ticks.BTCUSDT.BINANCE", enc(trade))
        await nc.publish("positions.acc.1", enc(position("0.5", T0 + 5)))
        await nc.publish("positions.acc.1", enc(position("0.75", T0 + 6)))
        await nc.publish("pnl.acc.1", enc(pnl("-2.52", T0 + 6)))
        await nc.publish("pnl.acc.1", enc(pnl("-1", T0 + 1)))
        await nc.publish("positions.acc.1", b"{oops")
        await nc.flush()
        await asyncio.sleep(0.5)
        await nc.close()

    asyncio.run(publish())
    thread.join(timeout=30)
    assert not thread.is_alive() and not failures

    q = CliRunner().invoke(get_command, ["quote", "BTCUSDT.BINANCE", "--json", "--nats-url", url])
    assert q.exit_code == 0, q.output
    got = msgspec.json.decode(q.output, type=Quote)
    assert got.bid_price == Decimal("87001.5") and got.ts_event == T0 + 20

    p = CliRunner().invoke(get_command, ["positions", "acc.1", "--json", "--nats-url", url])
    assert p.exit_code == 0, p.output
    (pos,) = [msgspec.json.decode(line, type=Position) for line in p.output.splitlines()]
    assert pos.quantity == Decimal("0.75")

    async def read_pnl() -> AccountPnl:
        nc = await nats.connect(url)
        kv = await nc.jetstream().key_value(PNL_BUCKET)
        entry = await kv.get(pnl_key("acc.1"))
        await nc.close()
        return msgspec.json.decode(entry.value or b"", type=AccountPnl)

    assert asyncio.run(read_pnl()).net_pnl == Decimal("-2.52")
    assert len(dead) == 1 and msgspec.json.decode(dead[0])["reason"] == "DECODE_ERROR"
    total = acct.stage(STAGE)
    assert (total.records_in, total.out, total.dead_lettered) == (8, 7, 1)
