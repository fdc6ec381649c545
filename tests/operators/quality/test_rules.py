"""Per-record rules: each stage refuses what it must, with the documented reason code."""

from __future__ import annotations

import random
from decimal import Decimal

import msgspec
import pytest

from operators.quality.rules import Reason, RulesConfig, build_rule
from schemas.canonical import (
    BookDelta,
    BookLevel,
    Fill,
    Order,
    OrderEvent,
    Position,
    Quote,
    TradeTick,
)
from schemas.common import Aggressor, Liquidity, OrderStatus, OrderType, Side, TimeInForce
from schemas.features import AccountWindow, Bar
from schemas.instruments import load_instruments
from schemas.transport import Message

D = Decimal
T = 1_723_161_300_000_000_000
BTC = "BTCUSDT.BINANCE"
KNOWN = load_instruments()
S = 1_000_000_000


def trade(**kw):
    base = dict(
        instrument_id=BTC,
        price=D("61000.10"),
        size=D("0.5"),
        aggressor=Aggressor.BUY,
        trade_id="100",
        ts_event=T,
        ts_recv=T + 5_000_000,
    )
    return TradeTick(**(base | kw))


def quote(**kw):
    base = dict(
        instrument_id=BTC,
        bid_price=D("61000.00"),
        bid_size=D("1"),
        ask_price=D("61000.01"),
        ask_size=D("2"),
        update_id=10,
        ts_event=T,
        ts_recv=T,
    )
    return Quote(**(base | kw))


def test_real_recorded_ticks_all_pass(btc_ticks, eth_ticks):
    rule = build_rule("ticks", KNOWN)
    assert [t for t in btc_ticks + eth_ticks if rule.check(t) is not None] == []


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (trade(instrument_id="NOPE.BINANCE"), Reason.UNKNOWN_INSTRUMENT),
        (trade(price=D("-1")), Reason.INVALID_PRICE),
        (trade(price=D("0")), Reason.INVALID_PRICE),
        (trade(price=D("NaN")), Reason.NON_FINITE),
        (trade(size=D("0")), Reason.INVALID_QUANTITY),
        (trade(ts_event=0), Reason.INVALID_TIMESTAMP),
        (trade(ts_event=T + 10 * S, ts_recv=T), Reason.TIMESTAMP_IN_FUTURE),
        (trade(trade_id=""), Reason.MISSING_ID),
        (quote(bid_price=D("61000.02")), Reason.CROSSED_QUOTE),
        (quote(bid_price=D("61000.01")), Reason.LOCKED_QUOTE),
        (quote(ask_size=D("-1")), Reason.INVALID_QUANTITY),
        (quote(bid_price=D("Infinity")), Reason.NON_FINITE),
        (
            BookDelta(BTC, [BookLevel(D("1"), D("1"))], [], 9, 5, False, T, T),
            Reason.INVALID_SEQUENCE,
        ),
        (BookDelta(BTC, [BookLevel(D("-1"), D("1"))], [], 1, 5, False, T, T), Reason.INVALID_PRICE),
        ("not a tick", Reason.SCHEMA_MISMATCH),
        # the edges of the fast path: NaNs refuse ordering, infinities are not finite
        (trade(price=D("sNaN")), Reason.NON_FINITE),
        (trade(price=D("-Infinity")), Reason.NON_FINITE),
        (trade(size=D("Infinity")), Reason.NON_FINITE),
        (trade(size=D("-0.1")), Reason.INVALID_QUANTITY),
        (trade(ts_recv=0), Reason.INVALID_TIMESTAMP),
        (quote(ask_price=D("Infinity")), Reason.NON_FINITE),
        (quote(ask_price=D("NaN")), Reason.NON_FINITE),
        (quote(bid_price=D("0")), Reason.INVALID_PRICE),
        (quote(bid_size=D("NaN")), Reason.NON_FINITE),
        (quote(ask_size=D("Infinity")), Reason.NON_FINITE),
        (quote(bid_size=D("-0.5")), Reason.INVALID_QUANTITY),
        (quote(update_id=-1), Reason.INVALID_SEQUENCE),
        (quote(ts_event=T + 3 * S), Reason.TIMESTAMP_IN_FUTURE),
        (
            BookDelta(
                BTC, [], [BookLevel(D("2"), D("1")), BookLevel(D("NaN"), D("1"))], 1, 5, False, T, T
            ),
            Reason.NON_FINITE,
        ),
        (BookDelta(BTC, [BookLevel(D("0"), D("1"))], [], 1, 5, False, T, T), Reason.INVALID_PRICE),
        (
            BookDelta(BTC, [], [BookLevel(D("1"), D("-0.01"))], 1, 5, False, T, T),
            Reason.INVALID_QUANTITY,
        ),
        (
            BookDelta(BTC, [BookLevel(D("1"), D("Infinity"))], [], 1, 5, False, T, T),
            Reason.NON_FINITE,
        ),
        (BookDelta(BTC, [], [], -1, 5, False, T, T), Reason.INVALID_SEQUENCE),
        (BookDelta(BTC, [], [], 1, 5, False, 0, T), Reason.INVALID_TIMESTAMP),
        (BookDelta("NOPE.BINANCE", [], [], 1, 5, False, T, T), Reason.UNKNOWN_INSTRUMENT),
    ],
)
@pytest.mark.parametrize("warm", [False, True], ids=["first", "after-good-ticks"])
def test_bad_ticks_are_refused(record, reason, warm):
    rule = build_rule("ticks", KNOWN)
    if warm:  # the rule has seen the instrument: the fast path is tried first
        good = [quote(update_id=1), trade(trade_id="1"), BookDelta(BTC, [], [], 0, 0, False, T, T)]
        assert [rule.check(r) for r in good] == [None, None, None]
    assert rule.check(record) == reason


