"""Pre-trade risk: one test per reason code, with the numbers worked out by hand."""

from __future__ import annotations

import os
from decimal import Decimal as D
from pathlib import Path

import pytest

from operators.risk import RiskEngine
from operators.risk_config import AccountLimits, RiskConfigWatcher, RiskLimits, load_limits
from schemas.canonical import Order, OrderEvent, Position, Quote, TradeTick
from schemas.common import Aggressor, Market, OrderStatus, OrderType, Side, TimeInForce
from schemas.instruments import Instrument, InstrumentRegistry, InstrumentsConfig, load_instruments
from schemas.orders import (
    CancelOrder,
    ControlAction,
    ControlCommand,
    ControlScope,
    ReplaceOrder,
    SubmitOrder,
)

SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC  # 2026-01-01T00:00:00Z
BTC = "BTC.TEST"
ETH = "ETH.TEST"
HALTED = "HLT.TEST"
REPO = Path(__file__).resolve().parents[2]


def _inst(iid: str, halted: bool = False) -> Instrument:
    return Instrument(
        instrument_id=iid,
        venue="TEST",
        market=Market.SPOT,
        symbol=iid.split(".")[0],
        base=iid.split(".")[0],
        quote="USD",
        tick_size=D("0.5"),
        lot_size=D("0.01"),
        min_qty=D("0.01"),
        max_qty=D("1000"),
        min_notional=D("10"),
        halted=halted,
    )


INSTRUMENTS = InstrumentRegistry(
    InstrumentsConfig(version="inst-v1", instruments=[_inst(BTC), _inst(ETH), _inst(HALTED, True)])
)


def _limits(**over: object) -> RiskLimits:
    base = {
        "max_market_data_age_ns": 2 * SEC,
        "price_band_bps": D("100"),  # 1 %
    }
    base.update(over)
    return RiskLimits(
        version="lim-v7",
        default_account="default",
        accounts={"acct": AccountLimits()},
        defaults=AccountLimits(**base),  # type: ignore[arg-type]
    )


def _engine(**over: object) -> RiskEngine:
    eng = RiskEngine(_limits(**over), INSTRUMENTS)
    eng.on_tick(TradeTick(BTC, D("1000"), D("1"), Aggressor.BUY, "t1", T0, T0))
    eng.on_tick(TradeTick(ETH, D("100"), D("1"), Aggressor.BUY, "t2", T0, T0))
    return eng


_n = 0


def _order(
    qty: str = "1",
    price: str | None = "1000",
    side: Side = Side.BUY,
    *,
    cid: str | None = None,
    inst: str = BTC,
    acct: str = "acct",
    ts: int = T0 + SEC,
    otype: OrderType | None = None,
    tif: TimeInForce = TimeInForce.GTC,
    expire: int | None = None,
) -> Order:
    global _n
    _n += 1
    return SubmitOrder(
        client_order_id=cid if cid is not None else f"c{_n}",
        account_id=acct,
        instrument_id=inst,
        side=side,
        order_type=otype or (OrderType.LIMIT if price is not None else OrderType.MARKET),
        quantity=D(qty),
        price=D(price) if price is not None else None,
        time_in_force=tif,
        expire_time=expire,
        ts_submit=ts,
    )


def _reason(eng: RiskEngine, order: Order) -> str:
    d = eng.check_submit(order)
    assert d.approved == (d.reason == "APPROVED")
    assert d.limits_version == "lim-v7" and d.instruments_version == "inst-v1"
    assert d.account_id == order.account_id and d.client_order_id == order.client_order_id
    assert d.ts_event == order.ts_submit
    if not d.approved:
        assert d.detail, "every denial carries a detail for people"
    return d.reason


