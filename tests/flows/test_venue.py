"""The venue flow: recorded ticks through the real normalize flow, scripted commands, reports out.

Expected prices come from the ticks themselves (the last quote before a command), and
fees from the fee schedule written here, never from the matching engine.
"""

from __future__ import annotations

import base64
import threading
import time
from decimal import Decimal as D
from pathlib import Path

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.normalize import build_flow as build_normalize_flow
from flows.venue import VenueFlowConfig, build_flow, build_production
from operators.matching import VenueConfig, VenueFileConfig
from schemas.canonical import Quote, Tick
from schemas.common import OrderType, Side, TimeInForce
from schemas.orders import CancelOrder, ExecType, ExecutionReport, ReplaceOrder, SubmitOrder
from schemas.transport import Message, Outgoing
from sources.recorded import RecordedSource
from trade2026.accounting import Accounting
from trade2026.flowregistry import RunContext
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
ETH = "ETHUSDT.BINANCE"
SECOND = 1_000_000_000
#: The first minute of the ETH recording (its first line is at 1723161254024619568).
ETH_START = 1723161254_000_000_000
REPORTS = msgspec.json.Decoder(ExecutionReport)
TICKS = msgspec.json.Decoder(Tick)
ENC = msgspec.json.Encoder()
#: 10 bps both sides and no latency: a command acts on the book as it stands on arrival.
FEES = VenueFileConfig(
    version="test",
    venues={"SIM": VenueConfig(maker_fee_bps=D(10), taker_fee_bps=D(10), latency_ns=0)},
)
CONFIG = VenueFlowConfig(venues=FEES)


def normalized_ticks(
    seconds: int = 60, path: Path = DATA / "spot_ethusdt_20240808.gz"
) -> list[Message]:
    """The first ``seconds`` of a recording through the real normalize flow, as md.ticks."""
    out: list[Outgoing] = []
    source = RecordedSource([path], end_ns=ETH_START + seconds * SECOND)
    run_main(build_normalize_flow(source, TestingSink(out)))
    return [Message(o.subject, o.data, 0, None) for o in out if o.subject.startswith("md.ticks.")]


def command(cmd: SubmitOrder | CancelOrder | ReplaceOrder, order_id: str) -> Message:
    return Message("venue.commands.SIM", ENC.encode(cmd), 0, {"T26-Order-Id": order_id})


def submit(
    coid: str,
    side: Side,
    qty: str,
    price: str | None = None,
    tif: TimeInForce = TimeInForce.GTC,
    account: str = "alice",
) -> Message:
    order = SubmitOrder(
        client_order_id=coid,
        account_id=account,
        instrument_id=ETH,
        side=side,
        order_type=OrderType.LIMIT if price else OrderType.MARKET,
        quantity=D(qty),
        price=D(price) if price else None,
        time_in_force=tif,
    )
    return command(order, f"{account}:{coid}")


def last_quote(msgs: list[Message]) -> Quote:
    for m in reversed(msgs):
        if m.subject.startswith("md.ticks."):
            tick = TICKS.decode(m.data)
            if isinstance(tick, Quote):
                return tick
    raise AssertionError("no quote before the command")


def run(msgs: list[Message], acct: Accounting | None = None) -> list[Outgoing]:
    out: list[Outgoing] = []
    run_main(
        build_flow(
            TestingSource(msgs, batch_size=256), TestingSink(out), config=CONFIG, accounting=acct
        )
    )
    return out


def reports(out: list[Outgoing]) -> list[ExecutionReport]:
    return [REPORTS.decode(o.data) for o in out if o.subject == "exec.reports.SIM"]


@pytest.fixture(scope="module")
def ticks() -> list[Message]:
    return normalized_ticks()


