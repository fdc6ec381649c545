"""The batch path of the tick sink: raw bytes -> checked arrow chunks -> Delta.

The per-record path (:func:`flows.ticks_sink.check_message`, the canonical decoder and
:func:`sinks.delta.tick_misfit`) and the per-record quality rule are the references:
the batch path must accept, refuse and name exactly what they do.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.ticks_sink import _Batcher, build_flow, check_message
from operators.quality.rules import RulesConfig, build_rule
from schemas.canonical import BookDelta, BookLevel, DeadLetter, Quote, Tick, TradeTick
from schemas.common import Aggressor
from schemas.transport import Message, Outgoing
from sinks.delta import (
    DeltaTicksConfig,
    DeltaTickSink,
    Stamped,
    TickRules,
    TickTableWriter,
    decode_ticks,
    table_uri,
)
from trade2026.accounting import DEAD_LETTERED, IN, Accounting

T0 = 1_700_000_000 * 10**9
SUBJECT = "md.ticks.BTCUSDT.BINANCE"


def raw_trade(**fields: object) -> bytes:
    body: dict[str, object] = {
        "kind": "trade",
        "instrument_id": "BTCUSDT.BINANCE",
        "price": "65000.5",
        "size": "0.01",
        "aggressor": "BUY",
        "trade_id": "1",
        "ts_event": T0,
        "ts_recv": T0 + 5,
    }
    body.update(fields)
    return msgspec.json.encode(body)


def raw_quote(**fields: object) -> bytes:
    body: dict[str, object] = {
        "kind": "quote",
        "instrument_id": "ETHUSDT.BINANCE",
        "bid_price": "3000.01",
        "bid_size": "1.5",
        "ask_price": "3000.02",
        "ask_size": "2",
        "update_id": 7,
        "ts_event": T0,
        "ts_recv": T0 + 5,
    }
    body.update(fields)
    return msgspec.json.encode(body)


def raw_book(**fields: object) -> bytes:
    body: dict[str, object] = {
        "kind": "book_delta",
        "instrument_id": "BTCUSDT.BINANCE",
        "bids": [["64999.99", "0"]],
        "asks": [["65000.01", "1.25"], ["65000.02", "3"]],
        "first_update_id": 10,
        "last_update_id": 12,
        "is_snapshot": False,
        "ts_event": T0,
        "ts_recv": T0 + 5,
    }
    body.update(fields)
    return msgspec.json.encode(body)


#: (payload, expected outcome): None = stored, else the dead-letter reason.
CASES: list[tuple[bytes, str | None]] = [
    (raw_trade(), None),
    (raw_quote(), None),
    (raw_book(), None),
    (raw_trade(price=65000.5), None),  # a JSON number: the canonical decoder takes it
    (raw_trade(size=" 0.01 "), None),  # Decimal() strips blanks; arrow alone would not
    (raw_trade(size="1_000"), None),
    (raw_trade(price="1." + "0" * 40), None),  # trailing zeros beyond 38 digits
    (raw_trade(price="99999999999999999999.000000000000000001"), None),
    (raw_trade(price="1.0000000000000000001"), "SCHEMA_MISMATCH"),
    (raw_trade(price="1e25"), "SCHEMA_MISMATCH"),
    (raw_trade(price="NaN"), "SCHEMA_MISMATCH"),
    (raw_trade(price="abc"), "DECODE_ERROR"),
    (raw_trade(price="1e-30", size="abc"), "DECODE_ERROR"),  # undecodable beats misfit
    (raw_trade(ts_event=2**63), "SCHEMA_MISMATCH"),
    (raw_trade(ts_event=-1), "DECODE_ERROR"),
    (raw_trade(instrument_id=""), "SCHEMA_MISMATCH"),
    (raw_trade(aggressor="NOBODY"), "DECODE_ERROR"),
    (raw_quote(update_id=2**64), "SCHEMA_MISMATCH"),
    (raw_book(asks=[["65000.01", "1.25"], ["1.0000000000000000001", "3"]]), "SCHEMA_MISMATCH"),
    (raw_book(bids=[["1", "2", "3"]]), None),  # array-like levels ignore trailing items
    (raw_book(bids=[["1"]]), "DECODE_ERROR"),
    (raw_trade(kind="bar"), "DECODE_ERROR"),
    (b"{not json", "DECODE_ERROR"),
    (b"", "DECODE_ERROR"),
]


def messages(payloads: list[bytes]) -> list[Message]:
    return [Message(SUBJECT, p, T0 + 9, seq=i + 1) for i, p in enumerate(payloads)]


def outcomes(payloads: list[bytes], rules: TickRules | None = None) -> dict[int, str | None]:
    """Per message (by seq): None when it became a row, else its dead letter's reason."""
    batch = messages(payloads)
    got = decode_ticks(batch, rules)
    out: dict[int, str | None] = {}
    for _, table in got.chunks:
        for seq in table.column("seq").to_pylist():
            out[seq] = None
    by_bytes = {m.data: m.seq or 0 for m in batch}
    for d in got.dead:
        assert d.stage == "ticks_sink" and d.subject == SUBJECT and d.ts_recv == T0 + 9
        seq = by_bytes[d.payload]  # the dead letter carries the original bytes
        assert seq not in out
        out[seq] = d.reason
    assert sorted(out) == [m.seq for m in batch], "a message was lost or counted twice"
    ins = sum(n for (_, what), n in got.counts.items() if what == IN)
    dead = sum(n for (_, what), n in got.counts.items() if what == DEAD_LETTERED)
    assert (ins, dead) == (len(batch), len(got.dead))
    return out


