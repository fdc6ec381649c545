"""Exec report matching: by venue order id or client order id, dedupe, unmatched to the DLQ."""

from __future__ import annotations

from decimal import Decimal as D

import msgspec

from operators.execreports import STAGE, ExecReportMatcher
from operators.orders import OrderManager
from schemas.canonical import DeadLetter, OrderEvent
from schemas.common import OrderStatus, OrderType, Side
from schemas.orders import (
    AlertRaised,
    ExecutionReport,
    RiskAction,
    RiskDecision,
    SubmitOrder,
)
from trade2026.accounting import Accounting

T0 = 1_767_225_600_000_000_000


def _ev(acct: str, cid: str, venue_order_id: str | None = None) -> OrderEvent:
    return OrderEvent(
        event="SUBMITTED",
        status=OrderStatus.PENDING_NEW,
        order_id=f"{acct}:{cid}",
        client_order_id=cid,
        account_id=acct,
        instrument_id="BTC.TEST",
        side=Side.BUY,
        quantity=D("2"),
        cum_qty=D(0),
        leaves_qty=D("2"),
        avg_px=None,
        ts_event=T0,
        venue_order_id=venue_order_id,
    )


def _json(**kw: object) -> bytes:
    base: dict[str, object] = {
        "venue": "BINANCE",
        "exec_id": "e1",
        "exec_type": "TRADE",
        "ts_event": T0,
        "instrument_id": "BTC.TEST",
        "last_qty": "0.5",
        "last_px": "45000.10",
    }
    base.update(kw)
    return msgspec.json.encode(base)


def test_match_by_client_order_id_stamps_the_account() -> None:
    acc = Accounting()
    m = ExecReportMatcher(acc)
    m.on_order_event(_ev("alice", "c1"))
    (rep,) = m.on_message(_json(client_order_id="c1", venue_order_id="V9"), "exec.reports.b")
    assert isinstance(rep, ExecutionReport)
    assert (rep.account_id, rep.client_order_id) == ("alice", "c1")
    assert rep.last_px == D("45000.10")  # the venue's decimal text, exactly
    # the venue order id is learned: the next report needs nothing else
    (rep2,) = m.on_message(_json(exec_id="e2", venue_order_id="V9"))
    assert isinstance(rep2, ExecutionReport)
    assert (rep2.account_id, rep2.client_order_id) == ("alice", "c1")
    assert acc.stage(STAGE).out == 2 and acc.stage(STAGE).balanced


def test_match_by_venue_order_id_from_order_events() -> None:
    m = ExecReportMatcher()
    m.on_order_event(_ev("bob", "c7", venue_order_id="V1"), venue="BINANCE")
    (rep,) = m.on_message(_json(venue_order_id="V1"))
    assert isinstance(rep, ExecutionReport) and rep.account_id == "bob"
    assert rep.client_order_id == "c7"


def test_duplicates_are_dropped_and_counted() -> None:
    acc = Accounting()
    m = ExecReportMatcher(acc)
    m.on_order_event(_ev("alice", "c1"))
    assert len(m.on_message(_json(client_order_id="c1"))) == 1
    assert m.on_message(_json(client_order_id="c1")) == []
    # the same exec id from another venue is a different execution
    assert len(m.on_message(_json(client_order_id="c1", venue="COINBASE"))) == 1
    count = acc.stage(STAGE)
    assert (count.records_in, count.out, count.duplicates) == (3, 2, 1) and count.balanced


def test_unmatched_goes_to_dead_letter_with_alert_and_can_match_later() -> None:
    acc = Accounting()
    m = ExecReportMatcher(acc)
    raw = _json(client_order_id="ghost")
    dead, alert = m.on_message(raw, "exec.reports.binance", ts_recv=T0 + 5)
    assert isinstance(dead, DeadLetter) and dead.reason == "UNMATCHED_EXECUTION_REPORT"
    assert dead.stage == "execreports" and dead.payload == raw and dead.ts_recv == T0 + 5
    assert isinstance(alert, AlertRaised) and alert.alert == "UNMATCHED_EXECUTION_REPORT"
    assert "hint" in dead.detail
    m.on_order_event(_ev("alice", "ghost"))
    (rep,) = m.on_message(raw)  # a redelivery after the order is known still matches
    assert isinstance(rep, ExecutionReport)
    count = acc.stage(STAGE)
    assert (count.records_in, count.out, count.dead_lettered) == (2, 1, 1) and count.balanced
    assert acc.reasons(STAGE) == {"UNMATCHED_EXECUTION_REPORT": 1}


def test_client_order_id_used_by_two_accounts_needs_the_account() -> None:
    m = ExecReportMatcher()
    m.on_order_event(_ev("alice", "same"))
    m.on_order_event(_ev("bob", "same"))
    (dead,) = m.on_message(_json(client_order_id="same"))
    assert isinstance(dead, DeadLetter) and dead.reason == "AMBIGUOUS_CLIENT_ORDER_ID"
    (rep,) = m.on_message(_json(exec_id="e9", client_order_id="same", account_id="bob"))
    assert isinstance(rep, ExecutionReport) and rep.account_id == "bob"


def test_bad_bytes_become_dead_letters() -> None:
    acc = Accounting()
    m = ExecReportMatcher(acc, max_bytes=1024)
    cases = {
        b"not json": "INVALID_EXECUTION_REPORT",
        _json(exec_type="FILLED_ISH"): "INVALID_EXECUTION_REPORT",
        msgspec.json.encode({"venue": "B"}): "INVALID_EXECUTION_REPORT",  # missing fields
        _json(last_qty=[1]): "INVALID_EXECUTION_REPORT",
        b"{" + b" " * 2000 + b"}": "OVERSIZED_MESSAGE",
    }
    for data, reason in cases.items():
        out = m.on_message(data)
        assert len(out) == 1 and isinstance(out[0], DeadLetter), data[:40]
        assert out[0].reason == reason and out[0].payload == data
    assert acc.stage(STAGE).dead_lettered == len(cases) and acc.stage(STAGE).balanced


def test_matched_report_drives_the_order_state_machine() -> None:
    m = ExecReportMatcher()
    mgr = OrderManager("alice")
    order = SubmitOrder(
        "c1", "alice", "BTC.TEST", Side.BUY, OrderType.LIMIT, D("2"), D("45000.10"), ts_submit=T0
    )
    (ev,) = mgr.on_submit(
        order, RiskDecision("alice", "c1", RiskAction.SUBMIT, True, "APPROVED", "", "v", "i", T0)
    )
    assert isinstance(ev, OrderEvent)
    m.on_order_event(ev)
    for raw in (
        _json(
            exec_id="n1",
            exec_type="NEW",
            client_order_id="c1",
            venue_order_id="V5",
            last_qty=None,
            last_px=None,
        ),
        _json(exec_id="t1", venue_order_id="V5", last_qty="0.5"),
        _json(exec_id="t1", venue_order_id="V5", last_qty="0.5"),  # duplicate
        _json(exec_id="t2", venue_order_id="V5", last_qty="1.5", last_px="45000.20"),
    ):
        for rep in m.on_message(raw):
            assert isinstance(rep, ExecutionReport)
            mgr.on_execution_report(rep)
    o = mgr.get("c1")
    assert o is not None and o.status is OrderStatus.FILLED and o.cum_qty == D("2")
    # (0.5 * 45000.10 + 1.5 * 45000.20) / 2 = (22500.05 + 67500.30) / 2 = 45000.175
    assert o.avg_px == D("45000.175")