def scenario(ticks: list[Message]) -> list[Message]:
    """Orders at fixed points of the tick stream: a market buy, a far resting bid, its cancel."""
    a, b, c = len(ticks) // 4, len(ticks) // 2, 3 * len(ticks) // 4
    return [
        *ticks[:a],
        submit("m1", Side.BUY, "0.01"),
        *ticks[a:b],
        submit("l1", Side.BUY, "0.5", "1000.00"),  # far below the market: rests
        *ticks[b:c],
        command(CancelOrder(account_id="alice", client_order_id="l1"), "alice:l1"),
        *ticks[c:],
    ]


def test_same_ticks_and_orders_give_identical_reports(ticks: list[Message]) -> None:
    msgs = scenario(ticks)
    first, second = run(msgs), run(msgs)
    assert [o.data for o in first] == [o.data for o in second]
    assert [o.headers for o in first] == [o.headers for o in second]
    kinds = [(r.client_order_id, r.exec_type) for r in reports(first)]
    assert kinds == [
        ("m1", ExecType.NEW),
        ("m1", ExecType.TRADE),
        ("l1", ExecType.NEW),
        ("l1", ExecType.CANCELED),
    ]


def test_market_buy_takes_the_ask_of_the_last_quote_with_the_taker_fee(
    ticks: list[Message],
) -> None:
    a = len(ticks) // 4
    q = last_quote(ticks[:a])
    assert q.ask_size >= D("0.01"), "the sample must show enough size for this test"
    out = run([*ticks[:a], submit("m1", Side.BUY, "0.01"), *ticks[a:]])
    trade = [r for r in reports(out) if r.exec_type is ExecType.TRADE]
    assert len(trade) == 1
    t = trade[0]
    assert (t.last_px, t.last_qty, t.side) == (q.ask_price, D("0.01"), Side.BUY)
    assert t.fee == (D("0.01") * q.ask_price / 1000).quantize(D("0.00000001"))
    assert t.fee_currency == "USDT" and t.venue_order_id == "alice:m1"
    assert t.exec_id.startswith(ETH)
    assert out[1].headers == {"T26-Order-Id": "alice:m1", "Nats-Msg-Id": f"SIM:{t.exec_id}"}


def test_replace_into_the_market_fills_at_the_ask(ticks: list[Message]) -> None:
    a, b = len(ticks) // 3, len(ticks) // 2
    q = last_quote(ticks[:b])
    replace = ReplaceOrder(account_id="bob", client_order_id="r1", price=q.ask_price + 50)
    msgs = [
        *ticks[:a],
        submit("r1", Side.BUY, "0.001", "1000.00", account="bob"),
        *ticks[a:b],
        command(replace, "bob:r1"),
        *ticks[b : b + 1],
    ]
    got = [(r.exec_type, r.last_px) for r in reports(run(msgs))]
    assert got[:2] == [(ExecType.NEW, None), (ExecType.REPLACED, None)]
    assert got[2] == (ExecType.TRADE, q.ask_price)


