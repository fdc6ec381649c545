"""Windowed features: exact bars vs an independent polars computation, exactly-once windows."""

from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal

import msgspec
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.features import (
    MINUTE_NS,
    SECOND_NS,
    AccountFeatures,
    FeatureConfig,
    InstrumentBars,
)
from schemas.canonical import Fill, Position, Quote, TradeTick
from schemas.common import Aggressor, Liquidity, Side
from schemas.features import AccountWindow, Bar, LateRecord
from tests.feature_samples import merged_ticks

INST = "BTCUSDT.BINANCE"


def trade(ts: int, price: str, size: str = "1", aggressor: Aggressor = Aggressor.BUY) -> TradeTick:
    return TradeTick(INST, Decimal(price), Decimal(size), aggressor, str(ts), ts, ts)


def quote(ts: int, bid: str, ask: str) -> Quote:
    return Quote(INST, Decimal(bid), Decimal("1"), Decimal(ask), Decimal("1"), ts, ts, ts)


def run(
    ticks: list[TradeTick | Quote], width: int, lateness: int
) -> tuple[list[Bar], list[LateRecord]]:
    ops: dict[str, InstrumentBars] = {}
    bars: list[Bar] = []
    late: list[LateRecord] = []
    for t in ticks:
        op = ops.get(t.instrument_id)
        if op is None:
            op = ops[t.instrument_id] = InstrumentBars(t.instrument_id, width, lateness)
        for out in op.on_tick(t):
            (late if isinstance(out, LateRecord) else bars).append(out)  # type: ignore[arg-type]
    for op in ops.values():
        bars.extend(op.flush())
    return bars, late


# ------------------------------------------------------------------ independent reference


def polars_trades(ticks: list[TradeTick | Quote]) -> pl.DataFrame:
    rows = [
        (t.instrument_id, t.ts_event, i, str(t.price), str(t.size), t.aggressor.value)
        for i, t in enumerate(ticks)
        if isinstance(t, TradeTick)
    ]
    return pl.DataFrame(
        rows, schema=["inst", "ts", "arrival", "p", "q", "aggr"], orient="row"
    ).with_columns(
        pl.col("p").cast(pl.Decimal(38, 8)),
        pl.col("q").cast(pl.Decimal(38, 8)),
    )


def reference_bars(ticks: list[TradeTick | Quote], width: int) -> dict[tuple[str, int], dict]:
    df = polars_trades(ticks).sort(["inst", "ts", "arrival"])
    agg = (
        df.with_columns((pl.col("ts") - pl.col("ts") % width).alias("start"))
        .group_by(["inst", "start"], maintain_order=True)
        .agg(
            pl.col("p").first().alias("open"),
            pl.col("p").max().alias("high"),
            pl.col("p").min().alias("low"),
            pl.col("p").last().alias("close"),
            pl.col("q").sum().alias("volume"),
            pl.len().alias("count"),
            pl.col("q").filter(pl.col("aggr") == "BUY").sum().alias("buy"),
            pl.col("q").filter(pl.col("aggr") == "SELL").sum().alias("sell"),
            (pl.col("p") * pl.col("q")).sum().alias("notional"),
            # log of the price ratio (not a difference of logs, which cancels badly)
            (pl.col("p").cast(pl.Float64) / pl.col("p").cast(pl.Float64).shift(1))
            .log()
            .pow(2)
            .sum()
            .sqrt()
            .alias("rv"),
        )
    )
    return {(r["inst"], r["start"]): r for r in agg.iter_rows(named=True)}


@pytest.fixture(scope="module")
def sample() -> list[TradeTick | Quote]:
    return merged_ticks()


@pytest.mark.parametrize("width", [SECOND_NS, MINUTE_NS], ids=["1s", "1m"])
def test_bars_match_polars_on_recorded_sample(sample: list[TradeTick | Quote], width: int) -> None:
    bars, late = run(sample, width, FeatureConfig().allowed_lateness_ns)
    assert not [lr for lr in late if lr.record and b'"trade"' in bytes(lr.record)], (
        "no trade in the sample is late at the default lateness"
    )
    ref = reference_bars(sample, width)
    with_trades = {(b.instrument_id, b.start_ns): b for b in bars if b.trade_count}
    assert set(with_trades) == set(ref)
    assert len(ref) > (600 if width == SECOND_NS else 10)
    for key, r in ref.items():
        b = with_trades[key]
        assert b.end_ns - b.start_ns == width
        assert (b.open, b.high, b.low, b.close) == (r["open"], r["high"], r["low"], r["close"])
        assert b.volume == r["volume"] and b.trade_count == r["count"]
        assert b.buy_volume == r["buy"] and b.sell_volume == r["sell"]
        assert b.notional == r["notional"]
        assert b.vwap == pytest.approx(float(r["notional"] / r["volume"]), rel=1e-15)
        if r["count"] >= 2:
            assert b.realized_vol == pytest.approx(r["rv"], rel=1e-9, abs=1e-15)
        else:
            assert b.realized_vol is None
    # every window emitted once
    counts = Counter((b.instrument_id, b.start_ns) for b in bars)
    assert max(counts.values()) == 1