def test_plain_limit_order_is_approved() -> None:
    assert _reason(_engine(), _order()) == "APPROVED"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"qty": "0"}, "INVALID_QUANTITY"),
        ({"qty": "-1"}, "INVALID_QUANTITY"),
        ({"qty": "NaN"}, "INVALID_QUANTITY"),
        ({"qty": "Infinity"}, "INVALID_QUANTITY"),
        ({"price": "NaN"}, "INVALID_PRICE"),
        ({"price": "-Infinity"}, "INVALID_PRICE"),
        ({"price": "0"}, "INVALID_PRICE"),
        ({"price": None, "otype": OrderType.LIMIT}, "MISSING_PRICE"),
        ({"inst": "NOPE.TEST"}, "UNKNOWN_INSTRUMENT"),
        ({"inst": HALTED}, "INSTRUMENT_HALTED"),
        ({"price": "1000.25"}, "PRICE_OFF_TICK"),  # tick 0.5
        ({"qty": "0.015"}, "QUANTITY_OFF_LOT"),  # lot 0.01 (notional 15 > 10)
        ({"qty": "0.001"}, "QUANTITY_BELOW_MIN"),  # min 0.01
        ({"qty": "1001"}, "QUANTITY_ABOVE_MAX"),  # max 1000
        ({"qty": "0.01", "price": "999.5"}, "NOTIONAL_BELOW_MIN"),  # 9.995 < 10
        ({"acct": "stranger"}, "UNKNOWN_ACCOUNT"),
        ({"cid": ""}, "MISSING_CLIENT_ORDER_ID"),
        ({"tif": TimeInForce.GTD}, "INVALID_EXPIRE_TIME"),
        ({"tif": TimeInForce.GTD, "expire": T0}, "INVALID_EXPIRE_TIME"),  # before ts_submit
        ({"price": "1E+400"}, "INVALID_NUMBER"),  # % tick overflows the decimal context
    ],
)
def test_bad_orders_are_denied_with_reason(kwargs: dict, reason: str) -> None:
    assert _reason(_engine(), _order(**kwargs)) == reason


def test_default_account_is_allowed_and_undeclared_accounts_can_be_allowed() -> None:
    assert _reason(_engine(), _order(acct="default")) == "APPROVED"
    eng = RiskEngine(RiskLimits(version="lim-v7", require_declared_accounts=False), INSTRUMENTS)
    eng.on_tick(TradeTick(BTC, D("1000"), D("1"), Aggressor.BUY, "t1", T0, T0))
    assert _reason(eng, _order(acct="anyone")) == "APPROVED"


def test_duplicate_client_order_id() -> None:
    eng = _engine()
    assert _reason(eng, _order(cid="x")) == "APPROVED"
    assert _reason(eng, _order(cid="x")) == "DUPLICATE_CLIENT_ORDER_ID"
    # a different account may use the same id
    assert _reason(eng, _order(cid="x", acct="default")) == "APPROVED"
    # an id spent on a denial stays spent, so the order state machine agrees
    eng.on_control(ControlCommand(ControlAction.HALT, ControlScope.ACCOUNT, "acct"))
    assert _reason(eng, _order(cid="y")) == "ACCOUNT_KILL_SWITCH"
    eng.on_control(ControlCommand(ControlAction.RESUME, ControlScope.ACCOUNT, "acct"))
    assert _reason(eng, _order(cid="y")) == "DUPLICATE_CLIENT_ORDER_ID"


def test_price_band_against_last_trade() -> None:
    eng = _engine()  # last 1000, band 100 bps -> [990, 1010]
    assert _reason(eng, _order(price="1010")) == "APPROVED"
    assert _reason(eng, _order(price="990")) == "APPROVED"
    assert _reason(eng, _order(price="1010.5")) == "PRICE_OUTSIDE_BAND"
    assert _reason(eng, _order(price="989.5")) == "PRICE_OUTSIDE_BAND"


def test_price_band_uses_mid_when_quote_is_newer() -> None:
    eng = _engine()
    # bid 1099, ask 1101 -> mid 1100 at a later ts than the 1000 trade: band [1089, 1111]
    eng.on_tick(Quote(BTC, D("1099"), D("1"), D("1101"), D("1"), 1, T0 + 1, T0 + 1))
    assert _reason(eng, _order(price="1111")) == "APPROVED"
    assert _reason(eng, _order(price="1000")) == "PRICE_OUTSIDE_BAND"


def test_market_orders_refused_on_stale_or_missing_market_data() -> None:
    eng = _engine()  # trade at T0, max age 2 s
    assert _reason(eng, _order(price=None, ts=T0 + 2 * SEC)) == "APPROVED"
    assert _reason(eng, _order(price=None, ts=T0 + 2 * SEC + 1)) == "MARKET_DATA_STALE"
    eng2 = RiskEngine(_limits(), INSTRUMENTS)  # no ticks at all
    assert _reason(eng2, _order(price=None)) == "MARKET_DATA_STALE"
    # a limit order on stale data is judged on its own price (no band applied)
    assert _reason(eng, _order(price="2000", ts=T0 + 10 * SEC)) == "APPROVED"