def test_bad_input_is_dead_lettered_with_its_bytes_and_accounting_balances(
    ticks: list[Message],
) -> None:
    good = submit("g1", Side.BUY, "0.01")
    no_header = Message("venue.commands.SIM", good.data, 0, None)
    garbage = Message("venue.commands.SIM", b"{not json", 0, {"T26-Order-Id": "x"})
    negative = Message(
        "venue.commands.SIM",
        good.data.replace(b'"0.01"', b'"NaN"').replace(b'"g1"', b'"g2"'),
        0,
        {"T26-Order-Id": "alice:g2"},
    )
    unknown_tick = Message(
        "md.ticks.ZZZ.BINANCE",
        ENC.encode(Quote("ZZZ.BINANCE", D(1), D(1), D(2), D(1), 1, 5, 5)),
        0,
    )
    wrong_subject = Message("venue.other", good.data, 0, {"T26-Order-Id": "x"})
    huge = Message("venue.commands.SIM", b"x" * 70_000, 0, {"T26-Order-Id": "x"})
    bad = [no_header, garbage, unknown_tick, wrong_subject, huge]
    a = len(ticks) // 2
    msgs = [*ticks[:a], good, good, negative, *bad, *ticks[a : a + 50]]
    acct = Accounting()
    out = run(msgs, acct)
    dead = [msgspec.json.decode(o.data) for o in out if o.subject == "dlq.venue"]
    assert sorted(d["reason"] for d in dead) == sorted(
        [
            "MISSING_ORDER_ID",
            "UNDECODABLE_COMMAND",
            "UNKNOWN_INSTRUMENT",
            "UNEXPECTED_SUBJECT",
            "OVERSIZED",
        ]
    )
    assert {base64.b64decode(d["payload"]) for d in dead} == {m.data for m in bad}
    rep = reports(out)
    # the re-sent submit is a duplicate: one NEW for g1, not two, and no reject
    assert [(r.client_order_id, r.exec_type) for r in rep if r.client_order_id == "g1"][:2] == [
        ("g1", ExecType.NEW),
        ("g1", ExecType.TRADE),
    ]
    assert sum(r.client_order_id == "g1" and r.exec_type is ExecType.NEW for r in rep) == 1
    # a NaN quantity is the venue's to refuse: a REJECTED report, not a crash
    g2 = [r for r in rep if r.client_order_id == "g2"]
    assert [(r.exec_type, r.reason) for r in g2] == [(ExecType.REJECTED, "INVALID_QUANTITY")]
    c = acct.stage("venue")
    assert c.records_in == len(msgs)
    assert c.dead_lettered == 5 and c.duplicates == 1 and c.balanced


def test_cancel_for_an_unknown_order_is_answered_not_dropped() -> None:
    cancel = CancelOrder(account_id="alice", client_order_id="ghost", ts_submit=7)
    acct = Accounting()
    out = run([command(cancel, "alice:ghost")], acct)
    (rep,) = reports(out)
    assert (rep.exec_type, rep.reason, rep.venue_order_id) == (
        ExecType.CANCEL_REJECTED,
        "UNKNOWN_ORDER",
        "alice:ghost",
    )
    assert acct.stage("venue").balanced and acct.stage("venue").out == 1


def test_production_flow_through_a_real_nats_server(nats_server, ticks: list[Message]) -> None:  # type: ignore[no-untyped-def]
    config = NatsConfig(servers=(nats_server.url,))
    acct = Accounting()
    flow, source = build_production(
        RunContext(nats=config, accounting=acct, idle_timeout_s=1.5), CONFIG
    )
    thread = threading.Thread(target=run_main, args=(flow,), daemon=True)
    thread.start()
    loop = NatsLoop.acquire()
    got: list[ExecutionReport] = []
    try:
        nc = loop.connect(config)

        async def collect(msg) -> None:  # type: ignore[no-untyped-def]
            got.append(REPORTS.decode(msg.data))

        async def go() -> None:
            await nc.subscribe("exec.reports.SIM", cb=collect)
            await nc.flush()

        loop.run(go())
        deadline = time.monotonic() + 20
        while len(source.stats) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        head = ticks[:200]
        order = submit("n1", Side.BUY, "0.01")

        async def publish(msgs: list[Message]) -> None:
            for m in msgs:
                await nc.publish(m.subject, m.data, headers=m.headers)
            await nc.flush()

        # Ticks and commands come through separate subscriptions: the venue executes a
        # command against the ticks it has taken by then, so let it take them first.
        loop.run(publish(head))
        while acct.stage("venue").records_in < len(head) and time.monotonic() < deadline:
            time.sleep(0.01)
        loop.run(publish([order]))
        while acct.stage("venue").records_in < len(head) + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        loop.run(publish(ticks[200:210]))
        thread.join(timeout=30)
        assert not thread.is_alive(), "the venue flow did not stop after its idle timeout"
        loop.run(nc.flush())
        loop.run(nc.close())
    finally:
        NatsLoop.release(loop)
    assert [r.exec_type for r in got] == [ExecType.NEW, ExecType.TRADE]
    assert got[1].last_px == last_quote(head).ask_price
    c = acct.stage("venue")
    assert c.records_in == 211 and c.balanced
