"""The feature flow end to end on bytewax: recorded ticks in, bars/late/dead letters out."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import msgspec
import polars as pl
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.features import FeatureOutputs, build_flow
from operators.features import MINUTE_NS, SECOND_NS, FeatureConfig
from schemas.canonical import DeadLetter, Fill, Position, Quote, TradeTick
from schemas.common import Aggressor, Liquidity, Side
from schemas.features import AccountWindow, Bar, LateRecord
from schemas.transport import Message
from tests.feature_samples import merged_ticks


def run(
    items: list, config: FeatureConfig | None = None, batch_size: int = 1000, accounts: bool = False
):
    bars: list[Bar] = []
    late: list[LateRecord] = []
    dead: list[DeadLetter] = []
    acc: list[AccountWindow] = []
    outputs = FeatureOutputs(
        bars=TestingSink(bars),
        late=TestingSink(late),
        dead_letters=TestingSink(dead),
        accounts=TestingSink(acc) if accounts else None,
    )
    run_main(build_flow(TestingSource(items, batch_size=batch_size), outputs, config))
    return bars, late, dead, acc


def test_flow_bars_match_polars_group_by_dynamic() -> None:
    ticks = merged_ticks()
    bars, late, dead, _ = run(ticks)
    assert dead == []
    assert not any(b'"trade"' in bytes(lr.record) for lr in late)
    trades = pl.DataFrame(
        [
            (t.instrument_id, t.ts_event, i, str(t.price), str(t.size))
            for i, t in enumerate(ticks)
            if isinstance(t, TradeTick)
        ],
        schema=["inst", "ts", "arrival", "p", "q"],
        orient="row",
    ).with_columns(
        pl.from_epoch("ts", time_unit="ns").dt.replace_time_zone("UTC").alias("t"),
        pl.col("p").cast(pl.Decimal(38, 8)),
        pl.col("q").cast(pl.Decimal(38, 8)),
    )
    for width, every in [(SECOND_NS, "1s"), (MINUTE_NS, "1m")]:
        ref = (
            trades.sort(["inst", "ts", "arrival"])
            .group_by_dynamic("t", every=every, group_by="inst", closed="left", label="left")
            .agg(
                pl.col("p").first().alias("o"),
                pl.col("p").max().alias("h"),
                pl.col("p").min().alias("l"),
                pl.col("p").last().alias("c"),
                pl.col("q").sum().alias("v"),
                pl.len().alias("n"),
            )
        )
        got = {
            (b.instrument_id, b.start_ns): b for b in bars if b.width_ns == width and b.trade_count
        }
        assert len(got) == ref.height
        for r in ref.iter_rows(named=True):
            start = int(r["t"].timestamp()) * SECOND_NS
            b = got[(r["inst"], start)]
            assert (b.open, b.high, b.low, b.close, b.volume, b.trade_count) == (
                r["o"],
                r["h"],
                r["l"],
                r["c"],
                r["v"],
                r["n"],
            )
        per_window = Counter((b.instrument_id, b.start_ns) for b in bars if b.width_ns == width)
        assert set(per_window.values()) == {1}, "every window emitted exactly once"


def test_flow_routes_late_items_and_emits_each_window_once_batch_size_1() -> None:
    inst = "ETHUSDT.BINANCE"

    def t(ms: int, px: str) -> TradeTick:
        return TradeTick(inst, Decimal(px), Decimal(1), Aggressor.BUY, str(ms), ms * 1_000_000, 0)

    items = [t(100, "1"), t(900, "2"), t(1_500, "3"), t(400, "99"), t(2_500, "4"), t(50, "98")]
    cfg = FeatureConfig(widths_ns=(SECOND_NS,), allowed_lateness_ns=0)
    bars, late, _, _ = run(items, cfg, batch_size=1)
    assert [(b.start_ns, b.open, b.close, b.trade_count) for b in bars] == [
        (0, Decimal(1), Decimal(2), 2),
        (SECOND_NS, Decimal(3), Decimal(3), 1),
        (2 * SECOND_NS, Decimal(4), Decimal(4), 1),
    ]
    assert [(lr.ts_event, lr.window_start_ns) for lr in late] == [(400_000_000, 0), (50_000_000, 0)]


def test_flow_decodes_messages_and_dead_letters_garbage() -> None:
    tick = TradeTick("X.BINANCE", Decimal("1.5"), Decimal(2), Aggressor.SELL, "1", 10, 11)
    items = [
        Message(subject="ticks.X", data=msgspec.json.encode(tick), ts_recv=11),
        Message(subject="ticks.X", data=b"{not json", ts_recv=12),
    ]
    bars, _, dead, _ = run(items, FeatureConfig(widths_ns=(SECOND_NS,)))
    [bar] = bars
    assert bar.close == Decimal("1.5") and bar.sell_volume == 2
    [dl] = dead
    assert dl.reason == "UNDECODABLE" and dl.payload == b"{not json" and dl.subject == "ticks.X"


def test_flow_account_windows() -> None:
    f = Fill(
        "e1",
        "o1",
        "c1",
        "A1",
        "X",
        Side.SELL,
        Decimal(2),
        Decimal("10.5"),
        Decimal("0.01"),
        "USDT",
        Liquidity.MAKER,
        5 * SECOND_NS,
    )
    p = Position(
        "A1",
        "X",
        Decimal(-2),
        Decimal("10.5"),
        Decimal(0),
        Decimal("-0.4"),
        None,
        Decimal("0.01"),
        6 * SECOND_NS,
    )
    _, _, _, acc = run([f, p], accounts=True)
    [w] = acc
    assert (w.account_id, w.start_ns, w.end_ns) == ("A1", 0, MINUTE_NS)
    assert (w.turnover, w.fees, w.total_pnl, w.fill_count) == (
        Decimal(21),
        Decimal("0.01"),
        Decimal("-0.4"),
        1,
    )


@pytest.mark.parametrize("batch_size", [1, 500])
def test_flow_counts_balance(batch_size: int) -> None:
    ticks = merged_ticks(limit_per_file=3000)
    cfg = FeatureConfig(widths_ns=(SECOND_NS,), allowed_lateness_ns=0)
    bars, late, _, _ = run(ticks, cfg, batch_size=batch_size)
    # every tick either landed in exactly one window or was routed late
    assert sum(b.trade_count + b.quote_count for b in bars) + len(late) == len(ticks)
    assert isinstance(ticks[0], TradeTick | Quote)