def test_max_order_qty_and_notional() -> None:
    eng = _engine(max_order_qty=D("5"), max_order_notional=D("4000"))
    assert _reason(eng, _order(qty="4", price="1000")) == "APPROVED"  # 4000 == max
    assert _reason(eng, _order(qty="4.01", price="1000")) == "NOTIONAL_EXCEEDS_MAX_PER_ORDER"
    assert _reason(eng, _order(qty="6", inst=ETH, price="100")) == "QUANTITY_EXCEEDS_MAX_PER_ORDER"
    # market order notional uses the reference: 4.5 x 1000 = 4500 > 4000
    assert _reason(eng, _order(qty="4.5", price=None)) == "NOTIONAL_EXCEEDS_MAX_PER_ORDER"


def test_position_limit_counts_position_and_worst_case_open_orders() -> None:
    eng = _engine(max_position_qty=D("10"))
    eng.on_position(Position("acct", BTC, D("4"), D("1000"), D(0), D(0), D("1000"), D(0), T0))
    assert _reason(eng, _order(qty="3")) == "APPROVED"  # 4 + 3 = 7
    assert _reason(eng, _order(qty="3.01")) == "POSITION_LIMIT_EXCEEDED"  # 4 + 3 + 3.01
    assert _reason(eng, _order(qty="3")) == "APPROVED"  # 4 + 3 + 3 = 10 == max
    # the sell side: 4 - 14 = -10 ok, 4 - 14.01 = -10.01 too short
    assert _reason(eng, _order(qty="14", side=Side.SELL)) == "APPROVED"
    assert _reason(eng, _order(qty="0.01", side=Side.SELL)) == "POSITION_LIMIT_EXCEEDED"


def test_position_limit_per_instrument_override() -> None:
    eng = _engine(max_position_qty=D("100"), max_position_qty_by_instrument={BTC: D("2")})
    assert _reason(eng, _order(qty="2")) == "APPROVED"
    assert _reason(eng, _order(qty="0.01")) == "POSITION_LIMIT_EXCEEDED"
    assert _reason(eng, _order(qty="50", inst=ETH, price="100")) == "APPROVED"


def test_order_events_release_open_order_exposure() -> None:
    eng = _engine(max_position_qty=D("5"))
    o = _order(qty="5", cid="a")
    assert _reason(eng, o) == "APPROVED"
    assert _reason(eng, _order(qty="1")) == "POSITION_LIMIT_EXCEEDED"
    eng.on_order_event(_ev("a", OrderStatus.CANCELED, qty="5", cum="0"))
    assert eng.account("acct").open_order_count == 0
    assert _reason(eng, _order(qty="5")) == "APPROVED"


def _ev(cid: str, status: OrderStatus, qty: str, cum: str, leaves: str = "0") -> OrderEvent:
    return OrderEvent(
        event=str(status),
        status=status,
        order_id=f"acct:{cid}",
        client_order_id=cid,
        account_id="acct",
        instrument_id=BTC,
        side=Side.BUY,
        quantity=D(qty),
        cum_qty=D(cum),
        leaves_qty=D(leaves),
        avg_px=None,
        ts_event=T0 + SEC,
        price=D("1000"),
    )


def test_gross_exposure_counts_positions_open_orders_and_new_order() -> None:
    eng = _engine(max_gross_exposure=D("10000"))
    # short 2 ETH marked at 100 -> 200 ; long 3 BTC marked at 1000 -> 3000
    eng.on_position(Position("acct", ETH, D("-2"), D("100"), D(0), D(0), D("100"), D(0), T0))
    eng.on_position(Position("acct", BTC, D("3"), D("1000"), D(0), D(0), D("1000"), D(0), T0))
    assert _reason(eng, _order(qty="6", price="1000")) == "APPROVED"  # 3200+6000 = 9200
    assert _reason(eng, _order(qty="8", price="100", inst=ETH)) == "APPROVED"  # 9200+800=10000
    assert _reason(eng, _order(qty="0.1", price="100", inst=ETH)) == "GROSS_EXPOSURE_EXCEEDED"