@pytest.mark.parametrize("warm", [False, True], ids=["first", "after-good-ticks"])
def test_edge_values_that_pass(warm):
    rule = build_rule("ticks", KNOWN, RulesConfig(check_order=False))
    if warm:
        assert rule.check(quote()) is None
    assert rule.check(quote(bid_size=D("0"), ask_size=D("-0"))) is None  # -0 == 0
    assert rule.check(quote(ts_event=T + 2 * S)) is None  # exactly the allowed skew
    assert rule.check(trade(price=D("1E-8"), size=D("1E+3"))) is None
    delta = BookDelta(BTC, [BookLevel(D("1E-8"), D("0"))], [BookLevel(D("2"), D("0E-8"))], 3, 3,
                      False, T, T)  # fmt: skip
    assert rule.check(delta) is None


def test_book_levels_unchecked_where_the_producer_checked_them():
    """Normalize's decoder refuses bad levels itself; its tap may skip re-checking them."""
    bad_level = BookDelta(BTC, [BookLevel(D("-1"), D("NaN"))], [], 1, 5, False, T, T)
    assert build_rule("ticks", KNOWN).check(bad_level) == Reason.INVALID_PRICE
    unchecked = build_rule("ticks", KNOWN, RulesConfig(check_book_levels=False))
    assert unchecked.check(bad_level) is None
    assert unchecked.check(BookDelta(BTC, [], [], 9, 5, False, T, T)) == Reason.INVALID_SEQUENCE


def test_sequences_never_go_backwards_and_bad_records_do_not_advance_state():
    rule = build_rule("ticks", KNOWN)
    assert rule.check(quote(update_id=10)) is None
    assert rule.check(quote(update_id=9)) == Reason.OUT_OF_ORDER
    assert rule.check(quote(update_id=10)) is None  # equal: a duplicate, dedup's business
    assert rule.check(quote(update_id=0)) is None  # 0: venue sends no ids
    assert rule.check(trade(trade_id="100")) is None
    assert rule.check(trade(trade_id="100")) == Reason.OUT_OF_ORDER
    assert rule.check(trade(trade_id="105", price=D("-1"))) == Reason.INVALID_PRICE
    assert rule.check(trade(trade_id="101")) is None  # the refused 105 did not move the state
    assert rule.check(BookDelta(BTC, [], [], 1, 5, False, T, T)) is None
    assert rule.check(BookDelta(BTC, [], [], 5, 8, False, T, T)) == Reason.OUT_OF_ORDER
    assert rule.check(BookDelta(BTC, [], [], 6, 8, False, T, T)) is None
    assert rule.check(BookDelta(BTC, [], [], 2, 3, True, T, T)) is None  # a snapshot resets
    assert rule.check(quote(update_id=5, instrument_id="ETHUSDT.BINANCE")) is None  # per instrument


