"""The portfolio flow: hand-built fills and quotes, snapshots checked against hand-worked P&L."""

from __future__ import annotations

import base64
from decimal import Decimal as D

import msgspec
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.portfolio import build_flow
from operators.portfolio import AccountPnl
from schemas.canonical import Fill, Position, Quote
from schemas.common import Liquidity, Side
from schemas.transport import Message, Outgoing
from trade2026.accounting import Accounting

BTC, ETH = "BTCUSDT.BINANCE", "ETHUSDT.BINANCE"
S = 1_000_000_000
ENC = msgspec.json.Encoder()


def quote(ts: int, bid: str, ask: str, inst: str = BTC) -> Message:
    q = Quote(inst, D(bid), D("1"), D(ask), D("1"), 0, ts, ts)
    return Message(f"md.ticks.{inst}", ENC.encode(q), 0)


def fill(exec_id: str, account: str, side: Side, qty: str, px: str, fee: str, ts: int) -> Message:
    f = Fill(
        exec_id=exec_id,
        order_id=f"{account}:{exec_id}",
        client_order_id=exec_id,
        account_id=account,
        instrument_id=BTC,
        side=side,
        quantity=D(qty),
        price=D(px),
        fee=D(fee),
        fee_currency="USDT",
        liquidity=Liquidity.TAKER,
        ts_event=ts,
    )
    return Message(f"fills.{account}", ENC.encode(f), 0)


def snapshots(out: list[Outgoing]) -> dict[tuple[str, int], Position | AccountPnl]:
    got: dict[tuple[str, int], Position | AccountPnl] = {}
    for o in out:
        if o.subject.startswith("positions."):
            p = msgspec.json.decode(o.data, type=Position)
            got[(f"{p.account_id}/{p.instrument_id}", p.ts_event)] = p
        elif o.subject.startswith("pnl."):
            t = msgspec.json.decode(o.data, type=AccountPnl)
            got[(f"{t.account_id}/pnl", t.ts_event)] = t
            assert o.subject == f"pnl.{t.account_id}"
    return got


def test_positions_and_pnl_snapshots_match_hand_computed_values() -> None:
    first_alice = fill("a1", "alice", Side.BUY, "2", "100", "0.2", S * 6 // 10)
    bad_price = fill("a9", "alice", Side.BUY, "1", "0", "0", S * 16 // 10)
    garbage = Message("fills.alice", b'{"kind":"fill","exec_id":', 0)
    msgs = [
        quote(S // 2, "100", "102"),  # mid 101
        first_alice,
        fill("b1", "bob", Side.BUY, "1", "101", "0.1", S * 7 // 10),
        quote(S * 12 // 10, "110", "112"),  # mid 111; crosses 1 s
        fill("a2", "alice", Side.SELL, "3", "120", "0.36", S * 15 // 10),  # flips short 1
        first_alice,  # redelivered
        bad_price,
        garbage,
        quote(S * 16 // 10, "900", "902", inst=ETH),  # nobody holds ETH
        quote(S * 19 // 10, "112", "114"),  # mid 113, the last before 2 s
        quote(S * 23 // 10, "114", "116"),  # mid 115; crosses 2 s
        quote(S * 31 // 10, "116", "118"),  # crosses 3 s
    ]
    out: list[Outgoing] = []
    acct = Accounting()
    run_main(build_flow(TestingSource(msgs, batch_size=4), TestingSink(out), accounting=acct))
    got = snapshots(out)

    # at 1 s: alice long 2 @ 100 marked at 101; bob long 1 @ 101 marked at 101
    a1 = got[("alice/BTCUSDT.BINANCE", S)]
    assert isinstance(a1, Position)
    assert (a1.quantity, a1.avg_open_price, a1.mark_price) == (D(2), D(100), D(101))
    assert (a1.unrealized_pnl, a1.realized_pnl, a1.fees) == (D(2), D(0), D("0.2"))
    b1 = got[("bob/BTCUSDT.BINANCE", S)]
    assert isinstance(b1, Position) and b1.unrealized_pnl == 0 and b1.fees == D("0.1")

    # at 2 s: alice sold 3 @ 120: realized 2 * (120 - 100) = 40, short 1 @ 120, mark 113
    a2 = got[("alice/BTCUSDT.BINANCE", 2 * S)]
    assert isinstance(a2, Position)
    assert (a2.quantity, a2.avg_open_price, a2.mark_price) == (D(-1), D(120), D(113))
    assert (a2.realized_pnl, a2.unrealized_pnl, a2.fees) == (D(40), D(7), D("0.56"))
    t2 = got[("alice/pnl", 2 * S)]
    assert isinstance(t2, AccountPnl)
    assert (t2.net_pnl, t2.gross_exposure, t2.open_positions) == (D("46.44"), D(113), 1)
    b2 = got[("bob/BTCUSDT.BINANCE", 2 * S)]
    assert isinstance(b2, Position) and b2.unrealized_pnl == D(12)

    # at 3 s: marked at 115
    a3 = got[("alice/BTCUSDT.BINANCE", 3 * S)]
    assert isinstance(a3, Position) and a3.unrealized_pnl == D(5)
    assert not any(k[0].endswith(ETH) for k in got)
    assert {o.subject for o in out} == {
        "positions.alice",
        "positions.bob",
        "pnl.alice",
        "pnl.bob",
        "dlq.portfolio",
    }

    dead = [msgspec.json.decode(o.data) for o in out if o.subject == "dlq.portfolio"]
    assert sorted(d["reason"] for d in dead) == ["INVALID_PRICE", "UNDECODABLE_FILL"]
    assert {base64.b64decode(d["payload"]) for d in dead} == {bad_price.data, garbage.data}
    c = acct.stage("portfolio")
    assert (c.records_in, c.duplicates, c.dead_lettered) == (len(msgs), 1, 2)
    assert c.balanced


def test_snapshots_do_not_depend_on_batching() -> None:
    msgs = [
        quote(S // 2, "100", "102"),
        fill("a1", "alice", Side.BUY, "2", "100", "0.2", S * 6 // 10),
        *[quote(S + i * S // 10, str(100 + i), str(102 + i)) for i in range(30)],
        fill("a2", "alice", Side.SELL, "1", "105", "0.1", S * 25 // 10),
        quote(5 * S, "99", "101"),
    ]
    runs = []
    for batch_size in (1, 7, 100):
        out: list[Outgoing] = []
        run_main(build_flow(TestingSource(msgs, batch_size=batch_size), TestingSink(out)))
        runs.append([(o.subject, o.data) for o in out])
    assert runs[0] == runs[1] == runs[2]
    # the 5 s quote crosses 4 s and 5 s: one snapshot, stamped 5 s, marked with the last
    # quote before it (3.9 s: bid 129, ask 131, mid 130); the late fill sold 1 at 105
    pos = snapshots(out)[("alice/BTCUSDT.BINANCE", 5 * S)]
    assert isinstance(pos, Position)
    assert (pos.quantity, pos.mark_price, pos.realized_pnl) == (D(1), D(130), D(5))