def test_quote_stats_match_polars(sample: list[TradeTick | Quote]) -> None:
    bars, late = run(sample, SECOND_NS, FeatureConfig().allowed_lateness_ns)
    late_keys = {(lr.key, lr.ts_event, bytes(lr.record)) for lr in late}
    assert len(late) < 20, "the sample is mostly in order at 2 s lateness"
    quotes = [
        q
        for q in sample
        if isinstance(q, Quote)
        and (q.instrument_id, q.ts_event, msgspec.json.encode(q)) not in late_keys
    ]
    df = pl.DataFrame(
        [
            (q.instrument_id, q.ts_event, i, str(q.bid_price), str(q.ask_price))
            for i, q in enumerate(quotes)
        ],
        schema=["inst", "ts", "arrival", "b", "a"],
        orient="row",
    ).with_columns(pl.col("b").cast(pl.Decimal(38, 8)), pl.col("a").cast(pl.Decimal(38, 8)))
    ref = (
        df.sort(["inst", "ts", "arrival"])
        .with_columns(
            (pl.col("ts") - pl.col("ts") % SECOND_NS).alias("start"),
            ((pl.col("b").cast(pl.Float64) + pl.col("a").cast(pl.Float64)) / 2).alias("mid"),
            (pl.col("a") - pl.col("b")).alias("spread"),
        )
        .group_by(["inst", "start"], maintain_order=True)
        .agg(
            pl.len().alias("n"),
            pl.col("mid").first().alias("mid_open"),
            pl.col("mid").last().alias("mid_close"),
            pl.col("mid").mean().alias("mid_mean"),
            pl.col("spread").min().alias("smin"),
            pl.col("spread").max().alias("smax"),
            pl.col("spread").cast(pl.Float64).mean().alias("smean"),
        )
    )
    got = {(b.instrument_id, b.start_ns): b for b in bars if b.quote_count}
    assert len(got) == ref.height
    for r in ref.iter_rows(named=True):
        b = got[(r["inst"], r["start"])]
        assert b.quote_count == r["n"]
        assert float(b.mid_open) == pytest.approx(r["mid_open"], rel=1e-15)  # type: ignore[arg-type]
        assert float(b.mid_close) == pytest.approx(r["mid_close"], rel=1e-15)  # type: ignore[arg-type]
        assert b.mid_mean == pytest.approx(r["mid_mean"], rel=1e-12)
        assert (b.spread_min, b.spread_max) == (r["smin"], r["smax"])
        assert b.spread_mean == pytest.approx(r["smean"], rel=1e-9)


# ------------------------------------------------------------------ exactly once, lateness


def test_late_item_is_routed_not_merged_and_window_emitted_once() -> None:
    op = InstrumentBars(INST, SECOND_NS, allowed_lateness_ns=0)
    out: list[Bar | LateRecord] = []
    out += op.on_tick(trade(100_000_000, "10"))
    out += op.on_tick(trade(500_000_000, "12", "2", Aggressor.SELL))
    assert out == []
    out += op.on_tick(trade(1_200_000_000, "11"))  # closes [0, 1s)
    [bar] = out
    assert isinstance(bar, Bar)
    assert (bar.open, bar.high, bar.low, bar.close) == (
        Decimal(10),
        Decimal(12),
        Decimal(10),
        Decimal(12),
    )
    assert (bar.volume, bar.buy_volume, bar.sell_volume) == (Decimal(3), Decimal(1), Decimal(2))
    assert bar.imbalance == pytest.approx(-1 / 3)
    assert bar.realized_vol == pytest.approx(abs(math.log(12 / 10)))
    [late] = op.on_tick(trade(700_000_000, "99"))
    assert isinstance(late, LateRecord)
    assert late.window_start_ns == 0 and late.ts_event == 700_000_000 and late.key == INST
    assert msgspec.json.decode(late.record, type=TradeTick).price == Decimal(99)
    # after every window has closed (end of stream), late items still do not reopen them
    [last] = op.flush()
    assert last.start_ns == SECOND_NS and last.close == Decimal(11)
    assert op.flush() == []
    [late2] = op.on_tick(trade(1_900_000_000, "50"))
    [late3] = op.on_tick(trade(300_000_000, "50"))
    assert isinstance(late2, LateRecord) and isinstance(late3, LateRecord)
    assert op.flush() == []
    # a genuinely new window still opens
    assert op.on_tick(trade(2_100_000_000, "13")) == []
    [newer] = op.flush()
    assert newer.start_ns == 2 * SECOND_NS
    w = op.windows
    assert (w.records_in, w.accepted, w.late, w.emitted) == (7, 4, 3, 3)