def test_locked_quotes_allowed_by_config():
    rule = build_rule("ticks", KNOWN, RulesConfig(allow_locked_quotes=True))
    assert rule.check(quote(bid_price=D("61000.01"))) is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"allow_locked_quotes": true, "typo": 1}', type=RulesConfig)


def test_raw_messages():
    rule = build_rule("raw", KNOWN, RulesConfig(max_payload_bytes=100))
    ok = Message("md.binance", b'{"stream":"x"}', T, seq=1)
    assert rule.check(ok) is None
    assert rule.check(Message("md.binance", b"  ", T, seq=2)) == Reason.EMPTY_PAYLOAD
    assert rule.check(Message("md.binance", b"{" + b"x" * 200, T, seq=3)) == Reason.OVERSIZED
    assert rule.check(Message("md.binance", b"<html>", T, seq=4)) == Reason.INVALID_JSON
    assert rule.check(Message("md.binance", b"{}", 0, seq=5)) == Reason.INVALID_TIMESTAMP
    assert rule.check(Message("md.binance", b"{}", T, seq=1)) == Reason.OUT_OF_ORDER
    assert rule.check(Message("md.other", b"{}", T, seq=1)) is None
    assert rule.check(Message("md.other", b" \n[1]", T, seq=2)) is None  # leading whitespace
    assert rule.check(Message("md.other", b"", T, seq=3)) == Reason.EMPTY_PAYLOAD
    assert rule.check(Message("md.other", b"{}", T)) is None  # no seq: no order to check
    assert rule.check(Message("md.other", b"{}", T, seq=3)) is None  # the refused 3 did not count


def order(**kw):
    base = dict(
        client_order_id="c1",
        account_id="A",
        instrument_id=BTC,
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=D("1"),
        price=D("60000"),
    )
    return Order(**(base | kw))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (order(), None),
        (order(order_type=OrderType.MARKET, price=None), None),
        (order(price=None), Reason.MISSING_PRICE),
        (order(price=D("-5")), Reason.INVALID_PRICE),
        (order(quantity=D("0")), Reason.INVALID_QUANTITY),
        (order(account_id=""), Reason.MISSING_ID),
        (order(instrument_id="X"), Reason.UNKNOWN_INSTRUMENT),
        (order(time_in_force=TimeInForce.GTD), Reason.MISSING_EXPIRE_TIME),
        (
            order(time_in_force=TimeInForce.GTD, ts_submit=T, expire_time=T - 1),
            Reason.INVALID_TIMESTAMP,
        ),
    ],
)
def test_orders(record, reason):
    assert build_rule("orders", KNOWN).check(record) == reason


def event(**kw):
    base = dict(
        event="ACCEPTED",
        status=OrderStatus.ACCEPTED,
        order_id="o1",
        client_order_id="c1",
        account_id="A",
        instrument_id=BTC,
        side=Side.BUY,
        quantity=D("2"),
        cum_qty=D("0"),
        leaves_qty=D("2"),
        avg_px=None,
        ts_event=T,
        seq=1,
    )
    return OrderEvent(**(base | kw))