def test_max_open_orders() -> None:
    eng = _engine(max_open_orders=2)
    assert _reason(eng, _order(cid="a")) == "APPROVED"
    assert _reason(eng, _order()) == "APPROVED"
    assert _reason(eng, _order()) == "MAX_OPEN_ORDERS_EXCEEDED"
    eng.on_order_event(_ev("a", OrderStatus.FILLED, qty="1", cum="1"))
    assert _reason(eng, _order()) == "APPROVED"


def test_order_rate_limit_slides_in_event_time() -> None:
    eng = _engine(rate_window_ns=SEC, max_orders_per_window=2)
    assert _reason(eng, _order(ts=T0 + SEC)) == "APPROVED"
    assert _reason(eng, _order(ts=T0 + SEC + 500)) == "APPROVED"
    assert _reason(eng, _order(ts=T0 + 2 * SEC - 1)) == "ORDER_RATE_EXCEEDED"
    # at T0+2s the first order (T0+1s) is exactly one window old and drops out
    assert _reason(eng, _order(ts=T0 + 2 * SEC)) == "APPROVED"


def test_cancel_rate_limit() -> None:
    eng = _engine(rate_window_ns=SEC, max_cancels_per_window=1)
    c1 = eng.check_cancel(CancelOrder("acct", "a", ts_submit=T0))
    c2 = eng.check_cancel(CancelOrder("acct", "b", ts_submit=T0 + 10))
    c3 = eng.check_cancel(CancelOrder("acct", "b", ts_submit=T0 + SEC))
    assert (c1.reason, c2.reason, c3.reason) == ("APPROVED", "CANCEL_RATE_EXCEEDED", "APPROVED")


def test_daily_loss_limit_switches_to_reduce_only_until_next_day() -> None:
    eng = _engine(daily_loss_limit=D("500"))
    pos = Position("acct", BTC, D("2"), D("1000"), D("-100"), D("-399"), D("800"), D(0), T0)
    assert eng.on_position(pos) is None  # -499 > -500
    alert = eng.on_position(
        Position("acct", BTC, D("2"), D("1000"), D("-100"), D("-400"), D("800"), D(0), T0 + 1)
    )
    assert alert is not None and alert.alert == "REDUCE_ONLY_ENGAGED"
    assert _reason(eng, _order(qty="1", price="1000")) == "REDUCE_ONLY"  # buy grows long
    assert _reason(eng, _order(qty="2.01", side=Side.SELL)) == "REDUCE_ONLY"  # would flip
    assert _reason(eng, _order(qty="1.5", side=Side.SELL)) == "APPROVED"
    # 1.5 already open to sell: another 0.5 still fits (2 - 1.5 - 0.5 = 0), 0.51 does not
    assert _reason(eng, _order(qty="0.51", side=Side.SELL)) == "REDUCE_ONLY"
    assert _reason(eng, _order(qty="0.5", side=Side.SELL)) == "APPROVED"
    # next UTC day: the day's P&L restarts from the current total and trading resumes
    assert _reason(eng, _order(qty="1", ts=T0 + 86_400 * SEC)) == "APPROVED"


def test_kill_switches_account_and_global() -> None:
    eng = _engine()
    eng.on_control(ControlCommand(ControlAction.HALT, ControlScope.ACCOUNT, "acct", "ops"))
    assert _reason(eng, _order()) == "ACCOUNT_KILL_SWITCH"
    assert _reason(eng, _order(acct="default")) == "APPROVED"
    # cancels always pass the kill switch
    assert eng.check_cancel(CancelOrder("acct", "x", ts_submit=T0)).approved
    eng.on_control(ControlCommand(ControlAction.HALT, ControlScope.GLOBAL, reason="incident"))
    assert _reason(eng, _order(acct="default")) == "GLOBAL_KILL_SWITCH"
    eng.on_control(ControlCommand(ControlAction.RESUME, ControlScope.GLOBAL))
    assert _reason(eng, _order()) == "ACCOUNT_KILL_SWITCH"  # account halt is independent
    eng.on_control(ControlCommand(ControlAction.RESUME, ControlScope.ACCOUNT, "acct"))
    assert _reason(eng, _order()) == "APPROVED"


