"""Execution quality: slippage, fill ratio, time to first fill and windows, checked by hand."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from operators.tca import ExecutionQuality, FillQuality, OrderQuality, TcaConfig, TcaWindow
from schemas.canonical import Fill, Order, Quote
from schemas.common import Liquidity, OrderType, Side

BTC = "BTCUSDT.BINANCE"
ETH = "ETHUSDT.BINANCE"
S = 1_000_000_000


def quote(ts: int, bid: str, ask: str, inst: str = BTC) -> Quote:
    return Quote(inst, D(bid), D("1"), D(ask), D("1"), 0, ts, ts)


def order(side: Side, qty: str, inst: str = BTC, account: str = "acct") -> Order:
    return Order("c", account, inst, side, OrderType.MARKET, D(qty))


def fill(exec_id: str, order_id: str, side: Side, qty: str, px: str, ts: int, **kw: str) -> Fill:
    return Fill(
        exec_id=exec_id,
        order_id=order_id,
        client_order_id="c",
        account_id=kw.get("account", "acct"),
        instrument_id=kw.get("inst", BTC),
        side=side,
        quantity=D(qty),
        price=D(px),
        fee=D(kw.get("fee", "0")),
        fee_currency="USDT",
        liquidity=Liquidity.TAKER,
        ts_event=ts,
    )


def of(kind: type, out: list) -> list:
    return [x for x in out if isinstance(x, kind)]


@pytest.mark.parametrize(
    ("side", "px", "bps"),
    [
        (Side.BUY, "101", D("100")),  # paid 1 above a mid of 100: a cost of 100 bps
        (Side.SELL, "99", D("100")),  # sold 1 below: also a cost
        (Side.BUY, "99.5", D("-50")),  # bought below the mid: a gain
        (Side.SELL, "100.25", D("-25")),
    ],
)
def test_fill_slippage_against_arrival_mid_positive_is_cost(side: Side, px: str, bps: D) -> None:
    tca = TcaConfig().build()
    tca.on_tick(quote(0, "99", "101"))
    tca.on_order(order(side, "2"), "o1", 1)
    tca.on_tick(quote(2, "150", "151"))  # later quotes do not move the arrival mid
    (fq,) = of(FillQuality, tca.on_fill(fill("e1", "o1", side, "1", px, 3)))
    assert (fq.arrival_mid, fq.slippage_bps) == (D(100), bps)


def test_slippage_rounds_half_even_to_the_bps_quantum() -> None:
    tca = TcaConfig().build()
    tca.on_tick(quote(0, "2.9", "3.1"))  # mid 3
    tca.on_order(order(Side.BUY, "1"), "o1", 1)
    (fq,) = of(FillQuality, tca.on_fill(fill("e1", "o1", Side.BUY, "1", "3.01", 2)))
    assert fq.slippage_bps == D("33.3333")  # 0.01 / 3 * 10_000 = 33.3333...


def test_order_quality_on_complete_fill_and_on_cancel() -> None:
    tca = TcaConfig().build()
    tca.on_tick(quote(0, "99", "101"))
    tca.on_order(order(Side.BUY, "4"), "full", 10)
    assert of(OrderQuality, tca.on_fill(fill("e1", "full", Side.BUY, "1", "101", 25))) == []
    out = tca.on_fill(fill("e2", "full", Side.BUY, "3", "102", 40))
    (oq,) = of(OrderQuality, out)
    assert oq.fill_ratio == D(1)
    assert oq.time_to_first_fill_ns == 15
    assert oq.avg_px == D("101.75")  # (101 + 306) / 4
    assert oq.slippage_bps == D(175)  # 1.75 / 100 * 10_000
    assert oq.ts_event == 40

    tca.on_order(order(Side.SELL, "3"), "part", 50)
    tca.on_fill(fill("e3", "part", Side.SELL, "1", "99", 80))
    (oq,) = of(OrderQuality, tca.on_order_done("part", 90))
    assert (oq.fill_ratio, oq.time_to_first_fill_ns, oq.filled_qty) == (D("0.333333"), 30, D(1))

    tca.on_order(order(Side.SELL, "3"), "none", 100)
    (oq,) = of(OrderQuality, tca.on_order_done("none", 110))
    assert (oq.fill_ratio, oq.time_to_first_fill_ns, oq.avg_px, oq.slippage_bps) == (
        D(0),
        None,
        None,
        None,
    )
    assert tca.on_order_done("never-seen", 120) == []


def test_no_arrival_mid_means_no_slippage_not_a_guess() -> None:
    tca = TcaConfig().build()
    tca.on_order(order(Side.BUY, "1"), "o1", 1)  # before any quote
    (fq,) = of(FillQuality, tca.on_fill(fill("e1", "o1", Side.BUY, "1", "100", 2)))
    assert (fq.arrival_mid, fq.slippage_bps) == (None, None)
    (fq,) = of(FillQuality, tca.on_fill(fill("e2", "unknown", Side.BUY, "1", "100", 3)))
    assert fq.slippage_bps is None


def test_tumbling_windows_per_instrument_and_account_close_on_event_time() -> None:
    tca = TcaConfig(window_ns=60 * S).build()
    tca.on_tick(quote(0, "99", "101"))
    tca.on_order(order(Side.BUY, "1"), "a", 1 * S)
    tca.on_order(order(Side.BUY, "4"), "b", 2 * S)
    tca.on_fill(fill("e1", "a", Side.BUY, "1", "101", 10 * S, fee="0.1"))
    tca.on_fill(fill("e2", "b", Side.BUY, "3", "100.5", 50 * S, fee="0.3"))
    tca.on_order_done("b", 55 * S)
    assert of(TcaWindow, tca.advance(59 * S)) == []
    windows = of(TcaWindow, tca.on_tick(quote(61 * S, "99", "101")))
    assert [(w.scope, w.key) for w in windows] == [("account", "acct"), ("instrument", BTC)]
    for w in windows:
        assert (w.window_start, w.window_end) == (0, 60 * S)
        assert (w.fills, w.filled_qty, w.notional, w.fees) == (2, D(4), D("402.5"), D("0.4"))
        # (1 * 1 + 3 * 0.5) / (100 * 4) * 10_000
        assert w.slippage_bps() == D("62.5")
        # order a: 1 of 1 at 9 s; order b: 3 of 4 at 48 s
        assert (w.orders, w.fill_ratio(), w.mean_time_to_first_fill_ns()) == (
            2,
            D("0.8"),
            (9 * S + 48 * S) // 2,
        )
    # a fill stamped inside the closed window is late: counted, not aggregated
    tca.on_order(order(Side.BUY, "1"), "c", 62 * S)
    tca.on_fill(fill("e3", "c", Side.BUY, "1", "101", 30 * S))
    assert tca.late_records == 2  # the fill, and the order it completed
    rest = of(TcaWindow, tca.flush())
    assert all(w.window_start == 60 * S for w in rest)
    assert all(w.fills == 0 for w in rest)


def test_windows_merge_across_workers_and_refuse_mismatches() -> None:
    a = TcaWindow("account", "acct", 0, 10, fills=1, slippage_cost=D(1), arrival_notional=D(100))
    b = TcaWindow("account", "acct", 0, 10, fills=2, slippage_cost=D(-3), arrival_notional=D(300))
    m = a.merge(b)
    assert (m.fills, m.slippage_bps()) == (3, D(-50))
    with pytest.raises(ValueError, match="hint"):
        a.merge(TcaWindow("account", "other", 0, 10))


def test_snapshot_restore_keeps_open_orders_and_windows() -> None:
    tca = TcaConfig(window_ns=60 * S).build()
    tca.on_tick(quote(0, "99", "101"))
    tca.on_order(order(Side.BUY, "2"), "o1", 1)
    tca.on_fill(fill("e1", "o1", Side.BUY, "1", "101", 2))
    r = ExecutionQuality.restore(tca.config, tca.snapshot())
    (oq,) = of(OrderQuality, r.on_fill(fill("e2", "o1", Side.BUY, "1", "103", 5)))
    assert (oq.fill_ratio, oq.slippage_bps, oq.time_to_first_fill_ns) == (D(1), D(200), 1)
    (w, _) = of(TcaWindow, r.flush())
    assert w.fills == 2