def test_order_events_lifecycle():
    rule = build_rule("order_events", KNOWN)
    assert rule.check(event()) is None
    assert rule.check(event(seq=1)) == Reason.OUT_OF_ORDER
    fill1 = dict(
        event="PARTIALLY_FILLED",
        status=OrderStatus.PARTIALLY_FILLED,
        cum_qty=D("1"),
        leaves_qty=D("1"),
        avg_px=D("60000"),
        last_qty=D("1"),
        last_px=D("60000"),
    )
    assert rule.check(event(seq=2, ts_event=T + 1, **fill1)) is None
    assert (
        rule.check(event(seq=3, ts_event=T + 2, **(fill1 | {"cum_qty": D("0.5")})))
        == Reason.CUM_QTY_DECREASED
    )
    assert rule.check(event(seq=3, ts_event=T - 5, **fill1)) == Reason.OUT_OF_ORDER
    done = fill1 | dict(
        event="FILLED", status=OrderStatus.FILLED, cum_qty=D("2"), leaves_qty=D("0")
    )
    assert (
        rule.check(
            event(seq=3, ts_event=T + 3, **(done | {"leaves_qty": D("0"), "cum_qty": D("1.5")}))
        )
        == Reason.QUANTITY_MISMATCH
    )
    assert rule.check(event(seq=3, ts_event=T + 3, **done)) is None
    assert (
        rule.check(event(seq=4, ts_event=T + 4, event="CANCELED", status=OrderStatus.CANCELED))
        == Reason.EVENT_AFTER_TERMINAL
    )
    assert rule.check(event(order_id="o2", cum_qty=D("3"))) == Reason.OVERFILL
    assert (
        rule.check(event(order_id="o3", cum_qty=D("1"), leaves_qty=D("1.5")))
        == Reason.QUANTITY_MISMATCH
    )
    assert rule.check(event(order_id="o4", avg_px=D("0"))) == Reason.INVALID_PRICE


# One order of quantity 2 through the order manager's events (operators/orders.py). Times:
# request-side events carry the client's clock (CLIENT + n seconds), venue reports the
# venue's (VENUE + n seconds); here the venue's clock runs 10 s ahead of the client's.
CLIENT, VENUE = T, T + 10 * S
_ST = OrderStatus
_OPEN = dict(cum_qty=D("0"), leaves_qty=D("2"))
_HALF = dict(cum_qty=D("1"), leaves_qty=D("1"), avg_px=D("60000"))
_DONE = dict(cum_qty=D("2"), leaves_qty=D("0"), avg_px=D("60000"))
_FILL = dict(last_qty=D("1"), last_px=D("60000"))
_NONE = dict(cum_qty=D(0), leaves_qty=D(0))  # canceled before any fill
_KEPT = _HALF | {"leaves_qty": D(0)}  # canceled or expired with 1 filled


def ev(name: str, status: OrderStatus, seq: int, ts: int, qty: dict = _OPEN, **kw: object) -> dict:
    return dict(event=name, status=status, seq=seq, ts_event=ts) | qty | kw


SUBMITTED = ev("SUBMITTED", _ST.PENDING_NEW, 1, CLIENT)
ACCEPTED = ev("ACCEPTED", _ST.ACCEPTED, 2, VENUE)
HALF = ev("PARTIALLY_FILLED", _ST.PARTIALLY_FILLED, 3, VENUE + S, _HALF, **_FILL)
FILLED = ev("FILLED", _ST.FILLED, 4, VENUE + 2 * S, _DONE, **_FILL)
CANCELED = ev("CANCELED", _ST.CANCELED, 3, VENUE + 2 * S, _NONE)
CANCELED_HALF = ev("CANCELED", _ST.CANCELED, 4, VENUE + 2 * S, _KEPT)
LIVE = [SUBMITTED, ACCEPTED]
SEQ_ONLY = (Reason.OUT_OF_ORDER, None)
DONE = [SUBMITTED, ACCEPTED, HALF, FILLED]