def test_allowed_lateness_admits_out_of_order_items() -> None:
    op = InstrumentBars(INST, SECOND_NS, allowed_lateness_ns=500_000_000)
    assert op.on_tick(trade(900_000_000, "10")) == []
    assert op.on_tick(trade(1_300_000_000, "11")) == []  # watermark 0.8 s: [0,1) open
    assert op.on_tick(trade(200_000_000, "9")) == []  # out of order, within lateness
    [bar] = op.on_tick(trade(1_600_000_000, "12"))  # watermark 1.1 s closes [0,1)
    assert isinstance(bar, Bar)
    # open/close follow event time, not arrival
    assert (bar.open, bar.close, bar.trade_count) == (Decimal(9), Decimal(10), 2)


def test_quote_only_window() -> None:
    op = InstrumentBars(INST, SECOND_NS, 0)
    op.on_tick(quote(10, "100.00", "100.02"))
    op.on_tick(quote(20, "100.01", "100.02"))
    [bar] = op.flush()
    assert bar.trade_count == 0 and bar.open is None and bar.vwap is None
    assert bar.volume == 0 and bar.quote_count == 2
    assert (bar.mid_open, bar.mid_close) == (Decimal("100.01"), Decimal("100.015"))
    assert (bar.spread_min, bar.spread_max) == (Decimal("0.01"), Decimal("0.02"))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5_000), st.integers(1, 9)), min_size=1, max_size=80),
    st.integers(0, 1_500),
)
def test_every_item_counted_once(items: list[tuple[int, int]], lateness_ms: int) -> None:
    op = InstrumentBars(INST, SECOND_NS, lateness_ms * 1_000_000)
    bars: list[Bar] = []
    late: list[LateRecord] = []
    for ms, size in items:
        for o in op.on_tick(trade(ms * 1_000_000, "10", str(size))):
            (late if isinstance(o, LateRecord) else bars).append(o)  # type: ignore[arg-type]
    bars += op.flush()
    starts = [b.start_ns for b in bars]
    assert len(starts) == len(set(starts)), "a window was emitted twice"
    assert starts == sorted(starts)
    assert sum(b.trade_count for b in bars) + len(late) == len(items)
    assert sum(b.volume for b in bars) + sum(
        msgspec.json.decode(lr.record, type=TradeTick).size for lr in late
    ) == sum(Decimal(s) for _, s in items)
    # an item is late exactly when its window had already been emitted before it came
    for lr in late:
        assert lr.window_start_ns + SECOND_NS <= lr.watermark


# ------------------------------------------------------------------ accounts


def fill(ts: int, qty: str, px: str, fee: str = "0.1") -> Fill:
    return Fill(
        "e" + str(ts),
        "o",
        "c",
        "ACC1",
        INST,
        Side.BUY,
        Decimal(qty),
        Decimal(px),
        Decimal(fee),
        "USDT",
        Liquidity.TAKER,
        ts,
    )


def position(ts: int, inst: str, realized: str, unrealized: str) -> Position:
    return Position(
        "ACC1",
        inst,
        Decimal(1),
        Decimal(1),
        Decimal(realized),
        Decimal(unrealized),
        None,
        Decimal(0),
        ts,
    )


def test_account_rolling_pnl_and_turnover() -> None:
    op = AccountFeatures("ACC1", MINUTE_NS, 0)
    out: list[AccountWindow | LateRecord] = []
    out += op.on_record(fill(1 * SECOND_NS, "0.5", "100"))
    out += op.on_record(fill(2 * SECOND_NS, "-2", "50.5"))
    out += op.on_record(position(3 * SECOND_NS, "A", "10", "5"))
    out += op.on_record(position(4 * SECOND_NS, "B", "-1", "2"))
    out += op.on_record(position(5 * SECOND_NS, "A", "12", "1"))
    out += op.on_record(position(61 * SECOND_NS, "B", "3", "0"))  # closes minute 0
    [w0] = out
    assert isinstance(w0, AccountWindow)
    assert w0.fill_count == 2 and w0.turnover == Decimal("151.0") and w0.fees == Decimal("0.2")
    assert (w0.realized_pnl, w0.unrealized_pnl) == (Decimal(11), Decimal(3))
    assert w0.total_pnl == w0.pnl_change == Decimal(14)
    assert w0.position_updates == 3
    [w1] = op.flush()
    assert (w1.realized_pnl, w1.unrealized_pnl, w1.total_pnl) == (
        Decimal(15),
        Decimal(1),
        Decimal(16),
    )
    assert w1.pnl_change == Decimal(2) and w1.turnover == 0 and w1.fill_count == 0
    [late] = op.on_record(fill(30 * SECOND_NS, "1", "1"))
    assert isinstance(late, LateRecord)


def test_config_is_strict() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"widths_ns": [1000], "bogus": 1}', type=FeatureConfig)
    with pytest.raises(ValueError, match="hint"):
        FeatureConfig(widths_ns=(0,))
    assert msgspec.json.decode(b'{"allowed_lateness_ns": 0}', type=FeatureConfig).widths_ns == (
        SECOND_NS,
        MINUTE_NS,
    )
