"""The order path's wire contract: round trips, exact decimals, strictness."""

from __future__ import annotations

from decimal import Decimal as D

import msgspec
import pytest

from schemas.canonical import Order, OrderEvent
from schemas.common import OrderStatus, OrderType, Side, TimeInForce
from schemas.orders import (
    AlertRaised,
    CancelOrder,
    ControlAction,
    ControlCommand,
    ControlScope,
    ExecType,
    ExecutionReport,
    ReplaceOrder,
    RiskAction,
    RiskDecision,
    SubmitOrder,
)

T0 = 1_767_225_600_000_000_000

Command = SubmitOrder | CancelOrder | ReplaceOrder | ControlCommand | ExecutionReport


def test_submit_order_is_an_order_with_its_own_tag() -> None:
    cmd = SubmitOrder(
        "c1",
        "alice",
        "BTCUSDT.BINANCE",
        Side.BUY,
        OrderType.LIMIT,
        D("0.001"),
        D("45000"),
        TimeInForce.IOC,
        ts_submit=T0,
    )
    assert isinstance(cmd, Order)
    raw = msgspec.json.encode(cmd)
    assert b'"kind":"submit_order"' in raw and b'"quantity":"0.001"' in raw
    assert msgspec.json.decode(raw, type=SubmitOrder) == cmd


def test_submit_json_numbers_are_read_exactly_and_tag_is_optional() -> None:
    raw = (
        b'{"client_order_id":"c","account_id":"a","instrument_id":"i","side":"BUY",'
        b'"order_type":"LIMIT","quantity":0.1,"price":45000.10}'
    )
    cmd = msgspec.json.decode(raw, type=SubmitOrder)
    assert cmd.quantity == D("0.1") and cmd.price == D("45000.10")


def test_unknown_fields_are_refused_on_commands() -> None:
    raw = b'{"account_id":"a","client_order_id":"c","qty":"1"}'
    with pytest.raises(msgspec.ValidationError, match="qty"):
        msgspec.json.decode(raw, type=CancelOrder)


def test_tagged_union_dispatches_every_input() -> None:
    items: list[Command] = [
        SubmitOrder("c1", "a", "i", Side.SELL, OrderType.MARKET, D("1")),
        CancelOrder("a", "c1", request_id="r1", ts_submit=T0),
        ReplaceOrder("a", "c1", quantity=D("2"), price=D("10.5")),
        ControlCommand(ControlAction.HALT, ControlScope.GLOBAL, reason="drill"),
        ExecutionReport(
            "BINANCE",
            "e1",
            ExecType.TRADE,
            T0,
            venue_order_id="9",
            last_qty=D("1"),
            last_px=D("10.50"),
        ),
    ]
    for item in items:
        back = msgspec.json.decode(msgspec.json.encode(item), type=Command)
        assert back == item and type(back) is type(item)


def test_decision_event_and_alert_round_trip() -> None:
    dec = RiskDecision(
        "a",
        "c1",
        RiskAction.SUBMIT,
        False,
        "NOTIONAL_EXCEEDS_MAX_PER_ORDER",
        "notional 60000 > 50000",
        "2026.11.1",
        "2026.11.1",
        T0,
    )
    ev = OrderEvent(
        "FILLED",
        OrderStatus.FILLED,
        "a:c1",
        "c1",
        "a",
        "i",
        Side.BUY,
        D("2"),
        D("2"),
        D("0"),
        D("100.125"),
        T0,
        last_qty=D("1"),
        last_px=D("100.25"),
        price=D("101"),
        venue_order_id="9",
    )
    alert = AlertRaised("OVERFILL", "too much", "a", "c1", T0, exec_id="e1")
    for item in (dec, ev, alert):
        assert msgspec.json.decode(msgspec.json.encode(item), type=type(item)) == item
    assert b'"avg_px":"100.125"' in msgspec.json.encode(ev)


def test_exec_report_bad_enum_is_a_validation_error() -> None:
    raw = b'{"venue":"B","exec_id":"e","exec_type":"PARTIAL","ts_event":1}'
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=ExecutionReport)