@pytest.mark.parametrize(
    ("history", "last", "reason"),
    [
        # ts_event is compared only between venue reports: a request stamped by the client
        # before the venue's ACCEPTED is in order (the soak run's false OUT_OF_ORDER).
        (LIVE, ev("CANCEL_REQUESTED", _ST.PENDING_CANCEL, 3, CLIENT + S), None),
        (LIVE, ev("REPLACE_REQUESTED", _ST.PENDING_REPLACE, 3, CLIENT + S), None),
        (  # ... and the venue's answer to it, back on the venue's clock
            [*LIVE, ev("CANCEL_REQUESTED", _ST.PENDING_CANCEL, 3, CLIENT + S)],
            ev("CANCELED", _ST.CANCELED, 4, VENUE + S, dict(cum_qty=D(0), leaves_qty=D(0))),
            None,
        ),
        (  # a fill while the cancel is pending keeps PENDING_CANCEL (FIX B.1.b)
            [*LIVE, ev("CANCEL_REQUESTED", _ST.PENDING_CANCEL, 3, CLIENT + S)],
            ev("PARTIALLY_FILLED", _ST.PENDING_CANCEL, 4, VENUE + S, _HALF, **_FILL),
            None,
        ),
        (  # the venue's clock behind the client's: ACCEPTED before SUBMITTED
            [ev("SUBMITTED", _ST.PENDING_NEW, 1, VENUE + 5 * S)],
            ev("ACCEPTED", _ST.ACCEPTED, 2, VENUE),
            None,
        ),
        (  # a risk-refused cancel: the request's time, before the venue's reports
            LIVE,
            ev("CANCEL_REJECTED", _ST.ACCEPTED, 3, CLIENT + S, reason="HALTED"),
            None,
        ),
        (  # our own expiry at expire_time, before the venue's last fill time
            [*LIVE, HALF],
            ev("EXPIRED", _ST.EXPIRED, 4, VENUE, _KEPT),
            None,
        ),
        # A cancel/replace refused on a finished order repeats its state (FIX B.1.c).
        (DONE, ev("CANCEL_REJECTED", _ST.FILLED, 5, CLIENT + S, _DONE), None),
        (DONE, ev("REPLACE_REJECTED", _ST.FILLED, 5, VENUE + 3 * S, _DONE), None),
        (
            [*DONE, ev("CANCEL_REJECTED", _ST.FILLED, 5, CLIENT + S, _DONE)],
            ev("REPLACE_REJECTED", _ST.FILLED, 6, CLIENT + 2 * S, _DONE),
            None,
        ),
        ([*LIVE, CANCELED], ev("CANCEL_REJECTED", _ST.CANCELED, 4, CLIENT, _NONE), None),
        # A late fill after CANCELED/EXPIRED (it crossed the cancel: its time may be earlier).
        (
            [*LIVE, CANCELED],
            ev("LATE_FILLED", _ST.CANCELED, 4, VENUE + S, _KEPT, **_FILL),
            None,
        ),
        (
            [*LIVE, HALF, ev("EXPIRED", _ST.EXPIRED, 4, CLIENT, _KEPT)],
            ev("LATE_FILLED", _ST.EXPIRED, 5, VENUE + 3 * S, _DONE, **_FILL),
            None,
        ),
        # Still refused: a sequence number that goes back (a replay, or events reordered;
        # without a seq only what else is wrong with them is).
        (LIVE, ev("CANCEL_REQUESTED", _ST.PENDING_CANCEL, 2, CLIENT + S), SEQ_ONLY),
        (
            [*LIVE, HALF],
            ev("ACCEPTED", _ST.ACCEPTED, 2, VENUE),
            (Reason.OUT_OF_ORDER, Reason.CUM_QTY_DECREASED),
        ),
        (DONE, FILLED, (Reason.OUT_OF_ORDER, Reason.EVENT_AFTER_TERMINAL)),  # replayed
        (
            [*DONE, ev("CANCEL_REJECTED", _ST.FILLED, 5, CLIENT + S, _DONE)],
            ev("REPLACE_REJECTED", _ST.FILLED, 5, CLIENT + 2 * S, _DONE),
            SEQ_ONLY,  # the passing refusal advanced the sequence
        ),
        # ... the venue's own clock going back between its reports of one order.
        ([*LIVE, HALF], ev("FILLED", _ST.FILLED, 4, VENUE, _DONE, **_FILL), Reason.OUT_OF_ORDER),
        # ... cum_qty going down, whoever stamped the event.
        (
            [*LIVE, HALF],
            ev("PARTIALLY_FILLED", _ST.PARTIALLY_FILLED, 4, VENUE + 2 * S, _OPEN, **_FILL),
            Reason.CUM_QTY_DECREASED,
        ),
        (
            [*LIVE, HALF],
            ev("CANCEL_REQUESTED", _ST.PENDING_CANCEL, 4, CLIENT, _OPEN),
            Reason.CUM_QTY_DECREASED,
        ),
        (
            [*LIVE, CANCELED_HALF],
            ev("CANCEL_REJECTED", _ST.CANCELED, 5, CLIENT, _NONE),
            Reason.CUM_QTY_DECREASED,
        ),
        # ... anything else after a terminal state.
        (DONE, ev("CANCELED", _ST.CANCELED, 5, VENUE + 3 * S, _DONE), Reason.EVENT_AFTER_TERMINAL),
        ([*LIVE, CANCELED], FILLED | {"seq": 4}, Reason.EVENT_AFTER_TERMINAL),
        (  # a refusal that reopens the finished order, or changes its quantities
            [*LIVE, CANCELED],
            ev("CANCEL_REJECTED", _ST.ACCEPTED, 4, CLIENT, _NONE),
            Reason.EVENT_AFTER_TERMINAL,
        ),
        (
            [*LIVE, CANCELED],
            ev("REPLACE_REJECTED", _ST.CANCELED, 4, CLIENT, _OPEN),
            Reason.EVENT_AFTER_TERMINAL,
        ),
        (
            [*LIVE, CANCELED],
            ev("REPLACE_REJECTED", _ST.CANCELED, 4, CLIENT, _KEPT),
            Reason.EVENT_AFTER_TERMINAL,
        ),
        (  # a late fill on a FILLED order, one that changes the status, one that adds nothing
            DONE,
            ev("LATE_FILLED", _ST.FILLED, 5, VENUE + 3 * S, _DONE, **_FILL),
            Reason.EVENT_AFTER_TERMINAL,
        ),
        (
            [*LIVE, CANCELED],
            ev("LATE_FILLED", _ST.FILLED, 4, VENUE + 3 * S, _DONE, **_FILL),
            Reason.EVENT_AFTER_TERMINAL,
        ),
        (
            [*LIVE, CANCELED_HALF],
            ev("LATE_FILLED", _ST.CANCELED, 5, VENUE + 3 * S, _KEPT, **_FILL),
            Reason.EVENT_AFTER_TERMINAL,
        ),
        (
            [*LIVE, CANCELED_HALF],
            ev("LATE_FILLED", _ST.CANCELED, 5, VENUE + 3 * S, _NONE, **_FILL),
            Reason.CUM_QTY_DECREASED,
        ),
    ],
)
def test_order_event_order(history: list[dict], last: dict, reason: object) -> None:
    """Per-order order checks: seq and cum_qty never go back, ts_event is compared only
    between the venue's reports, and after a terminal state only a late fill or a refusal
    that changes nothing. Each case: the history passes, then ``last`` gets ``reason``
    (a pair: with and without ``seq`` on the events)."""
    with_seq, without_seq = reason if isinstance(reason, tuple) else (reason, reason)
    for no_seq, expected in ((None, with_seq), ({"seq": 0}, without_seq)):
        rule = build_rule("order_events", KNOWN)
        for kw in history:
            assert rule.check(event(**(kw | (no_seq or {})))) is None, kw["event"]
        assert rule.check(event(**(last | (no_seq or {})))) == expected, no_seq


