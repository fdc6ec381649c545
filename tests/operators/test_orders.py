"""Order state machine: table-driven over FIX 4.4 Appendix D (order state change matrices).

Each scenario is named after the matrix it reproduces (A.1.a ... I.1.b). A step is an input
and the expected (status, order qty, cum qty, leaves qty) after it, read off the matrix
(with FIX's 10000-share orders scaled to 10, so 7000 -> 7, etc.).
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from operators.orders import OrderManager
from schemas.canonical import OrderEvent
from schemas.common import OrderStatus, OrderType, Side, TimeInForce
from schemas.orders import (
    AlertRaised,
    CancelOrder,
    ExecType,
    ExecutionReport,
    ReplaceOrder,
    RiskAction,
    RiskDecision,
    SubmitOrder,
)

S = OrderStatus
SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC  # 2026-01-01T00:00:00Z
DAY = 86_400 * SEC


def _decision(cid: str, approved: bool = True, reason: str = "APPROVED") -> RiskDecision:
    return RiskDecision(
        "acct", cid, RiskAction.SUBMIT, approved, reason, "" if approved else "why", "v", "i", T0
    )


class Driver:
    """Feeds one order through an :class:`OrderManager` with terse steps."""

    def __init__(
        self, qty: str = "10", tif: TimeInForce = TimeInForce.GTC, expire: int | None = None
    ) -> None:
        self.mgr = OrderManager("acct")
        self.n = 0
        self.ts = T0
        self.outputs: list[OrderEvent | AlertRaised] = []
        self._order = SubmitOrder(
            client_order_id="X",
            account_id="acct",
            instrument_id="BTC.TEST",
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=D(qty),
            price=D("100"),
            time_in_force=tif,
            expire_time=expire,
            ts_submit=T0,
        )

    def _rep(self, exec_type: ExecType, **kw: object) -> ExecutionReport:
        self.n += 1
        self.ts += 1
        return ExecutionReport(
            venue="V",
            exec_id=f"e{self.n}",
            exec_type=exec_type,
            ts_event=self.ts,
            venue_order_id="V1",
            client_order_id="X",
            **kw,
        )  # type: ignore[arg-type]

    def step(self, action: str, *args: str) -> list[OrderEvent | AlertRaised]:
        self.ts += 1
        m = self.mgr
        if action == "submit":
            out = m.on_submit(self._order, _decision("X"))
        elif action == "deny":
            out = m.on_submit(self._order, _decision("X", False, "POSITION_LIMIT_EXCEEDED"))
        elif action == "new":
            out = m.on_execution_report(self._rep(ExecType.NEW))
        elif action == "trade":
            out = m.on_execution_report(
                self._rep(ExecType.TRADE, last_qty=D(args[0]), last_px=D(args[1]))
            )
        elif action == "cancel":
            out = m.on_cancel(CancelOrder("acct", "X", ts_submit=self.ts))
        elif action == "replace":
            out = m.on_replace(ReplaceOrder("acct", "X", quantity=D(args[0]), ts_submit=self.ts))
        elif action == "replace_px":
            out = m.on_replace(ReplaceOrder("acct", "X", price=D(args[0]), ts_submit=self.ts))
        elif action == "time":
            out = m.on_time(int(args[0]))
        else:
            out = m.on_execution_report(self._rep(ExecType[action.upper()]))
        self.outputs.extend(out)
        return out

    def state(self) -> tuple[OrderStatus, str, str, str]:
        o = self.mgr.get("X")
        assert o is not None
        return (o.status, str(o.quantity), str(o.cum_qty), str(o.leaves_qty))


Step = tuple[tuple[str, ...], tuple[OrderStatus, str, str, str]]

SCENARIOS: dict[str, list[Step]] = {
    "A.1.a filled order": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "2", "100"), (S.PARTIALLY_FILLED, "10", "2", "8")),
        (("trade", "1", "101"), (S.PARTIALLY_FILLED, "10", "3", "7")),
        (("trade", "7", "102"), (S.FILLED, "10", "10", "0")),
    ],
    "A.1.a rejected by the venue": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("rejected",), (S.REJECTED, "10", "0", "0")),
    ],
    "A.1.b part-filled day order, done for day (expired)": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "2", "100"), (S.PARTIALLY_FILLED, "10", "2", "8")),
        (("expired",), (S.EXPIRED, "10", "2", "0")),
    ],
    "B.1.a cancel request issued for a zero-filled order": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("cancel",), (S.PENDING_CANCEL, "10", "0", "10")),
        (("canceled",), (S.CANCELED, "10", "0", "0")),
    ],
    "B.1.a cancel rejected restores the prior state": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("cancel",), (S.PENDING_CANCEL, "10", "0", "10")),
        (("cancel_rejected",), (S.ACCEPTED, "10", "0", "10")),
    ],
    "B.1.b cancel for a part-filled order, executions while cancel pending": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "2", "100"), (S.PARTIALLY_FILLED, "10", "2", "8")),
        (("cancel",), (S.PENDING_CANCEL, "10", "2", "8")),
        (("trade", "3", "100"), (S.PENDING_CANCEL, "10", "5", "5")),
        (("canceled",), (S.CANCELED, "10", "5", "0")),
    ],
    "B.1.b cancel rejected after a fill while pending restores PARTIALLY_FILLED": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("cancel",), (S.PENDING_CANCEL, "10", "0", "10")),
        (("trade", "3", "100"), (S.PENDING_CANCEL, "10", "3", "7")),
        (("cancel_rejected",), (S.PARTIALLY_FILLED, "10", "3", "7")),
    ],
    "B.1.c cancel for an order that becomes filled before the cancel is accepted": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "2", "100"), (S.PARTIALLY_FILLED, "10", "2", "8")),
        (("cancel",), (S.PENDING_CANCEL, "10", "2", "8")),
        (("trade", "8", "100"), (S.FILLED, "10", "10", "0")),
        (("cancel_rejected",), (S.FILLED, "10", "10", "0")),
    ],
    "B.1.d cancel for an order not yet acknowledged": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("cancel",), (S.PENDING_CANCEL, "10", "0", "10")),
        (("canceled",), (S.CANCELED, "10", "0", "0")),
    ],
    "B.1.e ack and cancel request cross": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("cancel",), (S.PENDING_CANCEL, "10", "0", "10")),
        (("new",), (S.PENDING_CANCEL, "10", "0", "10")),
        (("cancel_rejected",), (S.ACCEPTED, "10", "0", "10")),
    ],
    "C.1.a zero-filled order, replace to increase qty": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "11"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("replaced",), (S.ACCEPTED, "11", "0", "11")),
    ],
    "C.1.b part-filled order, replace to increase qty, fill while pending replace": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "1", "100"), (S.PARTIALLY_FILLED, "10", "1", "9")),
        (("replace", "12"), (S.PENDING_REPLACE, "10", "1", "9")),
        (("trade", "1", "100"), (S.PENDING_REPLACE, "10", "2", "8")),
        (("replaced",), (S.PARTIALLY_FILLED, "12", "2", "10")),
        (("trade", "10", "100"), (S.FILLED, "12", "12", "0")),
    ],
    "C.1.b replace rejected restores PARTIALLY_FILLED": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "1", "100"), (S.PARTIALLY_FILLED, "10", "1", "9")),
        (("replace", "12"), (S.PENDING_REPLACE, "10", "1", "9")),
        (("replace_rejected",), (S.PARTIALLY_FILLED, "10", "1", "9")),
    ],
    "C.1.c filled order, replace to increase qty is refused": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "10", "100"), (S.FILLED, "10", "10", "0")),
        (("replace", "12"), (S.FILLED, "10", "10", "0")),
    ],
    "C.2.a replace (price only) rejected as a fill occurred": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace_px", "99"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("trade", "10", "100"), (S.FILLED, "10", "10", "0")),
        (("replace_rejected",), (S.FILLED, "10", "10", "0")),
    ],
    "C.3.a replace to decrease qty above cum: replaced then filled": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "8"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("trade", "1", "100"), (S.PENDING_REPLACE, "10", "1", "9")),
        (("replaced",), (S.PARTIALLY_FILLED, "8", "1", "7")),
        (("trade", "7", "100"), (S.FILLED, "8", "8", "0")),
    ],
    "C.3.b replace to decrease qty equal to cum: filled": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "7"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("trade", "7", "100"), (S.PENDING_REPLACE, "10", "7", "3")),
        (("replaced",), (S.FILLED, "7", "7", "0")),
    ],
    "C.3.c replace to decrease qty below cum: amended to cum, filled": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "7"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("trade", "8", "100"), (S.PENDING_REPLACE, "10", "8", "2")),
        (("replaced",), (S.FILLED, "8", "8", "0")),
    ],
    "D.1.a two replaces, each accepted": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "11"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("replaced",), (S.ACCEPTED, "11", "0", "11")),
        (("replace", "12"), (S.PENDING_REPLACE, "11", "0", "11")),
        (("replaced",), (S.ACCEPTED, "12", "0", "12")),
    ],
    "D.1.b replace rejected after pending, then another accepted": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "11"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("replace_rejected",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "12"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("replaced",), (S.ACCEPTED, "12", "0", "12")),
    ],
    "D.2.a chained replace is refused while one is pending": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("replace", "11"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("replace", "12"), (S.PENDING_REPLACE, "10", "0", "10")),
        (("replaced",), (S.ACCEPTED, "11", "0", "11")),
    ],
    "E.1.a unsolicited cancel by the venue": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "4", "100"), (S.PARTIALLY_FILLED, "10", "4", "6")),
        (("canceled",), (S.CANCELED, "10", "4", "0")),
    ],
    "I.1.a IOC partially filled, remainder canceled": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("trade", "6", "100"), (S.PARTIALLY_FILLED, "10", "6", "4")),
        (("canceled",), (S.CANCELED, "10", "6", "0")),
    ],
    "I.1.b FOK cannot be filled: killed": [
        (("submit",), (S.PENDING_NEW, "10", "0", "10")),
        (("new",), (S.ACCEPTED, "10", "0", "10")),
        (("canceled",), (S.CANCELED, "10", "0", "0")),
    ],
    "risk denial is terminal and never reaches the venue": [
        (("deny",), (S.DENIED, "10", "0", "0")),
    ],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_appendix_d_scenario(name: str) -> None:
    drv = Driver()
    for action, expected in SCENARIOS[name]:
        out = drv.step(*action)
        assert drv.state() == expected, f"{name}: after {action}"
        events = [o for o in out if isinstance(o, OrderEvent)]
        for ev in events:  # every event states where the order stands
            assert (ev.status, str(ev.quantity), str(ev.cum_qty), str(ev.leaves_qty)) == expected
    seqs = [o.seq for o in drv.outputs if isinstance(o, OrderEvent)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_avg_price_is_exact_volume_weighted() -> None:
    drv = Driver()
    drv.step("submit")
    drv.step("new")
    drv.step("trade", "2", "100.10")
    drv.step("trade", "1", "101.25")
    (ev,) = drv.step("trade", "7", "99.99")
    assert isinstance(ev, OrderEvent)
    # (2*100.10 + 1*101.25 + 7*99.99) / 10 = (200.20 + 101.25 + 699.93) / 10 = 100.138
    assert ev.avg_px == D("100.138")
    assert ev.last_qty == D("7") and ev.last_px == D("99.99")
    assert ev.event == "FILLED" and ev.status is S.FILLED


def test_late_fill_after_cancel_is_applied_and_alerted() -> None:
    drv = Driver()
    for a in (("submit",), ("new",), ("trade", "2", "100"), ("cancel",), ("canceled",)):
        drv.step(*a)
    out = drv.step("trade", "3", "110")
    ev = next(o for o in out if isinstance(o, OrderEvent))
    alert = next(o for o in out if isinstance(o, AlertRaised))
    assert ev.event == "LATE_FILLED" and ev.status is S.CANCELED
    assert (ev.cum_qty, ev.leaves_qty) == (D("5"), D("0"))
    assert ev.avg_px == D("106")  # (2*100 + 3*110) / 5 = 530 / 5
    assert alert.alert == "LATE_FILL" and alert.applied


def test_overfill_is_rejected_and_alerted() -> None:
    drv = Driver()
    drv.step("submit")
    drv.step("new")
    drv.step("trade", "8", "100")
    (alert,) = drv.step("trade", "3", "100")
    assert isinstance(alert, AlertRaised) and alert.alert == "OVERFILL" and not alert.applied
    assert drv.state() == (S.PARTIALLY_FILLED, "10", "8", "2")
    drv.step("trade", "2", "100")
    (again,) = drv.step("trade", "0.5", "100")
    assert isinstance(again, AlertRaised) and again.alert == "OVERFILL"
    assert drv.state() == (S.FILLED, "10", "10", "0")


def test_duplicate_exec_id_is_ignored() -> None:
    drv = Driver()
    drv.step("submit")
    rep = ExecutionReport(
        venue="V",
        exec_id="dup",
        exec_type=ExecType.TRADE,
        ts_event=T0,
        client_order_id="X",
        last_qty=D("4"),
        last_px=D("100"),
    )
    assert len(drv.mgr.on_execution_report(rep)) == 1
    assert drv.mgr.on_execution_report(rep) == []
    assert drv.mgr.duplicates == 1
    assert drv.state() == (S.PARTIALLY_FILLED, "10", "4", "6")


@pytest.mark.parametrize(
    ("setup", "bad", "status"),
    [
        ((("submit",), ("new",), ("canceled",)), "new", S.CANCELED),
        ((("submit",), ("new",), ("trade", "10", "1")), "canceled", S.FILLED),
        ((("submit",), ("new",)), "replaced", S.ACCEPTED),
        ((("submit",), ("new",)), "rejected", S.ACCEPTED),
        ((("submit",), ("rejected",)), "canceled", S.REJECTED),
        ((("submit",), ("new",)), "cancel_rejected", S.ACCEPTED),
    ],
)
def test_invalid_transitions_are_reported_not_applied(
    setup: tuple[tuple[str, ...], ...], bad: str, status: OrderStatus
) -> None:
    drv = Driver()
    for a in setup:
        drv.step(*a)
    before = drv.state()
    (alert,) = drv.step(bad)
    assert isinstance(alert, AlertRaised) and alert.alert == "INVALID_TRANSITION"
    assert drv.state() == before and before[0] is status


def test_trade_on_rejected_order_is_invalid() -> None:
    drv = Driver()
    drv.step("submit")
    drv.step("rejected")
    (alert,) = drv.step("trade", "1", "100")
    assert isinstance(alert, AlertRaised) and alert.alert == "INVALID_TRANSITION"


def test_cancel_and_replace_refusals_name_a_reason() -> None:
    drv = Driver()
    (a,) = drv.mgr.on_cancel(CancelOrder("acct", "nope", ts_submit=T0))
    assert isinstance(a, AlertRaised) and a.alert == "UNKNOWN_ORDER"  # B.1.f
    drv.step("submit")
    (r,) = drv.step("replace", "5")
    assert isinstance(r, OrderEvent) and r.reason == "ORDER_NOT_ACKNOWLEDGED"
    drv.step("new")
    drv.step("trade", "10", "100")
    (c,) = drv.step("cancel")
    assert isinstance(c, OrderEvent) and c.event == "CANCEL_REJECTED"
    assert c.reason == "ORDER_NOT_OPEN"
    (r2,) = drv.step("replace", "12")
    assert isinstance(r2, OrderEvent) and r2.reason == "ORDER_NOT_OPEN"


def test_bad_trade_numbers_become_alerts() -> None:
    drv = Driver()
    drv.step("submit")
    for q, p in (("NaN", "100"), ("1", "Infinity"), ("-1", "100"), ("1", "0")):
        (a,) = drv.step("trade", q, p)
        assert isinstance(a, AlertRaised) and a.alert == "INVALID_EXECUTION_REPORT"
    assert drv.state() == (S.PENDING_NEW, "10", "0", "10")


def test_gtd_expires_at_expire_time_in_event_time() -> None:
    drv = Driver(tif=TimeInForce.GTD, expire=T0 + 60 * SEC)
    drv.step("submit")
    drv.step("new")
    assert drv.step("time", str(T0 + 60 * SEC - 1)) == []
    (ev,) = drv.step("time", str(T0 + 60 * SEC))
    assert isinstance(ev, OrderEvent) and ev.event == "EXPIRED" and ev.status is S.EXPIRED
    assert ev.ts_event == T0 + 60 * SEC
    # the venue's own expiry arriving later is a quiet confirmation
    assert drv.step("expired") == []


def test_day_order_expires_at_next_utc_midnight() -> None:
    drv = Driver(tif=TimeInForce.DAY)
    drv.step("submit")
    drv.step("new")
    drv.step("trade", "3", "100")
    assert drv.step("time", str(T0 + DAY - 1)) == []
    (ev,) = drv.step("time", str(T0 + DAY))
    assert isinstance(ev, OrderEvent) and ev.status is S.EXPIRED
    assert (ev.cum_qty, ev.leaves_qty) == (D("3"), D("0"))


def test_gtc_never_expires() -> None:
    drv = Driver()
    drv.step("submit")
    assert drv.step("time", str(T0 + 365 * DAY)) == []


def test_snapshot_restore_round_trip() -> None:
    drv = Driver(tif=TimeInForce.GTD, expire=T0 + SEC)
    for a in (("submit",), ("new",), ("trade", "2", "100"), ("cancel",)):
        drv.step(*a)
    mgr = OrderManager.restore(drv.mgr.snapshot())
    o = mgr.get("X")
    assert o is not None and o.status is S.PENDING_CANCEL and o.prior is S.PARTIALLY_FILLED
    assert o.cum_qty == D("2") and o.venue_order_id == "V1"
    # exec ids already applied stay deduplicated after restore
    rep = ExecutionReport(
        venue="V",
        exec_id="e2",
        exec_type=ExecType.TRADE,
        ts_event=T0,
        client_order_id="X",
        last_qty=D("1"),
        last_px=D("100"),
    )
    assert mgr.on_execution_report(rep) == []
    (ev,) = mgr.on_time(T0 + SEC)  # expiry schedule restored
    assert isinstance(ev, OrderEvent) and ev.status is S.EXPIRED


def test_report_matched_by_venue_order_id_alone() -> None:
    drv = Driver()
    drv.step("submit")
    drv.step("new")  # carries venue_order_id V1 and learns it
    rep = ExecutionReport(
        venue="V",
        exec_id="z",
        exec_type=ExecType.TRADE,
        ts_event=T0,
        venue_order_id="V1",
        last_qty=D("1"),
        last_px=D("100"),
    )
    (ev,) = drv.mgr.on_execution_report(rep)
    assert isinstance(ev, OrderEvent) and ev.cum_qty == D("1")
