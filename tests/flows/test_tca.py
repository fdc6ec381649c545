"""The TCA flow: hand-built quotes, order events and fills; expected bps worked out by hand."""

from __future__ import annotations

import base64
from decimal import Decimal as D

import msgspec
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.tca import TcaFlowConfig, build_flow
from operators.tca import FillQuality, OrderQuality, TcaConfig, TcaWindow
from schemas.canonical import Fill, OrderEvent, Quote
from schemas.common import Liquidity, OrderStatus, Side
from schemas.transport import Message, Outgoing
from trade2026.accounting import Accounting

BTC = "BTCUSDT.BINANCE"
S = 1_000_000_000
ENC = msgspec.json.Encoder()
OUT = msgspec.json.Decoder(FillQuality | OrderQuality | TcaWindow)


def quote(ts: int, bid: str, ask: str) -> Message:
    return Message(
        f"md.ticks.{BTC}", ENC.encode(Quote(BTC, D(bid), D(1), D(ask), D(1), 0, ts, ts)), 0
    )


def event(
    oid: str, account: str, side: Side, qty: str, status: OrderStatus, cum: str, ts: int
) -> Message:
    e = OrderEvent(
        event=status.value,
        status=status,
        order_id=oid,
        client_order_id=oid,
        account_id=account,
        instrument_id=BTC,
        side=side,
        quantity=D(qty),
        cum_qty=D(cum),
        leaves_qty=D(qty) - D(cum),
        avg_px=None,
        ts_event=ts,
        price=D("103"),
    )
    return Message(f"orders.events.{account}", ENC.encode(e), 0)


def fill(exec_id: str, oid: str, qty: str, px: str, ts: int) -> Message:
    f = Fill(exec_id, oid, oid, "alice", BTC, Side.BUY, D(qty), D(px), D("0.1"), "USDT",
             Liquidity.TAKER, ts)  # fmt: skip
    return Message("fills.alice", ENC.encode(f), 0)


def test_fill_order_and_window_quality_match_hand_computed_bps() -> None:
    e1 = fill("e1", "o1", "1", "102", 3 * S)
    garbage = Message("fills.alice", b"{", 0)
    msgs = [
        quote(S, "100", "102"),  # mid 101
        event("o1", "alice", Side.BUY, "2", OrderStatus.ACCEPTED, "0", 2 * S),
        e1,
        # the FILLED event overtakes the fill that completes the order
        event("o1", "alice", Side.BUY, "2", OrderStatus.FILLED, "2", 4 * S),
        fill("e2", "o1", "1", "104", 4 * S),
        e1,  # redelivered
        event("o2", "bob", Side.SELL, "1", OrderStatus.ACCEPTED, "0", 5 * S),
        event("o2", "bob", Side.SELL, "1", OrderStatus.CANCELED, "0", 6 * S),
        event("o3", "bob", Side.SELL, "1", OrderStatus.DENIED, "0", 7 * S),
        garbage,
        quote(11 * S, "100", "102"),  # closes [0 s, 10 s)
    ]
    out: list[Outgoing] = []
    acct = Accounting()
    cfg = TcaFlowConfig(tca=TcaConfig(window_ns=10 * S))
    run_main(build_flow(TestingSource(msgs, batch_size=3), TestingSink(out), config=cfg,
                        accounting=acct))  # fmt: skip
    got = [(o.subject, OUT.decode(o.data)) for o in out if not o.subject.startswith("dlq.")]

    fills = [r for _, r in got if isinstance(r, FillQuality)]
    # (102 - 101) / 101 * 1e4 = 99.00990099..; (104 - 101) / 101 * 1e4 = 297.0297029..
    assert [(f.exec_id, f.slippage_bps) for f in fills] == [
        ("e1", D("99.0099")),
        ("e2", D("297.0297")),
    ]
    orders = {r.order_id: r for _, r in got if isinstance(r, OrderQuality)}
    assert set(orders) == {"o1", "o2"}  # the denied order never reached a market
    o1 = orders["o1"]
    # bought 2 for 206 against 2 * 101 = 202: 4 / 202 * 1e4 = 198.0198019..
    assert (o1.fill_ratio, o1.avg_px, o1.slippage_bps) == (D(1), D(103), D("198.0198"))
    assert o1.time_to_first_fill_ns == S
    o2 = orders["o2"]
    assert (o2.fill_ratio, o2.filled_qty, o2.time_to_first_fill_ns) == (D(0), D(0), None)

    windows = {s: r for s, r in got if isinstance(r, TcaWindow)}
    w = windows[f"tca.windows.instrument.{BTC}"]
    assert (w.window_start, w.window_end, w.fills, w.notional) == (0, 10 * S, 2, D(206))
    assert w.slippage_bps() == D("198.0198")
    assert (w.orders, w.fill_ratio()) == (2, D("0.666667"))  # 2 filled of 3 ordered
    assert windows["tca.windows.account.alice"].fills == 2
    assert windows["tca.windows.account.bob"].orders == 1
    assert {s for s, _ in got if not s.startswith("tca.windows.")} == {
        "tca.fills.alice",
        "tca.orders.alice",
        "tca.orders.bob",
    }

    (dead,) = [msgspec.json.decode(o.data) for o in out if o.subject == "dlq.tca"]
    assert base64.b64decode(dead["payload"]) == b"{"
    c = acct.stage("tca")
    assert (c.records_in, c.duplicates, c.dead_lettered) == (len(msgs), 1, 1) and c.balanced