def test_refused_order_events_do_not_advance_the_order_state() -> None:
    rule = build_rule("order_events", KNOWN)
    for kw in [*LIVE, HALF]:
        assert rule.check(event(**kw)) is None
    bad = ev("CANCEL_REQUESTED", _ST.PENDING_CANCEL, 4, CLIENT, _OPEN)
    assert rule.check(event(**bad)) == Reason.CUM_QTY_DECREASED
    assert rule.check(event(**(bad | _HALF))) is None  # seq 4 and cum 1 still expected
    assert rule.check(event(**(FILLED | {"seq": 5}))) is None


@pytest.mark.parametrize("seed", range(4))
def test_every_event_the_order_manager_makes_passes(seed: int) -> None:
    """The only producer of order events, driven at random (submits, denials, cancels,
    replaces, expiry on either clock, every kind of venue report, late fills, crossed
    refusals), the client's and the venue's clocks each monotonic but apart by up to 5 s:
    the rule refuses none of its events. (Before, it refused requests stamped before the
    venue's reports, and refusals and late fills after a terminal state.)"""
    from operators.orders import OrderManager
    from schemas.orders import (
        CancelOrder,
        ExecType,
        ExecutionReport,
        ReplaceOrder,
        RiskAction,
        RiskDecision,
        SubmitOrder,
    )

    rnd = random.Random(seed)
    mgr = OrderManager("A", max_terminal=50)
    rule = build_rule("order_events", KNOWN)
    client, venue = T, T + rnd.randint(-5, 5) * S
    cids: list[str] = []
    checked = 0
    for step in range(2000):
        client += rnd.randint(0, 2 * S)
        venue += rnd.randint(0, 2 * S)
        r = rnd.random()
        if r < 0.15 or not cids:
            cid = f"c{step}"
            cids.append(cid)
            gtd = rnd.random() < 0.5
            submit = SubmitOrder(
                client_order_id=cid,
                account_id="A",
                instrument_id=BTC,
                side=Side.BUY,
                order_type=OrderType.LIMIT,
                quantity=D(rnd.choice("123")),
                price=D("60000"),
                time_in_force=TimeInForce.GTD if gtd else TimeInForce.GTC,
                expire_time=client + rnd.randint(1, 20) * S if gtd else None,
                ts_submit=client,
            )
            ok = rnd.random() > 0.1
            decision = RiskDecision(
                "A", cid, RiskAction.SUBMIT, ok, "APPROVED" if ok else "DENY", "", "", "", client
            )
            outs = mgr.on_submit(submit, decision)
        else:
            cid = rnd.choice(cids[-20:])
            if r < 0.3:
                outs = mgr.on_cancel(CancelOrder("A", cid, ts_submit=client))
            elif r < 0.4:
                qty = D(rnd.choice("124"))
                outs = mgr.on_replace(ReplaceOrder("A", cid, quantity=qty, ts_submit=client))
            elif r < 0.45:
                outs = mgr.on_time(rnd.choice((client, venue)))
            else:
                kind = rnd.choice([*ExecType, ExecType.TRADE])
                trade = kind is ExecType.TRADE
                report = ExecutionReport(
                    "SIM",
                    f"e{step}",
                    kind,
                    venue,
                    client_order_id=cid,
                    last_qty=D(1) if trade else None,
                    last_px=D("60000") if trade else None,
                )
                outs = mgr.on_execution_report(report)
        for out in outs:
            if isinstance(out, OrderEvent):
                checked += 1
                assert rule.check(out) is None, out
    assert checked > 1000


