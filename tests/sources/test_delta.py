"""Replay from real Delta tick tables: order, determinism, filters, pacing, NATS."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from pathlib import Path

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from schemas.canonical import BookDelta, BookLevel, Quote, Tick, TradeTick
from schemas.common import Aggressor
from schemas.transport import RECV_NS_HEADER
from sinks.delta import DeltaTicksConfig, Stamped, TickTableWriter
from sources.delta import (
    DeltaReplaySource,
    Pacer,
    iter_frames,
    iter_ticks,
    parse_time,
    replay_delta_to_nats,
)

DAY = 86_400 * 10**9
T0 = 1_700_006_400 * 10**9  # 2023-11-15T00:00:00Z


def make_ticks() -> list[Tick]:
    """Trades, quotes and book deltas over two days, with ties on ts_event."""
    rng = random.Random(7)
    ticks: list[Tick] = []
    for i in range(600):
        ts = T0 + (i // 3) * 1_000_000 + (DAY if i >= 300 else 0)
        inst = rng.choice(["BTCUSDT.BINANCE", "ETHUSDT.BINANCE"])
        k = i % 3
        if k == 0:
            ticks.append(
                TradeTick(
                    inst,
                    Decimal("65000.1") + i,
                    Decimal("0.5"),
                    Aggressor.BUY,
                    f"t{i}",
                    ts,
                    ts + 10,
                )
            )
        elif k == 1:
            ticks.append(
                Quote(
                    inst,
                    Decimal(100 + i),
                    Decimal("1.25"),
                    Decimal(101 + i),
                    Decimal("2"),
                    i,
                    ts,
                    ts + 11,
                )
            )
        else:
            ticks.append(
                BookDelta(
                    inst,
                    [BookLevel(Decimal("99.5"), Decimal("0"))],
                    [BookLevel(Decimal("100.25"), Decimal("3"))],
                    i,
                    i + 1,
                    i == 2,
                    ts,
                    ts + 12,
                )
            )
    return ticks


RANK = {TradeTick: 0, Quote: 1, BookDelta: 2}


def expected_order(ticks: list[Tick]) -> list[Tick]:
    return sorted(ticks, key=lambda t: (t.ts_event, t.ts_recv, RANK[type(t)], t.instrument_id))


@pytest.fixture
def lake(tmp_path: Path) -> tuple[str, list[Tick]]:
    ticks = make_ticks()
    shuffled = ticks[:]
    random.Random(1).shuffle(shuffled)  # out of order across many files
    w = TickTableWriter(DeltaTicksConfig(root=str(tmp_path)))
    for b in range(0, 600, 75):
        w.write([Stamped("md.ticks.x", None, t) for t in shuffled[b : b + 75]])
    return str(tmp_path), ticks


def flat(root: str, **kw: object) -> list[Tick]:
    return [t for batch in iter_ticks(root, batch_size=64, **kw) for t in batch]  # type: ignore[arg-type]


def test_replay_is_merged_by_event_time_and_exact(lake: tuple[str, list[Tick]]) -> None:
    root, ticks = lake
    got = flat(root)
    assert got == expected_order(ticks)
    first_trade = next(t for t in got if isinstance(t, TradeTick))
    assert str(first_trade.price) == "65000.1"  # storage scale trimmed, value exact
    assert msgspec.json.decode(msgspec.json.encode(got[2]), type=Tick) == got[2]


def test_replay_is_deterministic_across_compaction(lake: tuple[str, list[Tick]]) -> None:
    from deltalake import DeltaTable

    root, _ = lake
    before = msgspec.json.encode(flat(root))
    for kind in ("trades", "quotes", "book_deltas"):
        DeltaTable(f"{root}/ticks/{kind}").optimize.compact()
    assert msgspec.json.encode(flat(root)) == before


def test_filters_by_time_and_instrument(lake: tuple[str, list[Tick]]) -> None:
    root, ticks = lake
    start, end = T0 + 50 * 1_000_000, T0 + DAY + 20 * 1_000_000
    got = flat(root, start=start, end=end, instruments=["ETHUSDT.BINANCE"])
    want = [
        t
        for t in expected_order(ticks)
        if start <= t.ts_event < end and t.instrument_id == "ETHUSDT.BINANCE"
    ]
    assert got == want and len(want) > 50


def test_parse_time() -> None:
    assert parse_time("2023-11-15") == T0
    assert parse_time("2023-11-15T00:00:01Z") == T0 + 10**9
    assert parse_time(str(T0)) == T0
    with pytest.raises(ValueError, match="hint"):
        parse_time("yesterday")


@pytest.mark.parametrize("output", ["ticks", "frames"])
def test_bytewax_source(lake: tuple[str, list[Tick]], output: str) -> None:
    root, ticks = lake
    out: list[object] = []
    flow = Dataflow("replay")
    batches = op.input("in", flow, DeltaReplaySource(root, batch_size=100, output=output))  # type: ignore[arg-type]
    op.output("out", batches, TestingSink(out))
    run_main(flow)
    if output == "ticks":
        assert [t for b in out for t in b] == expected_order(ticks)  # type: ignore[attr-defined]
    else:
        assert sum(f.height for f in out) == 600  # type: ignore[attr-defined]
        ts = [x for f in out for x in f["ts_event"].to_list()]  # type: ignore[attr-defined]
        assert ts == sorted(ts)


def test_frames_batches_are_bounded(lake: tuple[str, list[Tick]]) -> None:
    root, _ = lake
    sizes = [f.height for f in iter_frames(root, batch_size=128)]
    assert max(sizes) <= 128 and sum(sizes) == 600


def test_pacer_spaces_events_by_event_time_over_speed() -> None:
    now = [0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += int(s * 1e9)

    async def run() -> None:
        p = Pacer(2.0, lambda: now[0], sleep)
        for ts in (10**9, 10**9, 2 * 10**9, 5 * 10**9):
            await p.wait_for(ts)

    asyncio.run(run())
    assert slept == [0.5, 1.5]  # 1 s then 3 s of event time at 2x
    unpaced = Pacer(None, lambda: 0, sleep)
    asyncio.run(unpaced.wait_for(10**12))
    assert slept == [0.5, 1.5]


def test_replay_publishes_canonical_ticks_to_nats(
    lake: tuple[str, list[Tick]], nats_server: object
) -> None:
    import nats

    from trade2026.natsconf import NatsConfig

    root, ticks = lake
    url = nats_server.url  # type: ignore[attr-defined]
    got: list[tuple[str, bytes, str]] = []

    async def main() -> None:
        nc = await nats.connect(url)
        done = asyncio.Event()

        async def cb(msg: nats.aio.msg.Msg) -> None:
            got.append((msg.subject, msg.data, (msg.headers or {}).get(RECV_NS_HEADER, "")))
            if len(got) == 600:
                done.set()

        await nc.subscribe("md.ticks.>", cb=cb)
        await nc.flush()
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(
            None, lambda: replay_delta_to_nats(root, NatsConfig(servers=(url,)))
        )
        assert stats.published == 600
        await asyncio.wait_for(done.wait(), 10)
        await nc.drain()

    asyncio.run(main())
    decoded = [msgspec.json.decode(d, type=Tick) for _, d, _ in got]
    assert decoded == expected_order(ticks)
    assert all(
        s == f"md.ticks.{t.instrument_id}" for (s, _, _), t in zip(got, decoded, strict=True)
    )
    assert all(h == str(t.ts_recv) for (_, _, h), t in zip(got, decoded, strict=True))
