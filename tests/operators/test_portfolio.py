"""Positions and P&L: hand-computed scenarios, plus properties that hold for any fill sequence.

The property tests check the portfolio against sums written out here (the signed sum of
fills, the cash flows), never against the portfolio's own arithmetic.
"""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.portfolio import AccountPnl, MarkSource, Portfolio, PortfolioConfig
from schemas.canonical import Fill, Position, Quote, TradeTick
from schemas.common import Aggressor, Liquidity, Side

BTC = "BTCUSDT.BINANCE"
ETH = "ETHUSDT.BINANCE"
S = 1_000_000_000


class Fills:
    """Numbers exec ids so every fill in a test is distinct unless a test repeats one."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(
        self, side: Side, qty: str, px: str, fee: str = "0", ts: int = 0, inst: str = BTC
    ) -> Fill:
        self.n += 1
        return Fill(
            exec_id=f"x{self.n}",
            order_id="o",
            client_order_id="c",
            account_id="acct",
            instrument_id=inst,
            side=side,
            quantity=D(qty),
            price=D(px),
            fee=D(fee),
            fee_currency="USDT",
            liquidity=Liquidity.TAKER,
            ts_event=ts,
        )


def quote(ts: int, bid: str, ask: str, inst: str = BTC) -> Quote:
    return Quote(inst, D(bid), D("1"), D(ask), D("1"), 0, ts, ts)


def trade(ts: int, px: str, inst: str = BTC) -> TradeTick:
    return TradeTick(inst, D(px), D("1"), Aggressor.BUY, "t", ts, ts)


def book(**kw: object) -> Portfolio:
    return PortfolioConfig(account_id="acct", **kw).build()  # type: ignore[arg-type]


def apply(p: Portfolio, fill: Fill) -> None:
    _, rejected = p.on_fill(fill)
    assert rejected is None


# --- hand-computed scenarios -----------------------------------------------------------------


def test_add_reduce_flip_through_zero_and_close_with_fees() -> None:
    f, p = Fills(), book()
    apply(p, f(Side.BUY, "1", "100", fee="0.10"))
    apply(p, f(Side.BUY, "1", "110", fee="0.11"))
    pos = p.position(BTC)
    assert (pos.quantity, pos.avg_open_price, pos.realized_pnl) == (D(2), D(105), D(0))

    # sell 3 @ 120: closes 2 (realizes 2*120 - 210 = 30), opens a 1 short at 120
    apply(p, f(Side.SELL, "3", "120", fee="0.36"))
    pos = p.position(BTC)
    assert pos.quantity == D(-1)
    assert pos.avg_open_price == D(120)
    assert pos.realized_pnl == D(30)
    assert pos.fees == D("0.57")

    p.on_tick(quote(1, "114", "116"))  # mid 115: the short is up 5
    pos = p.position(BTC)
    assert (pos.mark_price, pos.unrealized_pnl) == (D(115), D(5))
    totals = p.totals(1)
    assert totals.net_pnl == D("34.43")  # 30 + 5 - 0.57

    # buy 1 @ 118 closes the short: realizes 120 - 118 = 2
    apply(p, f(Side.BUY, "1", "118", fee="0.118"))
    pos = p.position(BTC)
    assert (pos.quantity, pos.avg_open_price, pos.unrealized_pnl) == (D(0), None, D(0))
    assert pos.realized_pnl == D(32)
    assert pos.fees == D("0.688")
    assert p.totals(2).net_pnl == D("31.312")


def test_short_then_partial_cover() -> None:
    f, p = Fills(), book()
    apply(p, f(Side.SELL, "2", "50"))
    apply(p, f(Side.BUY, "0.5", "40"))
    pos = p.position(BTC)
    assert (pos.quantity, pos.avg_open_price, pos.realized_pnl) == (D("-1.5"), D(50), D(5))


def test_ten_fills_of_a_tenth_close_one_exactly_to_zero() -> None:
    f, p = Fills(), book()
    apply(p, f(Side.BUY, "1.0", "100.37"))
    for i in range(10):
        apply(p, f(Side.SELL, "0.1", "101.37", ts=i))
    pos = p.position(BTC)
    assert pos.quantity == 0
    assert str(pos.quantity) in {"0", "0.0"}
    assert pos.realized_pnl == D("1")  # 1.0 * (101.37 - 100.37)
    assert pos.avg_open_price is None
    assert p.snapshot().positions[BTC].cost_basis == 0


def test_non_terminating_average_still_closes_to_exact_realized_pnl() -> None:
    f, p = Fills(), book()
    for px in ("100", "101", "103"):  # basis 304, average 101.333...
        apply(p, f(Side.BUY, "1", px))
    assert p.position(BTC).avg_open_price == D("101.333333333333")
    for _ in range(3):
        apply(p, f(Side.SELL, "1", "102"))
    pos = p.position(BTC)
    assert pos.quantity == 0
    assert pos.realized_pnl == D(2)  # 3 * 102 - 304, whatever the rounding on the way
    assert p.snapshot().positions[BTC].cost_basis == 0


def test_mark_source_mid_or_last_with_fallback() -> None:
    f = Fills()
    mid, last = book(), book(mark=MarkSource.LAST)
    for p in (mid, last):
        apply(p, f(Side.BUY, "2", "100"))
        p.on_tick(trade(1, "104"))
    # no quote yet: both fall back to the last trade
    assert mid.position(BTC).unrealized_pnl == D(8)
    assert last.position(BTC).unrealized_pnl == D(8)
    for p in (mid, last):
        p.on_tick(quote(2, "101", "102"))
    assert mid.position(BTC).mark_price == D("101.5")
    assert mid.position(BTC).unrealized_pnl == D(3)
    assert last.position(BTC).mark_price == D(104)


def test_account_totals_across_instruments() -> None:
    f, p = Fills(), book()
    apply(p, f(Side.BUY, "1", "100", fee="1"))
    apply(p, f(Side.SELL, "10", "20", fee="2", inst=ETH))
    p.on_tick(quote(1, "99", "101"))  # BTC mid 100: 0
    p.on_tick(quote(1, "18", "18", inst=ETH))  # ETH mid 18: short 10 from 20 is +20
    t = p.totals(5)
    assert t == AccountPnl(
        account_id="acct",
        realized_pnl=D(0),
        unrealized_pnl=D(20),
        fees=D(3),
        net_pnl=D(17),
        gross_exposure=D(280),  # |1 * 100| + |-10 * 18|
        open_positions=2,
        ts_event=5,
    )


# --- bad input and idempotence ---------------------------------------------------------------


def test_redelivered_fill_is_dropped_and_bad_fills_are_refused_not_raised() -> None:
    f, p = Fills(), book()
    fill = f(Side.BUY, "1", "100")
    apply(p, fill)
    _, rejected = p.on_fill(fill)
    assert rejected is not None and rejected.reason == "DUPLICATE_EXEC_ID"
    bad = [
        (f(Side.BUY, "0", "100"), "INVALID_QUANTITY"),
        (f(Side.BUY, "NaN", "100"), "INVALID_QUANTITY"),
        (f(Side.BUY, "1", "-5"), "INVALID_PRICE"),
        (f(Side.BUY, "1", "Infinity"), "INVALID_PRICE"),
        (f(Side.BUY, "1", "100", fee="NaN"), "INVALID_FEE"),
    ]
    wrong_account = f(Side.BUY, "1", "100")
    bad.append((Fill(**{**_fields(wrong_account), "account_id": "other"}), "WRONG_ACCOUNT"))
    for fill_, reason in bad:
        _, rejected = p.on_fill(fill_)
        assert rejected is not None and rejected.reason == reason
    assert p.position(BTC).quantity == D(1)
    p.on_tick(quote(1, "NaN", "101"))  # ignored, no crash
    p.on_tick(quote(1, "102", "101"))  # crossed: ignored
    assert p.position(BTC).mark_price is None


def _fields(fill: Fill) -> dict[str, object]:
    return {name: getattr(fill, name) for name in fill.__struct_fields__}


def test_dedup_window_forgets_the_oldest_exec_ids() -> None:
    f, p = Fills(), book(dedup_window=2)
    first = f(Side.BUY, "1", "100")
    apply(p, first)
    apply(p, f(Side.BUY, "1", "100"))
    apply(p, f(Side.BUY, "1", "100"))
    _, rejected = p.on_fill(first)  # beyond the window: applied again, by design
    assert rejected is None
    assert p.position(BTC).quantity == D(4)


# --- snapshots on an event-time interval ------------------------------------------------------


def test_snapshots_are_emitted_when_event_time_crosses_an_interval_boundary() -> None:
    f, p = Fills(), book(snapshot_interval_ns=S)
    due, _ = p.on_fill(f(Side.BUY, "1", "100", ts=S // 2))
    assert due == []
    assert p.on_tick(quote(S // 2 + 1, "101", "103")) == []
    # the event at 1.2 s crosses 1 s: state as it stood then, stamped 1 s
    due, _ = p.on_fill(f(Side.BUY, "1", "110", ts=S + S // 5))
    assert due == [
        Position(
            account_id="acct",
            instrument_id=BTC,
            quantity=D(1),
            avg_open_price=D(100),
            realized_pnl=D(0),
            unrealized_pnl=D(2),
            mark_price=D(102),
            fees=D(0),
            ts_event=S,
        ),
        AccountPnl("acct", D(0), D(2), D(0), D(2), D(102), 1, S),
    ]
    assert p.on_time(S + S * 9 // 10) == []
    due = p.on_time(5 * S + 1)  # several boundaries skipped: one set, at the latest
    assert [x.ts_event for x in due] == [5 * S, 5 * S]
    assert isinstance(due[0], Position) and due[0].quantity == D(2)


def test_snapshot_restore_continues_identically() -> None:
    f, p = Fills(), book()
    apply(p, f(Side.BUY, "1", "100"))
    apply(p, f(Side.SELL, "0.3", "103", fee="0.01"))
    state = p.snapshot()
    dup = Fill(**{**_fields(f(Side.BUY, "1", "1")), "exec_id": "x1"})
    r = Portfolio.restore(p.config, state)
    _, rejected = r.on_fill(dup)  # dedup memory survived the restore
    assert rejected is not None and rejected.reason == "DUPLICATE_EXEC_ID"
    apply(p, f(Side.SELL, "0.7", "99"))
    assert r.position(BTC).quantity == D("0.7")  # the restored copy is independent
    assert p.position(BTC).realized_pnl == D("0.2")  # 0.3*3 + 0.7*(-1)


# --- properties ------------------------------------------------------------------------------

fill_st = st.tuples(
    st.sampled_from([Side.BUY, Side.SELL]),
    st.integers(min_value=1, max_value=50_000),  # lots of 0.001
    st.integers(min_value=1, max_value=10_000_000),  # ticks of 0.01
    st.integers(min_value=-500, max_value=5_000),  # fee in 0.0001
)


@settings(max_examples=300, deadline=None)
@given(
    fills=st.lists(fill_st, min_size=1, max_size=40),
    mark_ticks=st.integers(min_value=1, max_value=10_000_000),
)
def test_position_is_the_signed_sum_and_pnl_reconciles_with_cash(
    fills: list[tuple[Side, int, int, int]], mark_ticks: int
) -> None:
    p = book()
    position = D(0)
    cash = D(0)
    fees = D(0)
    for i, (side, lots, ticks, fee_units) in enumerate(fills):
        qty, px, fee = lots * D("0.001"), ticks * D("0.01"), fee_units * D("0.0001")
        sign = 1 if side is Side.BUY else -1
        _, rejected = p.on_fill(
            Fill(f"e{i}", "o", "c", "acct", BTC, side, qty, px, fee, "USDT", Liquidity.MAKER, i)
        )
        assert rejected is None
        position += sign * qty
        cash -= sign * qty * px
        fees += fee
        assert p.position(BTC).quantity == position
    mark = mark_ticks * D("0.01")
    p.on_tick(trade(len(fills), str(mark)))
    pos = p.position(BTC)
    assert pos.quantity == position
    assert pos.fees == fees
    # realized + unrealized - fees == cash flows (fees included) + position at the mark
    assert pos.realized_pnl + pos.unrealized_pnl - pos.fees == (cash - fees) + position * mark
    totals = p.totals(0)
    assert totals.net_pnl == (cash - fees) + position * mark
    if position == 0:
        assert pos.unrealized_pnl == 0 and pos.avg_open_price is None


@settings(max_examples=200, deadline=None)
@given(fills=st.lists(fill_st, min_size=1, max_size=30))
def test_closing_everything_realizes_exactly_the_cash_flows(
    fills: list[tuple[Side, int, int, int]],
) -> None:
    p = book()
    position = D(0)
    cash = D(0)
    for i, (side, lots, ticks, _) in enumerate(fills):
        qty, px = lots * D("0.001"), ticks * D("0.01")
        sign = 1 if side is Side.BUY else -1
        apply(
            p, Fill(f"e{i}", "o", "c", "acct", BTC, side, qty, px, D(0), "USDT", Liquidity.MAKER, i)
        )
        position += sign * qty
        cash -= sign * qty * px
    if position != 0:  # flatten at 1.00
        side = Side.SELL if position > 0 else Side.BUY
        apply(
            p,
            Fill(
                "flat",
                "o",
                "c",
                "acct",
                BTC,
                side,
                abs(position),
                D(1),
                D(0),
                "USDT",
                Liquidity.MAKER,
                99,
            ),
        )
        cash += position * D(1)
    pos = p.position(BTC)
    assert pos.quantity == 0
    assert pos.realized_pnl == cash