def test_replace_checked_as_the_order_it_becomes() -> None:
    eng = _engine(max_position_qty=D("5"), max_order_notional=D("5000"))
    assert _reason(eng, _order(qty="2", cid="r")) == "APPROVED"
    ok = eng.check_replace(ReplaceOrder("acct", "r", quantity=D("5"), ts_submit=T0 + SEC))
    assert ok.approved, ok.detail  # worst case 5 <= 5, notional 5000 <= 5000
    big = eng.check_replace(ReplaceOrder("acct", "r", quantity=D("6"), ts_submit=T0 + SEC))
    assert big.reason == "NOTIONAL_EXCEEDS_MAX_PER_ORDER"
    off = eng.check_replace(ReplaceOrder("acct", "r", price=D("1000.1"), ts_submit=T0 + SEC))
    assert off.reason == "PRICE_OFF_TICK"
    fat = eng.check_replace(ReplaceOrder("acct", "r", price=D("1200"), ts_submit=T0 + SEC))
    assert fat.reason == "PRICE_OUTSIDE_BAND"
    nan = eng.check_replace(ReplaceOrder("acct", "r", quantity=D("NaN"), ts_submit=T0 + SEC))
    assert nan.reason == "INVALID_QUANTITY"
    unknown = eng.check_replace(ReplaceOrder("acct", "zz", quantity=D("1"), ts_submit=T0))
    assert unknown.reason == "UNKNOWN_ORDER"


def test_snapshot_restore_keeps_decisions_identical() -> None:
    eng = _engine(max_position_qty=D("3"), rate_window_ns=SEC, max_orders_per_window=3)
    assert _reason(eng, _order(qty="2", cid="s1")) == "APPROVED"
    eng.on_control(ControlCommand(ControlAction.HALT, ControlScope.ACCOUNT, "default"))
    again = RiskEngine.restore(eng.snapshot(), eng.ctx.limits, INSTRUMENTS)
    assert _reason(again, _order(cid="s1")) == "DUPLICATE_CLIENT_ORDER_ID"
    assert _reason(again, _order(qty="1.01")) == "POSITION_LIMIT_EXCEEDED"
    assert _reason(again, _order(acct="default")) == "ACCOUNT_KILL_SWITCH"
    assert _reason(again, _order(qty="1", price=None)) == "APPROVED"  # market data restored


def test_bundled_risk_config_loads() -> None:
    lim = load_limits(REPO / "trade2026" / "config" / "risk.toml")
    assert lim.for_account("alice").max_order_notional == D("50000")
    assert lim.for_account("alice").max_open_orders == 200  # inherited from defaults
    assert lim.for_account("bob").max_open_orders == 20
    assert lim.is_declared("default") and not lim.is_declared("mallory")
    # every instrument it names exists in the bundled instruments config
    names = lim.defaults.max_position_qty_by_instrument or {}
    registry = load_instruments()
    assert all(n in registry for n in names)


def test_unknown_field_in_config_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "risk.toml"
    p.write_text('version = "1"\n[defaults]\nmax_order_qtty = "1"\n')
    with pytest.raises(ValueError, match="max_order_qtty"):
        load_limits(p)


def test_watcher_reloads_on_change_and_keeps_old_limits_on_bad_file(tmp_path: Path) -> None:
    p = tmp_path / "risk.toml"
    p.write_text('version = "v1"\n[defaults]\nmax_order_qty = "1"\n')
    watcher = RiskConfigWatcher(p)
    eng = RiskEngine(watcher.limits, INSTRUMENTS)
    eng.on_tick(TradeTick(BTC, D("1000"), D("1"), Aggressor.BUY, "t1", T0, T0))
    assert watcher.poll() is None  # unchanged
    assert eng.check_submit(_order(qty="2", acct="default")).reason == (
        "QUANTITY_EXCEEDS_MAX_PER_ORDER"
    )

    def rewrite(text: str) -> None:
        st = p.stat()
        p.write_text(text)
        # make the mtime move even on coarse-grained filesystems
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    rewrite('version = "v2"\n[defaults]\nmax_order_qty = "3"\n')
    new = watcher.poll()
    assert new is not None and new.version == "v2"
    eng.set_limits(new)
    d = eng.check_submit(_order(qty="2", acct="default"))
    assert d.approved and d.limits_version == "v2"
    rewrite('version = "v3"\n[defaults]\nmax_order_qty = "not a number"\n')
    assert watcher.poll() is None
    assert watcher.last_error is not None and "hint" in watcher.last_error
    assert watcher.limits.version == "v2"


def test_benchmark_function_reports_a_median() -> None:
    from benchmarks.risk_check import measure

    result = measure(orders=2_000, repeats=1)
    assert result["orders"] == 2_000 and result["median_us_per_order"] > 0
