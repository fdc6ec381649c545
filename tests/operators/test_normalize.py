"""The normalizer on hand-written venue messages: every bad input becomes a reasoned dead letter."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from operators.normalize import (
    NormalizeConfig,
    Problem,
    Reason,
    TickDecoder,
    TickSequencer,
)
from schemas.canonical import BookDelta, DeadLetter, Quote, TradeTick
from schemas.common import Aggressor
from schemas.instruments import load_instruments
from schemas.transport import Message

RECV = 1_723_161_254_087_896_568  # a receive time from the sample capture
TRADE = {
    "e": "trade",
    "E": 1723161255343,
    "s": "BTCUSDT",
    "t": 3735683259,
    "p": "61837.63000000",
    "q": "0.02000000",
    "T": 1723161255342,
    "m": True,
    "M": True,
}
BOOK = {
    "u": 50093239212,
    "s": "BTCUSDT",
    "b": "61837.63000000",
    "B": "3.78826000",
    "a": "61837.64000000",
    "A": "1.54698000",
}
DEPTH = {
    "e": "depthUpdate",
    "E": 1723161255308,
    "s": "BTCUSDT",
    "U": 50093239203,
    "u": 50093239207,
    "b": [["55653.87000000", "0.00000000"]],
    "a": [["61838.04000000", "0.32332000"]],
}


def env(stream: str, data: object) -> bytes:
    return json.dumps({"stream": stream, "data": data}, separators=(",", ":")).encode()


def msg(data: bytes, subject: str = "md.raw.binance.btcusdt", ts: int = RECV) -> Message:
    return Message(subject, data, ts)


@pytest.fixture(scope="module")
def decoder() -> TickDecoder:
    return TickDecoder(load_instruments())


def test_trade_maps_exactly(decoder: TickDecoder) -> None:
    tick = decoder.decode(msg(env("btcusdt@trade", TRADE)))
    assert tick == TradeTick(
        instrument_id="BTCUSDT.BINANCE",
        price=Decimal("61837.63"),
        size=Decimal("0.02"),
        aggressor=Aggressor.SELL,  # buyer was maker, so the seller took liquidity
        trade_id="3735683259",
        ts_event=1_723_161_255_342_000_000,
        ts_recv=RECV,
    )


def test_book_ticker_uses_receive_time_when_spot_has_no_event_time(decoder: TickDecoder) -> None:
    q = decoder.decode(msg(env("btcusdt@bookTicker", BOOK)))
    assert isinstance(q, Quote)
    assert (q.bid_price, q.ask_size, q.update_id) == (
        Decimal("61837.63"),
        Decimal("1.54698"),
        50093239212,
    )
    assert q.ts_event == RECV


def test_depth_update_keeps_zero_size_levels(decoder: TickDecoder) -> None:
    d = decoder.decode(msg(env("btcusdt@depth@100ms", DEPTH)))
    assert isinstance(d, BookDelta)
    assert d.bids[0].size == 0 and d.asks[0].price == Decimal("61838.04")
    assert (d.first_update_id, d.last_update_id, d.is_snapshot) == (50093239203, 50093239207, False)


def test_rest_snapshot_takes_symbol_from_subject(decoder: TickDecoder) -> None:
    raw = b'{"lastUpdateId":42,"bids":[["100.0","1"]],"asks":[["101.0","2"]]}'
    d = decoder.decode(msg(raw, subject="md.raw.binance.ethusdt"))
    assert isinstance(d, BookDelta) and d.is_snapshot
    assert d.instrument_id == "ETHUSDT.BINANCE" and d.last_update_id == 42


def test_futures_map_to_perp_instruments(decoder: TickDecoder) -> None:
    fut = dict(TRADE, X="MARKET")
    del fut["M"]
    tick = decoder.decode(msg(env("btcusdt@trade", fut), subject="md.raw.binance-usdm.btcusdt"))
    assert isinstance(tick, TradeTick) and tick.instrument_id == "BTCUSDT-PERP.BINANCE"


def test_coinbase_match_and_ticker(decoder: TickDecoder) -> None:
    match = {
        "type": "match",
        "trade_id": 10,
        "sequence": 50,
        "maker_order_id": "a",
        "taker_order_id": "b",
        "time": "2024-08-08T23:54:13.123456Z",
        "product_id": "BTC-USD",
        "size": "0.5",
        "price": "61000.01",
        "side": "sell",
    }
    t = decoder.decode(msg(json.dumps(match).encode(), subject="md.raw.coinbase.btc-usd"))
    assert isinstance(t, TradeTick)
    assert t.aggressor is Aggressor.BUY  # the maker sold
    assert t.ts_event == 1_723_161_253_123_456_000
    ticker = {
        "type": "ticker",
        "sequence": 51,
        "product_id": "ETH-USD",
        "price": "2500",
        "best_bid": "2499.99",
        "best_ask": "2500.01",
        "best_bid_size": "1",
        "best_ask_size": "2",
        "time": "2024-08-08T23:54:13Z",
    }
    q = decoder.decode(msg(json.dumps(ticker).encode(), subject="md.raw.coinbase.eth-usd"))
    assert isinstance(q, Quote) and q.instrument_id == "ETH-USD.COINBASE"


BAD = [
    ("invalid json", b'{"stream": "btcusdt@trade", "data": {', Reason.INVALID_JSON),
    ("not an object", b"[1, 2, 3]", Reason.NOT_AN_OBJECT),
    ("bare number", b"42", Reason.NOT_AN_OBJECT),
    ("empty", b"", Reason.INVALID_JSON),
    ("unknown stream", env("btcusdt@kline_1m", {"e": "kline"}), Reason.UNKNOWN_STREAM),
    ("unknown symbol", env("zzzusdt@trade", dict(TRADE, s="ZZZUSDT")), Reason.UNKNOWN_SYMBOL),
    ("negative price", env("btcusdt@trade", dict(TRADE, p="-1")), Reason.INVALID_PRICE),
    ("zero price", env("btcusdt@trade", dict(TRADE, p="0.0")), Reason.INVALID_PRICE),
    ("text price", env("btcusdt@trade", dict(TRADE, p="abc")), Reason.SCHEMA_MISMATCH),
    ("zero qty", env("btcusdt@trade", dict(TRADE, q="0")), Reason.INVALID_QUANTITY),
    ("negative qty", env("btcusdt@trade", dict(TRADE, q="-0.1")), Reason.INVALID_QUANTITY),
    ("NaN price", env("btcusdt@trade", dict(TRADE, p="NaN")), Reason.NON_FINITE),
    ("Infinity qty", env("btcusdt@trade", dict(TRADE, q="Infinity")), Reason.NON_FINITE),
    ("NaN literal", b'{"stream":"btcusdt@trade","data":{"p":NaN}}', Reason.INVALID_JSON),
    (
        "missing field",
        env("btcusdt@trade", {k: v for k, v in TRADE.items() if k != "t"}),
        Reason.SCHEMA_MISMATCH,
    ),
    ("crossed quote", env("btcusdt@bookTicker", dict(BOOK, b="62000")), Reason.CROSSED_QUOTE),
    (
        "negative level size",
        env("btcusdt@depth", dict(DEPTH, b=[["1", "-1"]])),
        Reason.INVALID_QUANTITY,
    ),
    (
        "future timestamp",
        env("btcusdt@trade", dict(TRADE, T=TRADE["T"] + 3_600_000)),
        Reason.TIMESTAMP_IN_FUTURE,
    ),
    ("unknown venue", None, Reason.UNKNOWN_VENUE),
]


@pytest.mark.parametrize(("case", "data", "reason"), BAD, ids=[c for c, _, _ in BAD])
def test_bad_input_is_dead_lettered_with_reason_and_bytes(
    decoder: TickDecoder, case: str, data: bytes | None, reason: str
) -> None:
    subject = "md.raw.binance.btcusdt"
    if data is None:
        data, subject = env("btcusdt@trade", TRADE), "md.raw.kraken.btcusdt"
    out = decoder.decode(msg(data, subject=subject))
    assert isinstance(out, DeadLetter), case
    assert out.reason == reason, out.detail
    assert out.payload == data and out.stage == "normalize" and out.subject == subject


def test_oversized_message_is_dead_lettered() -> None:
    small = TickDecoder(load_instruments(), NormalizeConfig(max_message_bytes=100))
    data = env("btcusdt@trade", TRADE)
    out = small.decode(msg(data))
    assert isinstance(out, DeadLetter) and out.reason == Reason.OVERSIZED
    assert out.payload == data


def trade(tid: int) -> TradeTick:
    return TradeTick("BTCUSDT.BINANCE", Decimal(1), Decimal(1), Aggressor.BUY, str(tid), 1, 1)


def depth(first: int, last: int) -> BookDelta:
    return BookDelta("BTCUSDT.BINANCE", [], [], first, last, False, 1, 1)


def test_sequencer_drops_duplicates_and_reports_out_of_order() -> None:
    seq = TickSequencer("BTCUSDT.BINANCE", NormalizeConfig())
    verdicts = [seq.on_tick(trade(t)) for t in (1, 2, 3, 2, 5, 4, 4)]
    emitted = [ok for ok, _ in verdicts]
    assert emitted == [True, True, True, False, True, True, False]
    problems = [r.problem for _, r in verdicts if r is not None]
    assert problems == [Problem.OUT_OF_ORDER]  # 4 after 5; trade ids 4 never seen before
    assert (seq.ticks_in, seq.ticks_out, seq.duplicates) == (7, 5, 2)


def test_sequencer_reports_depth_gaps_and_rebases_on_snapshot() -> None:
    seq = TickSequencer("BTCUSDT.BINANCE", NormalizeConfig())
    assert seq.on_tick(depth(10, 12)) == (True, None)
    assert seq.on_tick(depth(13, 15)) == (True, None)
    ok, gap = seq.on_tick(depth(20, 22))
    assert ok and gap is not None and gap.problem == Problem.SEQUENCE_GAP
    assert (gap.expected, gap.received) == (16, 20)
    assert seq.on_tick(depth(20, 22)) == (False, None)  # the same update twice
    snap = BookDelta("BTCUSDT.BINANCE", [], [], 100, 100, True, 1, 1)
    assert seq.on_tick(snap) == (True, None)
    assert seq.on_tick(depth(95, 101)) == (True, None)  # straddles the snapshot id: valid
    assert seq.gaps == 1


def test_sequencer_state_round_trips_through_snapshot() -> None:
    cfg = NormalizeConfig()
    seq = TickSequencer("BTCUSDT.BINANCE", cfg)
    for t in (1, 2, 3):
        seq.on_tick(trade(t))
    restored = TickSequencer("BTCUSDT.BINANCE", cfg, seq.snapshot())
    assert restored.on_tick(trade(2)) == (False, None)
    assert restored.on_tick(trade(4)) == (True, None)
    assert restored.ticks_in == 5


def test_dedupe_window_is_bounded() -> None:
    seq = TickSequencer("X", NormalizeConfig(dedupe_window=3))
    for t in range(1, 11):
        seq.on_tick(trade(t))
    assert len(seq.snapshot().trades_recent) == 3
    assert seq.on_tick(trade(10)) == (False, None)