def test_batch_path_judges_every_record_like_the_per_record_path() -> None:
    payloads = [p for p, _ in CASES]
    got = outcomes(payloads)
    assert [got[i + 1] for i in range(len(CASES))] == [want for _, want in CASES]
    for i, p in enumerate(payloads):  # and the reference agrees with the expectations
        ref = check_message(Message(SUBJECT, p, 0, seq=i + 1))
        assert (ref.reason if isinstance(ref, DeadLetter) else None) == CASES[i][1], p


def test_one_bad_record_does_not_change_how_the_others_are_judged() -> None:
    for payload, want in CASES:
        got = outcomes([raw_trade(), payload, raw_quote()])
        assert got == {1: None, 2: want, 3: None}, payload


def test_stored_values_are_exact(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    w = TickTableWriter(DeltaTicksConfig(root=str(tmp_path)))
    got = decode_ticks(
        messages(
            [
                raw_trade(price="99999999999999999999.000000000000000001", size="1_000"),
                raw_trade(price=65000.5, size="1." + "0" * 40),
                raw_book(),
            ]
        )
    )
    assert not got.dead
    w.write_tables(got.chunks)
    trades = DeltaTable(table_uri(str(tmp_path), "trade")).to_pyarrow_table().to_pylist()
    assert [(r["price"], r["size"]) for r in trades] == [
        (Decimal("99999999999999999999.000000000000000001"), Decimal(1000)),
        (Decimal("65000.5"), Decimal(1)),
    ]
    assert [str(r["date"]) for r in trades] == ["2023-11-14", "2023-11-14"]
    (book,) = DeltaTable(table_uri(str(tmp_path), "book_delta")).to_pyarrow_table().to_pylist()
    assert [(lv["price"], lv["size"]) for lv in book["asks"]] == [
        (Decimal("65000.01"), Decimal("1.25")),
        (Decimal("65000.02"), Decimal(3)),
    ]
    assert book["bids"] == [{"price": Decimal("64999.99"), "size": Decimal(0)}]


FUTURE = T0 + 10 * 10**9
#: (payload, the reason the ticks rule gives, hand-written)
GATE_CASES: list[tuple[bytes, str | None]] = [
    (raw_trade(), None),
    (raw_trade(price="0"), "INVALID_PRICE"),
    (raw_trade(size="-1"), "INVALID_QUANTITY"),
    (raw_trade(price="0", ts_event=0), "INVALID_PRICE"),  # the rule's order: price first
    (raw_trade(ts_event=0), "INVALID_TIMESTAMP"),
    (raw_trade(ts_event=FUTURE), "TIMESTAMP_IN_FUTURE"),
    (raw_trade(trade_id=""), "MISSING_ID"),
    (raw_trade(instrument_id="XRPUSDT.BINANCE"), "UNKNOWN_INSTRUMENT"),
    (raw_quote(), None),
    (raw_quote(bid_price="3000.03"), "CROSSED_QUOTE"),
    (raw_quote(bid_price="3000.02"), "LOCKED_QUOTE"),
    (raw_quote(ask_size="-2"), "INVALID_QUANTITY"),
    (raw_quote(bid_size="0"), None),
    (raw_quote(update_id=-1), "INVALID_SEQUENCE"),
    (raw_quote(ask_price="0"), "INVALID_PRICE"),
    (raw_book(), None),
    (raw_book(last_update_id=9), "INVALID_SEQUENCE"),
    (raw_book(asks=[["65000.01", "1"], ["0", "-1"]]), "INVALID_PRICE"),
    (raw_book(bids=[["1", "-1"]], asks=[["0", "1"]]), "INVALID_QUANTITY"),  # bids first
    (raw_book(ts_recv=0, bids=[["0", "1"]]), "INVALID_TIMESTAMP"),
    (raw_trade(price="1.0000000000000000001"), "SCHEMA_MISMATCH"),  # fit before quality
]
KNOWN = {"BTCUSDT.BINANCE", "ETHUSDT.BINANCE"}


def test_quality_gate_names_what_the_ticks_rule_names() -> None:
    rules = TickRules(RulesConfig(check_order=False), KNOWN)
    payloads = [p for p, _ in GATE_CASES]
    got = outcomes(payloads, rules)
    assert [got[i + 1] for i in range(len(GATE_CASES))] == [want for _, want in GATE_CASES]
    rule = build_rule("ticks", KNOWN, RulesConfig(check_order=False))
    decode = msgspec.json.Decoder(Tick).decode
    for payload, want in GATE_CASES:
        if want == "SCHEMA_MISMATCH":
            continue
        assert rule.check(decode(payload)) == want, payload


def test_quality_gate_judges_each_record_in_a_mixed_batch() -> None:
    rules = TickRules(RulesConfig(check_order=False), KNOWN)
    for payload, want in GATE_CASES:
        got = outcomes([raw_trade(), payload, raw_quote(), raw_book()], rules)
        assert got == {1: None, 2: want, 3: None, 4: None}, payload


def test_locked_quotes_pass_where_the_venue_locks() -> None:
    rules = TickRules(RulesConfig(check_order=False, allow_locked_quotes=True), None)
    assert outcomes([raw_quote(bid_price="3000.02")], rules) == {1: None}


@pytest.mark.parametrize("small_batch", [0, 1000], ids=["columns", "records"])
def test_flow_gate_dead_letters_balance(tmp_path: Path, small_batch: int) -> None:
    from deltalake import DeltaTable

    payloads = [raw_trade(trade_id=str(i)) for i in range(20)] + [
        raw_trade(price="0"),
        raw_quote(bid_price="3000.03"),
        raw_trade(instrument_id="XRPUSDT.BINANCE"),
    ]
    acc = Accounting()
    dlq: list[Outgoing] = []
    flow = build_flow(
        DeltaTicksConfig(root=str(tmp_path), batch_rows=7, batch_ms=50),
        source=TestingSource(messages(payloads), batch_size=5),
        dlq_sink=TestingSink(dlq),
        accounting=acc,
        instruments=KNOWN,
        small_batch=small_batch,
    )
    run_main(flow)
    dead = [msgspec.json.decode(o.data, type=DeadLetter) for o in dlq]
    assert sorted(d.reason for d in dead) == [
        "CROSSED_QUOTE",
        "INVALID_PRICE",
        "UNKNOWN_INSTRUMENT",
    ]
    assert {d.payload for d in dead} == set(payloads[20:])
    assert DeltaTable(table_uri(str(tmp_path), "trade")).to_pyarrow_table().num_rows == 20
    count = acc.stage("ticks_sink")
    assert (count.records_in, count.out, count.dead_lettered) == (23, 20, 3)
    assert count.balanced


@pytest.mark.parametrize("small_batch", [0, 1000], ids=["columns", "records"])
def test_gate_can_be_turned_off(tmp_path: Path, small_batch: int) -> None:
    acc = Accounting()
    flow = build_flow(
        DeltaTicksConfig(root=str(tmp_path), batch_rows=7, batch_ms=50),
        source=TestingSource(messages([raw_trade(price="0")])),
        dlq_sink=TestingSink([]),
        accounting=acc,
        rules=None,
        small_batch=small_batch,
    )
    run_main(flow)
    assert acc.stage("ticks_sink").out == 1


def stamped_trade(origin: str, seq: int | None, i: int) -> Stamped:
    t = T0 + i
    return Stamped(
        origin,
        seq,
        TradeTick("BTCUSDT.BINANCE", Decimal(1), Decimal(1), Aggressor.BUY, str(i), t, t),
    )


def test_duplicates_within_a_batch_and_against_the_table(tmp_path: Path) -> None:
    acc = Accounting()
    w = TickTableWriter(DeltaTicksConfig(root=str(tmp_path)), accounting=acc)
    a, b = "md.ticks.A", "md.ticks.B"
    order = [(a, 1), (b, 5), (a, 2), (a, 2), (b, None), (a, 1), (b, 4), (a, 3), (b, 6), (b, None)]
    res = w.write([stamped_trade(o, s, i) for i, (o, s) in enumerate(order)])
    assert res.written == {"trade": 7} and res.duplicates == 3
    res = w.write([stamped_trade(a, 3, 20), stamped_trade(a, 4, 21), stamped_trade(b, 6, 22)])
    assert res.written == {"trade": 1} and res.duplicates == 2
    reopened = TickTableWriter(DeltaTicksConfig(root=str(tmp_path)))
    assert (reopened.committed_version("trade", a), reopened.committed_version("trade", b)) == (
        4,
        6,
    )
    from deltalake import DeltaTable

    rows = DeltaTable(table_uri(str(tmp_path), "trade")).to_pyarrow_table().to_pylist()
    assert sorted((r["origin"], r["seq"] or 0) for r in rows) == sorted(
        [(a, 1), (a, 2), (a, 3), (a, 4), (b, 5), (b, 6), (b, 0), (b, 0)]
    )
    count = acc.stage("ticks_sink")
    assert (count.out, count.duplicates) == (8, 5)


def test_a_snapshot_of_stamped_ticks_still_commits(tmp_path: Path) -> None:
    """State written before the batch path held only ``Stamped`` ticks; it must commit."""
    old_state: list[Any] = [stamped_trade("md.ticks.A", i + 1, i) for i in range(3)]
    batcher = _Batcher(10, timedelta(seconds=1), old_state)
    (emitted,), _ = batcher.on_eof()
    sink = DeltaTickSink(DeltaTicksConfig(root=str(tmp_path)))
    sink.build("delta", 0, 1).write_batch([emitted])
    assert sink.writers[0].committed_version("trade", "md.ticks.A") == 3


@pytest.mark.parametrize("kind", ["trade", "quote", "book_delta"])
def test_empty_and_single_row_batches(kind: str) -> None:
    payload = {"trade": raw_trade, "quote": raw_quote, "book_delta": raw_book}[kind]()
    assert decode_ticks([]).chunks == []
    got = decode_ticks(messages([payload]))
    ((k, table),) = got.chunks
    assert k == kind and table.num_rows == 1


def test_canonical_ticks_survive_the_round_trip(tmp_path: Path) -> None:
    ticks: list[Tick] = [
        TradeTick("X", Decimal("0.000000000000000001"), Decimal(5), Aggressor.SELL, "a", 0, 1),
        Quote("Y", Decimal(1), Decimal(0), Decimal(2), Decimal(0), 0, 3, 3),
        BookDelta("Z", [], [BookLevel(Decimal(7), Decimal(0))], 1, 1, True, 5, 5),
    ]
    got = decode_ticks(messages([msgspec.json.encode(t) for t in ticks]))
    assert not got.dead
    w = TickTableWriter(DeltaTicksConfig(root=str(tmp_path)))
    assert w.write_tables(got.chunks).written == {"trade": 1, "quote": 1, "book_delta": 1}


def test_mixed_chunks_and_ticks_commit_in_arrival_order(tmp_path: Path) -> None:
    """Small source batches arrive as ticks between chunks; none may look like a replay."""
    acc = Accounting()
    origin = "md.ticks.A"

    def chunk(first: int, n: int) -> tuple[str, object]:
        batch = [
            Message(origin, raw_trade(trade_id=str(s)), T0, seq=s) for s in range(first, first + n)
        ]
        ((kind, table),) = decode_ticks(batch).chunks
        return kind, table

    items: list[Any] = [
        chunk(1, 3),
        [stamped_trade(origin, 4, 4), stamped_trade(origin, 5, 5)],
        chunk(6, 2),
        stamped_trade(origin, 8, 8),
    ]
    sink = DeltaTickSink(DeltaTicksConfig(root=str(tmp_path)), accounting=acc)
    sink.build("delta", 0, 1).write_batch([items])
    count = acc.stage("ticks_sink")
    assert (count.out, count.duplicates) == (8, 0)
    assert sink.writers[0].committed_version("trade", origin) == 8