def test_order_event_memory_is_bounded():
    rule = build_rule("order_events", KNOWN, RulesConfig(max_tracked_orders=2))
    for oid in ("a", "b", "c"):
        assert rule.check(event(order_id=oid)) is None
    assert rule.check(event(order_id="a")) is None  # forgotten: treated as new
    assert rule.check(event(order_id="c")) == Reason.OUT_OF_ORDER  # remembered


def fill(**kw):
    base = dict(
        exec_id="e1",
        order_id="o1",
        client_order_id="c1",
        account_id="A",
        instrument_id=BTC,
        side=Side.SELL,
        quantity=D("1"),
        price=D("60000"),
        fee=D("-0.01"),
        fee_currency="USDT",
        liquidity=Liquidity.MAKER,
        ts_event=T,
    )
    return Fill(**(base | kw))


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (fill(), None),  # a negative fee is a maker rebate
        (fill(price=D("-1")), Reason.INVALID_PRICE),
        (fill(quantity=D("0")), Reason.INVALID_QUANTITY),
        (fill(exec_id=""), Reason.MISSING_ID),
        (fill(fee=D("NaN")), Reason.NON_FINITE),
        (fill(fee_currency=""), Reason.MISSING_FIELD),
        (fill(instrument_id="X"), Reason.UNKNOWN_INSTRUMENT),
        (fill(ts_event=0), Reason.INVALID_TIMESTAMP),
    ],
)
def test_fills(record, reason):
    assert build_rule("fills", KNOWN).check(record) == reason


def position(**kw):
    base = dict(
        account_id="A",
        instrument_id=BTC,
        quantity=D("-1"),
        avg_open_price=D("60000"),
        realized_pnl=D("0"),
        unrealized_pnl=D("-3"),
        mark_price=D("60003"),
        fees=D("1"),
        ts_event=T,
    )
    return Position(**(base | kw))


