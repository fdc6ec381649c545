"""The simulated venue: every expected fill below is worked out by hand from the rules in
``operators/matching.py``'s docstring, never by running the venue."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.matching import (
    RemainderRule,
    SimulatedVenue,
    VenueConfig,
    VenueEvent,
    VenueFileConfig,
    load_venue_config,
    to_execution_report,
)
from schemas.canonical import Fill, Order, Quote, TradeTick
from schemas.common import Aggressor, Liquidity, OrderType, Side, TimeInForce

INST = "BTCUSDT.BINANCE"
MS = 1_000_000
DAY = 86_400 * 1_000_000_000


def quote(ts: int, bid: str, bid_size: str, ask: str, ask_size: str, inst: str = INST) -> Quote:
    return Quote(inst, D(bid), D(bid_size), D(ask), D(ask_size), 0, ts, ts)


def trade(ts: int, px: str, size: str, inst: str = INST) -> TradeTick:
    return TradeTick(inst, D(px), D(size), Aggressor.UNKNOWN, f"t{ts}", ts, ts)


def order(
    side: Side,
    qty: str,
    price: str | None = None,
    tif: TimeInForce = TimeInForce.GTC,
    coid: str = "c1",
    expire: int | None = None,
    inst: str = INST,
) -> Order:
    return Order(
        client_order_id=coid,
        account_id="acct",
        instrument_id=inst,
        side=side,
        order_type=OrderType.MARKET if price is None else OrderType.LIMIT,
        quantity=D(qty),
        price=None if price is None else D(price),
        time_in_force=tif,
        expire_time=expire,
    )


def venue(**kw: object) -> SimulatedVenue:
    return VenueConfig(**kw).build(INST, "USDT")  # type: ignore[arg-type]


def fills(out: list) -> list[tuple[str, D, D, Liquidity, int]]:
    return [
        (f.order_id, f.quantity, f.price, f.liquidity, f.ts_event)
        for f in out
        if isinstance(f, Fill)
    ]


def events(out: list) -> list[tuple[str, str, str | None]]:
    return [(e.event, e.order_id, e.reason) for e in out if isinstance(e, VenueEvent)]


# --- market orders ---------------------------------------------------------------------------


def test_market_buy_takes_the_displayed_ask_and_cancels_the_remainder() -> None:
    v = venue(taker_fee_bps=D("10"))
    v.on_tick(quote(1, "100", "5", "101", "2"))
    out = v.submit(order(Side.BUY, "3"), "o1", 10)
    assert fills(out) == [("o1", D("2"), D("101"), Liquidity.TAKER, 10)]
    fill = next(f for f in out if isinstance(f, Fill))
    assert fill.fee == D("0.202")  # 2 * 101 * 10 / 10_000
    assert fill.fee_currency == "USDT"
    assert fill.exec_id == f"{INST}-1"
    assert events(out) == [("ACCEPTED", "o1", None), ("CANCELED", "o1", "MARKET_REMAINDER")]
    canceled = [e for e in out if isinstance(e, VenueEvent)][-1]
    assert (canceled.cum_qty, canceled.leaves_qty) == (D("2"), D("0"))
    assert v.working_orders() == []


def test_market_sell_takes_the_bid() -> None:
    v = venue()
    v.on_tick(quote(1, "100", "5", "101", "2"))
    out = v.submit(order(Side.SELL, "1.5"), "o1", 10)
    assert fills(out) == [("o1", D("1.5"), D("100"), Liquidity.TAKER, 10)]
    assert events(out) == [("ACCEPTED", "o1", None)]


def test_market_remainder_rests_and_walks_the_next_quotes_when_configured() -> None:
    v = venue(market_remainder=RemainderRule.REST)
    v.on_tick(quote(1, "100", "5", "101", "2"))
    out = v.submit(order(Side.BUY, "3"), "o1", 10)
    assert fills(out) == [("o1", D("2"), D("101"), Liquidity.TAKER, 10)]
    out = v.on_tick(quote(20, "100", "5", "102", "5"))
    assert fills(out) == [("o1", D("1"), D("102"), Liquidity.TAKER, 20)]
    assert v.working_orders() == []


def test_market_order_without_a_quote_is_rejected() -> None:
    v = venue()
    v.on_tick(trade(1, "100", "1"))
    out = v.submit(order(Side.BUY, "1"), "o1", 10)
    assert events(out) == [("REJECTED", "o1", "NO_MARKET_DATA")]
    assert fills(out) == []


def test_displayed_size_taken_is_not_available_twice_within_one_quote() -> None:
    v = venue()
    v.on_tick(quote(1, "100", "5", "101", "1.5"))
    out = v.submit(order(Side.BUY, "1", coid="a"), "o1", 10)
    out += v.submit(order(Side.BUY, "1", coid="b"), "o2", 11)
    assert fills(out) == [
        ("o1", D("1"), D("101"), Liquidity.TAKER, 10),
        ("o2", D("0.5"), D("101"), Liquidity.TAKER, 11),
    ]
    assert ("CANCELED", "o2", "MARKET_REMAINDER") in events(out)


# --- limit orders ----------------------------------------------------------------------------


def test_marketable_limit_takes_at_the_ask_then_rests_and_fills_as_maker_at_its_price() -> None:
    v = venue(maker_fee_bps=D("-1"), taker_fee_bps=D("5"))
    v.on_tick(quote(1, "100", "5", "101", "1"))
    out = v.submit(order(Side.BUY, "3", "102"), "o1", 10)
    assert fills(out) == [("o1", D("1"), D("101"), Liquidity.TAKER, 10)]
    assert [w.cum_qty for w in v.working_orders()] == [D("1")]
    out = v.on_tick(quote(20, "100", "5", "101.5", "10"))
    assert fills(out) == [("o1", D("2"), D("102"), Liquidity.MAKER, 20)]
    maker = next(f for f in out if isinstance(f, Fill))
    assert maker.fee == D("-0.0204")  # rebate: 2 * 102 * -1 / 10_000
    assert v.working_orders() == []


def test_resting_buy_fills_only_on_a_trade_through_its_price_not_at_it() -> None:
    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    out = v.submit(order(Side.BUY, "1", "99"), "o1", 10)
    assert fills(out) == [] and events(out) == [("ACCEPTED", "o1", None)]
    assert fills(v.on_tick(trade(20, "99", "10"))) == []  # at the price: queue unknown
    assert fills(v.on_tick(trade(30, "98.99", "0.4"))) == [
        ("o1", D("0.4"), D("99"), Liquidity.MAKER, 30)
    ]
    # the quote crosses: ask at our price fills the rest at our price
    assert fills(v.on_tick(quote(40, "98", "5", "99", "3"))) == [
        ("o1", D("0.6"), D("99"), Liquidity.MAKER, 40)
    ]


def test_resting_sell_fills_on_trade_through_and_on_bid_cross() -> None:
    v = venue()
    v.on_tick(quote(1, "100", "5", "102", "5"))
    v.submit(order(Side.SELL, "2", "101"), "o1", 10)
    assert fills(v.on_tick(trade(20, "101", "5"))) == []
    assert fills(v.on_tick(trade(30, "101.01", "0.5"))) == [
        ("o1", D("0.5"), D("101"), Liquidity.MAKER, 30)
    ]
    assert fills(v.on_tick(quote(40, "101.5", "1", "102", "5"))) == [
        ("o1", D("1"), D("101"), Liquidity.MAKER, 40)
    ]
    assert [w.leaves for w in v.working_orders()] == [D("0.5")]


def test_trade_size_is_shared_in_price_then_time_priority() -> None:
    v = venue()
    v.on_tick(quote(1, "90", "5", "110", "5"))
    v.submit(order(Side.BUY, "1", "99", coid="a"), "early_low", 10)
    v.submit(order(Side.BUY, "1", "100", coid="b"), "late_high", 11)
    v.submit(order(Side.BUY, "1", "100", coid="c"), "later_high", 12)
    out = v.on_tick(trade(20, "98", "1.5"))
    assert fills(out) == [
        ("late_high", D("1"), D("100"), Liquidity.MAKER, 20),
        ("later_high", D("0.5"), D("100"), Liquidity.MAKER, 20),
    ]


# --- time in force ---------------------------------------------------------------------------


def test_ioc_fills_what_is_displayed_and_cancels_the_rest() -> None:
    v = venue()
    v.on_tick(quote(1, "100", "5", "101", "1"))
    out = v.submit(order(Side.BUY, "3", "101", TimeInForce.IOC), "o1", 10)
    assert fills(out) == [("o1", D("1"), D("101"), Liquidity.TAKER, 10)]
    assert events(out) == [("ACCEPTED", "o1", None), ("CANCELED", "o1", "IOC_REMAINDER")]
    out = v.submit(order(Side.BUY, "1", "100.5", TimeInForce.IOC, coid="c2"), "o2", 11)
    assert fills(out) == []
    assert events(out)[-1] == ("CANCELED", "o2", "IOC_REMAINDER")
    assert v.working_orders() == []


def test_fok_fills_whole_or_not_at_all() -> None:
    v = venue()
    v.on_tick(quote(1, "100", "5", "101", "2"))
    out = v.submit(order(Side.BUY, "3", "101", TimeInForce.FOK), "o1", 10)
    assert fills(out) == []
    assert events(out)[-1] == ("CANCELED", "o1", "FOK_UNFILLABLE")
    out = v.submit(order(Side.BUY, "2", "101", TimeInForce.FOK, coid="c2"), "o2", 11)
    assert fills(out) == [("o2", D("2"), D("101"), Liquidity.TAKER, 11)]
    # a market FOK against the bid
    out = v.submit(order(Side.SELL, "5", None, TimeInForce.FOK, coid="c3"), "o3", 12)
    assert fills(out) == [("o3", D("5"), D("100"), Liquidity.TAKER, 12)]


def test_gtd_expires_at_its_expire_time_and_day_at_utc_midnight() -> None:
    v = venue()
    v.on_tick(quote(1, "100", "5", "101", "5"))
    v.submit(order(Side.BUY, "1", "90", TimeInForce.GTD, coid="g", expire=500), "gtd", 10)
    v.submit(order(Side.BUY, "1", "90", TimeInForce.DAY, coid="d"), "day", 10)
    assert events(v.on_tick(quote(499, "100", "5", "101", "5"))) == []
    out = v.on_tick(quote(500, "100", "5", "101", "5"))
    assert [(e.event, e.order_id, e.ts_event) for e in out if isinstance(e, VenueEvent)] == [
        ("EXPIRED", "gtd", 500)
    ]
    out = v.advance(DAY + 7)
    assert [(e.event, e.order_id, e.ts_event) for e in out if isinstance(e, VenueEvent)] == [
        ("EXPIRED", "day", DAY)
    ]


def test_gtd_without_expire_time_is_rejected() -> None:
    v = venue()
    out = v.submit(order(Side.BUY, "1", "90", TimeInForce.GTD), "o1", 10)
    out += v.advance(10)
    assert events(out) == [("REJECTED", "o1", "MISSING_EXPIRE_TIME")]


# --- latency ---------------------------------------------------------------------------------


def test_latency_in_event_time_orders_see_the_book_as_of_arrival_plus_latency() -> None:
    v = venue(latency_ns=1 * MS)
    v.on_tick(quote(0, "100", "5", "101", "5"))
    assert v.submit(order(Side.BUY, "1"), "o1", 500) == []  # not live until 1_000_500
    assert v.on_tick(quote(1 * MS, "104", "5", "105", "1")) == []
    out = v.on_tick(quote(2 * MS, "109", "5", "110", "1"))
    # live at 1_000_500: the book then was the 1 ms quote, not the 2 ms one
    assert fills(out) == [("o1", D("1"), D("105"), Liquidity.TAKER, 1 * MS + 500)]


def test_a_command_live_exactly_at_a_tick_sees_that_tick() -> None:
    v = venue(latency_ns=1 * MS)
    v.on_tick(quote(0, "100", "5", "101", "5"))
    v.submit(order(Side.BUY, "1"), "o1", 0)
    out = v.on_tick(quote(1 * MS, "104", "5", "105", "1"))
    assert fills(out) == [("o1", D("1"), D("105"), Liquidity.TAKER, 1 * MS)]


def test_a_fill_can_beat_a_cancel_in_flight() -> None:
    v = venue(latency_ns=10)
    v.on_tick(quote(0, "90", "5", "110", "5"))
    v.submit(order(Side.BUY, "2", "100"), "o1", 0)
    v.advance(10)
    assert v.cancel("o1", 100) == []  # live at 110
    out = v.on_tick(trade(105, "99", "1"))
    assert fills(out) == [("o1", D("1"), D("100"), Liquidity.MAKER, 105)]
    out = v.advance(110)
    canceled = [e for e in out if isinstance(e, VenueEvent)]
    assert [(e.event, e.cum_qty, e.leaves_qty, e.ts_event) for e in canceled] == [
        ("CANCELED", D("1"), D("0"), 110)
    ]


# --- cancel and replace ----------------------------------------------------------------------


def test_cancel_removes_the_order_and_unknown_or_closed_cancels_are_rejected() -> None:
    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    v.submit(order(Side.BUY, "1", "99"), "o1", 10)
    assert events(v.cancel("o1", 20)) == [("CANCELED", "o1", None)]
    assert fills(v.on_tick(trade(30, "90", "10"))) == []
    assert events(v.cancel("o1", 40)) == [("CANCEL_REJECTED", "o1", "ORDER_CLOSED")]
    assert events(v.cancel("nope", 40)) == [("CANCEL_REJECTED", "nope", "UNKNOWN_ORDER")]


def test_replace_to_a_marketable_price_takes_liquidity() -> None:
    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    v.submit(order(Side.BUY, "2", "99"), "o1", 10)
    out = v.replace("o1", 20, price=D("101"))
    assert events(out) == [("REPLACED", "o1", None)]
    assert fills(out) == [("o1", D("2"), D("101"), Liquidity.TAKER, 20)]
    assert v.working_orders() == []


def test_replace_at_or_below_filled_amends_down_to_filled_and_stops_working() -> None:
    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    v.submit(order(Side.BUY, "3", "99"), "o1", 10)
    v.on_tick(trade(20, "98", "2"))  # fills 2 of 3
    out = v.replace("o1", 30, quantity=D("1"))
    replaced = [e for e in out if isinstance(e, VenueEvent)]
    assert [(e.event, e.quantity, e.cum_qty, e.leaves_qty) for e in replaced] == [
        ("REPLACED", D("2"), D("2"), D("0"))
    ]
    assert v.working_orders() == []
    assert events(v.replace("o1", 40, quantity=D("5"))) == [
        ("REPLACE_REJECTED", "o1", "ORDER_CLOSED")
    ]


def test_replace_with_bad_values_is_rejected_and_the_order_keeps_working() -> None:
    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    v.submit(order(Side.BUY, "3", "99"), "o1", 10)
    assert events(v.replace("o1", 20, quantity=D("NaN"))) == [
        ("REPLACE_REJECTED", "o1", "INVALID_QUANTITY")
    ]
    assert events(v.replace("o1", 21, price=D("-1"))) == [
        ("REPLACE_REJECTED", "o1", "INVALID_PRICE")
    ]
    assert [(w.quantity, w.price) for w in v.working_orders()] == [(D("3"), D("99"))]


def test_replace_that_raises_quantity_loses_time_priority() -> None:
    v = venue()
    v.on_tick(quote(1, "90", "5", "110", "5"))
    v.submit(order(Side.BUY, "1", "100", coid="a"), "first", 10)
    v.submit(order(Side.BUY, "1", "100", coid="b"), "second", 11)
    v.replace("first", 12, quantity=D("2"))
    out = v.on_tick(trade(20, "99", "1"))
    assert fills(out) == [("second", D("1"), D("100"), Liquidity.MAKER, 20)]


# --- fees, bad input, determinism ------------------------------------------------------------


def test_fee_rounds_half_even_to_the_quantum() -> None:
    v = venue(taker_fee_bps=D("10"))
    v.on_tick(quote(1, "45000", "1", "45000.01", "1"))
    out = v.submit(order(Side.BUY, "0.00001"), "o1", 10)
    # 0.00001 * 45000.01 * 10 / 10_000 = 0.0004500001 -> 0.00045000
    assert [f.fee for f in out if isinstance(f, Fill)] == [D("0.00045000")]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (order(Side.BUY, "NaN", "100"), "INVALID_QUANTITY"),
        (order(Side.BUY, "0", "100"), "INVALID_QUANTITY"),
        (order(Side.BUY, "-1", "100"), "INVALID_QUANTITY"),
        (order(Side.BUY, "1", "Infinity"), "INVALID_PRICE"),
        (order(Side.BUY, "1", "0"), "INVALID_PRICE"),
        (order(Side.BUY, "1", "100", inst="ETHUSDT.BINANCE"), "UNKNOWN_INSTRUMENT"),
    ],
)
def test_bad_orders_are_rejected_with_a_reason(bad: Order, reason: str) -> None:
    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    out = v.submit(bad, "o1", 10)
    assert events(out) == [("REJECTED", "o1", reason)]
    assert v.working_orders() == []


def test_duplicate_order_id_and_foreign_or_broken_ticks_do_not_crash() -> None:
    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    v.submit(order(Side.BUY, "1", "99"), "o1", 10)
    assert events(v.submit(order(Side.BUY, "1", "99", coid="x"), "o1", 11)) == [
        ("REJECTED", "o1", "DUPLICATE_ORDER_ID")
    ]
    assert v.on_tick(trade(20, "1", "5", inst="ETHUSDT.BINANCE")) == []
    assert v.on_tick(trade(21, "NaN", "5")) == []
    assert v.on_tick(trade(22, "98", "0")) == []
    assert v.snapshot().ignored_ticks == 3
    # a quote with an empty ask side leaves no ask to take
    v.on_tick(quote(30, "98", "5", "0", "0"))
    assert events(v.submit(order(Side.BUY, "1", coid="m"), "o2", 31)) == [
        ("REJECTED", "o2", "NO_MARKET_DATA")
    ]


def _script(v: SimulatedVenue) -> list:
    out: list = []
    out += v.on_tick(quote(0, "100", "3", "101", "2"))
    out += v.submit(order(Side.BUY, "1", "100", coid="a"), "a", 1)
    out += v.submit(order(Side.SELL, "4", "101.5", coid="b"), "b", 2)
    out += v.submit(order(Side.BUY, "3", coid="c"), "c", 3)
    out += v.on_tick(trade(10, "99.5", "0.3"))
    out += v.on_tick(quote(20, "101.6", "2", "102", "2"))
    out += v.replace("a", 21, price=D("102"))
    out += v.cancel("b", 22)
    out += v.on_tick(trade(30, "99", "5"))
    return out


def test_same_ticks_and_orders_give_identical_fills_and_restore_resumes_identically() -> None:
    cfg = VenueConfig(maker_fee_bps=D("1"), taker_fee_bps=D("2.5"), latency_ns=1)
    first = _script(cfg.build(INST, "USDT"))
    second = _script(cfg.build(INST, "USDT"))
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    assert sum(isinstance(x, Fill) for x in first) >= 3
    exec_ids = [f.exec_id for f in first if isinstance(f, Fill)]
    assert exec_ids == [f"{INST}-{i}" for i in range(1, len(exec_ids) + 1)]

    # snapshot half way, restore into a new venue, finish: same outputs as one uninterrupted run
    v = cfg.build(INST, "USDT")
    head: list = []
    head += v.on_tick(quote(0, "100", "3", "101", "2"))
    head += v.submit(order(Side.BUY, "1", "100", coid="a"), "a", 1)
    head += v.submit(order(Side.SELL, "4", "101.5", coid="b"), "b", 2)
    head += v.submit(order(Side.BUY, "3", coid="c"), "c", 3)
    state = v.snapshot()
    v.on_tick(trade(10, "99.5", "0.3"))  # the original moving on must not touch the snapshot
    r = SimulatedVenue.restore(cfg, INST, "USDT", state)
    tail: list = []
    tail += r.on_tick(trade(10, "99.5", "0.3"))
    tail += r.on_tick(quote(20, "101.6", "2", "102", "2"))
    tail += r.replace("a", 21, price=D("102"))
    tail += r.cancel("b", 22)
    tail += r.on_tick(trade(30, "99", "5"))
    assert msgspec.json.encode(head + tail) == msgspec.json.encode(first)


def test_outputs_become_execution_reports_of_the_shared_contract() -> None:
    from schemas.orders import ExecType, ExecutionReport

    v = venue(taker_fee_bps=D("10"))
    v.on_tick(quote(1, "100", "5", "101", "2"))
    out = v.submit(order(Side.BUY, "3"), "o1", 10)
    reports = [to_execution_report(x, "SIM") for x in out]
    assert [r.exec_type for r in reports] == [ExecType.NEW, ExecType.TRADE, ExecType.CANCELED]
    assert reports[1] == ExecutionReport(
        venue="SIM",
        exec_id=f"{INST}-1",
        exec_type=ExecType.TRADE,
        ts_event=10,
        venue_order_id="o1",
        client_order_id="c1",
        account_id="acct",
        instrument_id=INST,
        side=Side.BUY,
        last_qty=D("2"),
        last_px=D("101"),
        fee=D("0.202"),
        fee_currency="USDT",
        liquidity=Liquidity.TAKER,
    )
    assert (reports[2].cum_qty, reports[2].reason) == (D("2"), "MARKET_REMAINDER")
    assert len({r.exec_id for r in reports}) == 3
    # round trip through the wire format
    wire = msgspec.json.encode(reports[1])
    assert msgspec.json.decode(wire, type=ExecutionReport) == reports[1]


def test_a_submit_order_command_is_accepted_and_survives_snapshot_restore() -> None:
    from schemas.orders import SubmitOrder

    v = venue()
    v.on_tick(quote(1, "98", "5", "101", "5"))
    cmd = SubmitOrder(
        client_order_id="s1",
        account_id="acct",
        instrument_id=INST,
        side=Side.SELL,
        order_type=OrderType.LIMIT,
        quantity=D("1"),
        price=D("105"),
    )
    assert events(v.submit(cmd, "o1", 10)) == [("ACCEPTED", "o1", None)]
    r = SimulatedVenue.restore(v.config, INST, "USDT", v.snapshot())
    assert fills(r.on_tick(trade(20, "105.5", "1"))) == [
        ("o1", D("1"), D("105"), Liquidity.MAKER, 20)
    ]


# --- properties over random sessions -------------------------------------------------------

px_st = st.integers(min_value=95, max_value=105).map(D)
qty_st = st.integers(min_value=1, max_value=5).map(D)
step_st = st.one_of(
    st.tuples(st.just("quote"), px_st, qty_st, qty_st),
    st.tuples(st.just("trade"), px_st, qty_st),
    st.tuples(
        st.just("submit"),
        st.sampled_from([Side.BUY, Side.SELL]),
        qty_st,
        st.one_of(st.none(), px_st),
        st.sampled_from([TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.DAY]),
    ),
    st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=10)),
    st.tuples(
        st.just("replace"),
        st.integers(min_value=0, max_value=10),
        st.one_of(st.none(), qty_st),
        st.one_of(st.none(), px_st),
    ),
)


def _run_session(cfg: VenueConfig, steps: list[tuple]) -> tuple[list, dict[str, Order]]:
    v = cfg.build(INST, "USDT")
    out: list = []
    sent: dict[str, Order] = {}
    for ts, step in enumerate(steps, start=1):
        ts *= 100
        kind = step[0]
        if kind == "quote":
            mid, bid_size, ask_size = step[1], step[2], step[3]
            out += v.on_tick(Quote(INST, mid - 1, bid_size, mid + 1, ask_size, 0, ts, ts))
        elif kind == "trade":
            out += v.on_tick(TradeTick(INST, step[1], step[2], Aggressor.UNKNOWN, "t", ts, ts))
        elif kind == "submit":
            oid = f"o{len(sent)}"
            o = order(
                step[1], str(step[2]), None if step[3] is None else str(step[3]), step[4], oid
            )
            sent[oid] = o
            out += v.submit(o, oid, ts)
        elif kind == "cancel":
            out += v.cancel(f"o{step[1]}", ts)
        else:
            out += v.replace(f"o{step[1]}", ts, quantity=step[2], price=step[3])
    out += v.advance(len(steps) * 100 + 10_000)
    return out, sent


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step_st, min_size=1, max_size=40), latency=st.sampled_from([0, 50, 250]))
def test_random_sessions_are_deterministic_and_never_overfill_or_fill_through_a_limit(
    steps: list[tuple], latency: int
) -> None:
    cfg = VenueConfig(maker_fee_bps=D("1"), taker_fee_bps=D("2"), latency_ns=latency)
    out, sent = _run_session(cfg, steps)
    again, _ = _run_session(cfg, steps)
    assert msgspec.json.encode(out) == msgspec.json.encode(again)

    limits: dict[str, D | None] = {oid: o.price for oid, o in sent.items()}
    quantities: dict[str, D] = {oid: o.quantity for oid, o in sent.items()}
    filled: dict[str, D] = {}
    for x in out:
        if isinstance(x, VenueEvent) and x.event == "REPLACED":
            limits[x.order_id], quantities[x.order_id] = x.price, x.quantity  # type: ignore[assignment]
        if isinstance(x, Fill):
            filled[x.order_id] = filled.get(x.order_id, D(0)) + x.quantity
            assert filled[x.order_id] <= quantities[x.order_id]
            limit = limits[x.order_id]
            if limit is not None:
                assert x.price <= limit if x.side is Side.BUY else x.price >= limit
            assert x.quantity > 0
    exec_ids = [x.exec_id for x in out]
    assert len(exec_ids) == len(set(exec_ids))


# --- config ----------------------------------------------------------------------------------


def test_bundled_venue_config_loads_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    cfg = load_venue_config()
    assert isinstance(cfg, VenueFileConfig)
    assert cfg.venues["BINANCE"].taker_fee_bps == D("10")
    bad = tmp_path / "venue.toml"
    bad.write_text('version = "x"\n[venues.X]\ntaker_fee_bp = "1"\n')
    with pytest.raises(ValueError, match="hint"):
        load_venue_config(str(bad))
