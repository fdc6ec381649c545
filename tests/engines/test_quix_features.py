"""The feature flow on Quix Streams against a real broker equals the Bytewax flow.

Both engines get the same bytes: recorded Binance ticks as canonical JSON, keyed by
instrument, plus one undecodable message. Kafka has no end of stream, so the input ends
with one closing trade per instrument far in the future: it closes every real window on
both engines. Bytewax also flushes the closers' own windows at EOF; Quix cannot, so those
(and only those) are left out of the comparison.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
from bytewax.testing import TestingSink, TestingSource, run_main

from engines.quix.app import KafkaConfig
from engines.quix.features import KEY_MISMATCH, build_app
from flows.features import FeatureOutputs, build_flow
from operators.features import MINUTE_NS, SECOND_NS, FeatureConfig
from schemas.canonical import DeadLetter, Quote, TradeTick
from schemas.common import Aggressor
from schemas.features import Bar, LateRecord
from schemas.transport import Message
from tests.engines.conftest import Broker, produce, read_topic
from tests.feature_samples import merged_ticks

CLOSE_AHEAD_NS = 10 * MINUTE_NS


def _closers(ticks: list[TradeTick | Quote]) -> tuple[list[TradeTick], int]:
    at = max(t.ts_event for t in ticks) + CLOSE_AHEAD_NS
    insts = sorted({t.instrument_id for t in ticks})
    out = [
        TradeTick(
            instrument_id=i,
            price=Decimal("1"),
            size=Decimal("1"),
            aggressor=Aggressor.BUY,
            trade_id="closer",
            ts_event=at,
            ts_recv=at,
        )
        for i in insts
    ]
    return out, at - at % MINUTE_NS


def _run_bytewax(messages: list[Message], cfg: FeatureConfig):
    bars: list[Bar] = []
    late: list[LateRecord] = []
    dead: list[DeadLetter] = []
    outputs = FeatureOutputs(TestingSink(bars), TestingSink(late), TestingSink(dead))
    run_main(build_flow(TestingSource(messages, batch_size=500), outputs, cfg))
    return bars, late, dead


def _late_key(r: LateRecord) -> tuple:
    # Quix tracks time in ms, so its watermark is ms precise: compare it floored.
    return (r.stage, r.key, r.width_ns, r.ts_event, r.window_start_ns, bytes(r.record))


def test_quix_features_equal_bytewax(kafka_broker: Broker, tmp_path: Path) -> None:
    cfg = FeatureConfig(widths_ns=(SECOND_NS, MINUTE_NS), allowed_lateness_ns=2 * SECOND_NS)
    ticks = merged_ticks(6000)
    # Two deliberately late copies (5 s behind their neighbours, beyond the 2 s allowed).
    for at in (3000, 7000):
        t = ticks[at]
        ticks.insert(at, msgspec.structs.replace(t, ts_event=t.ts_event - 5 * SECOND_NS))
    closers, closed_from = _closers(ticks)
    records = [(t.instrument_id, msgspec.json.encode(t)) for t in [*ticks, *closers]]
    records.insert(100, ("BTCUSDT.BINANCE", b'{"kind":"trade","price":'))
    topic = kafka_broker.unique("ticks")
    names = {n: kafka_broker.unique(n) for n in ("bars", "late", "dlq")}
    kafka = KafkaConfig(
        brokers=kafka_broker.address,
        consumer_group=kafka_broker.unique("features"),
        state_dir=str(tmp_path / "state"),
    )
    app = build_app(
        kafka,
        cfg,
        topic=topic,
        bars_topic=names["bars"],
        late_topic=names["late"],
        dlq_topic=names["dlq"],
    )
    produce(kafka_broker, topic, records)
    app.run(timeout=3.0)  # stops 3 s after the last message

    got_bars = [msgspec.json.decode(b, type=Bar) for b in read_topic(kafka_broker, names["bars"])]
    got_late = [
        msgspec.json.decode(b, type=LateRecord) for b in read_topic(kafka_broker, names["late"])
    ]
    got_dead = [
        msgspec.json.decode(b, type=DeadLetter) for b in read_topic(kafka_broker, names["dlq"])
    ]

    messages = [Message(topic, v, 0) for _, v in records]
    bw_bars, bw_late, bw_dead = _run_bytewax(messages, cfg)
    expected = [b for b in bw_bars if b.start_ns < closed_from]
    assert len(bw_bars) - len(expected) == 2 * len(closers)  # the closers' 1 s and 1 min bars

    key = lambda b: (b.instrument_id, b.width_ns, b.start_ns)  # noqa: E731
    assert len(got_bars) == len(expected)
    assert sorted(got_bars, key=key) == sorted(expected, key=key)
    assert {b.width_ns for b in got_bars} == {SECOND_NS, MINUTE_NS}
    assert any(b.width_ns == MINUTE_NS and b.trade_count for b in got_bars)

    assert len(bw_late) >= 2, "the late copies must be late at least on the 1 s windows"
    assert sorted(map(_late_key, got_late)) == sorted(map(_late_key, bw_late))
    for g in got_late:
        b = next(x for x in bw_late if _late_key(x) == _late_key(g))
        assert g.watermark == b.watermark - b.watermark % 1_000_000

    assert (
        [(d.reason, d.payload) for d in got_dead]
        == [(d.reason, d.payload) for d in bw_dead]
        == [("UNDECODABLE", b'{"kind":"trade","price":')]
    )


def test_quix_features_dead_letters_a_tick_keyed_by_another_instrument(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    ticks = merged_ticks(50)
    eth = next(t for t in ticks if t.instrument_id == "ETHUSDT.BINANCE")
    topic = kafka_broker.unique("ticks")
    dlq = kafka_broker.unique("dlq")
    kafka = KafkaConfig(
        brokers=kafka_broker.address,
        consumer_group=kafka_broker.unique("features"),
        state_dir=str(tmp_path / "state"),
    )
    app = build_app(
        kafka,
        topic=topic,
        bars_topic=kafka_broker.unique("bars"),
        late_topic=kafka_broker.unique("late"),
        dlq_topic=dlq,
    )
    produce(kafka_broker, topic, [("BTCUSDT.BINANCE", msgspec.json.encode(eth))])
    app.run(timeout=2.0)
    (dead,) = [msgspec.json.decode(b, type=DeadLetter) for b in read_topic(kafka_broker, dlq)]
    assert dead.reason == KEY_MISMATCH
    assert dead.instrument_id == "ETHUSDT.BINANCE"
    assert dead.payload == msgspec.json.encode(eth)