def test_positions():
    rule = build_rule("positions", KNOWN)
    assert rule.check(position()) is None
    assert rule.check(position(ts_event=T - 1)) == Reason.OUT_OF_ORDER
    assert rule.check(position(avg_open_price=None, ts_event=T + 1)) == Reason.MISSING_PRICE
    assert rule.check(position(quantity=D("0"), avg_open_price=None, ts_event=T + 1)) is None
    assert rule.check(position(mark_price=D("0"), ts_event=T + 2)) == Reason.INVALID_PRICE
    assert rule.check(position(unrealized_pnl=D("sNaN"), ts_event=T + 2)) == Reason.NON_FINITE
    assert rule.check(position(instrument_id="X")) == Reason.UNKNOWN_INSTRUMENT


def test_alt():
    rule = build_rule("alt", KNOWN)
    assert rule.check({"source": "news", "ts_event": T, "value": 0.4}) is None
    assert rule.check({"source": "news", "ts_event": T - 1, "value": 0.4}) == Reason.OUT_OF_ORDER
    assert rule.check({"source": "", "ts_event": T}) == Reason.MISSING_FIELD
    assert rule.check({"source": "news"}) == Reason.MISSING_FIELD
    assert rule.check({"source": "news", "ts_event": "yesterday"}) == Reason.SCHEMA_MISMATCH
    assert rule.check({"source": "news", "ts_event": T, "value": float("nan")}) == Reason.NON_FINITE
    assert (
        rule.check({"source": "news", "ts_event": T, "instrument_id": "X"})
        == Reason.UNKNOWN_INSTRUMENT
    )
    assert rule.check(["not", "a", "mapping"]) == Reason.SCHEMA_MISMATCH


def bar(**kw):
    base = dict(
        instrument_id=BTC,
        width_ns=S,
        start_ns=T,
        end_ns=T + S,
        trade_count=3,
        volume=D("3"),
        buy_volume=D("2"),
        sell_volume=D("1"),
        notional=D("180000"),
        open=D("60000"),
        high=D("60010"),
        low=D("59990"),
        close=D("60005"),
        vwap=60000.0,
        imbalance=1 / 3,
        realized_vol=0.0001,
        quote_count=5,
        mid_open=D("60000"),
        mid_close=D("60004"),
        mid_mean=60002.0,
        spread_min=D("0.01"),
        spread_max=D("0.05"),
        spread_mean=0.02,
    )
    return Bar(**(base | kw))


def test_features():
    rule = build_rule("features", KNOWN)
    assert rule.check(bar()) is None
    assert rule.check(bar()) == Reason.OUT_OF_ORDER  # the same window twice
    assert (
        rule.check(bar(start_ns=T + S, end_ns=T + 2 * S, high=D("59000")))
        == Reason.INCONSISTENT_OHLC
    )
    assert rule.check(bar(start_ns=T + S, end_ns=T + 3 * S)) == Reason.INVALID_WINDOW
    assert (
        rule.check(bar(start_ns=T + S, end_ns=T + 2 * S, buy_volume=D("5")))
        == Reason.QUANTITY_MISMATCH
    )
    assert (
        rule.check(bar(start_ns=T + S, end_ns=T + 2 * S, spread_min=D("-0.01")))
        == Reason.CROSSED_QUOTE
    )
    assert rule.check(bar(start_ns=T + S, end_ns=T + 2 * S, vwap=float("inf"))) == Reason.NON_FINITE
    assert rule.check(bar(start_ns=T + S, end_ns=T + 2 * S)) is None
    w = AccountWindow(
        account_id="A",
        width_ns=S,
        start_ns=T,
        end_ns=T + S,
        fill_count=1,
        turnover=D("1"),
        fees=D("0"),
        position_updates=0,
        **_account_extra(),
    )
    assert rule.check(w) is None
    assert rule.check(w) == Reason.OUT_OF_ORDER


def _account_extra() -> dict:
    fields = set(AccountWindow.__struct_fields__) - {
        "account_id",
        "width_ns",
        "start_ns",
        "end_ns",
        "fill_count",
        "turnover",
        "fees",
        "position_updates",
    }
    return {f: D("0") for f in fields}


def test_unknown_stage_names_the_stages():
    with pytest.raises(ValueError, match="ticks"):
        build_rule("nope", KNOWN)
