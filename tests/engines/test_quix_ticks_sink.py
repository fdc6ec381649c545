"""The tick sink on Quix Streams: a real broker in, real Delta tables out.

Checks what the Bytewax tick sink promises, on Kafka: every good tick lands exactly once
with exact decimals, bad records become dead letters with reasons, the accounting
balances, and a full replay of the topic (a new consumer group from the earliest offset,
as after a crash before an offset commit) writes nothing twice.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import polars as pl
import pytest

from engines.quix import quix_flow
from engines.quix.app import KafkaConfig, create_topics
from engines.quix.ticks_sink import build_app, kafka_origin
from schemas.canonical import DeadLetter, Quote, TradeTick
from sinks.delta import DeltaTicksConfig, table_uri
from tests.engines.conftest import Broker, produce, read_topic
from tests.feature_samples import merged_ticks
from trade2026.accounting import Accounting

STAGE = "ticks_sink"
TOO_PRECISE = (
    b'{"kind":"trade","instrument_id":"BTCUSDT.BINANCE","price":"1.0000000000000000001",'
    b'"size":"1","aggressor":"BUY","trade_id":"x","ts_event":1723161255342000000,'
    b'"ts_recv":1723161255342000000}'
)


def _run(broker: Broker, topic: str, dlq: str, root: Path, group: str, tmp: Path) -> Accounting:
    accounting = Accounting()
    kafka = KafkaConfig(brokers=broker.address, consumer_group=group, state_dir=str(tmp / group))
    delta = DeltaTicksConfig(root=str(root), writer_id="quix-test")
    app = build_app(kafka, delta, topic=topic, dlq_topic=dlq, accounting=accounting)
    app.run(timeout=2.0)  # stops 2 s after the last message
    return accounting


def _table(root: Path, kind: str) -> pl.DataFrame:
    return pl.read_delta(table_uri(str(root), kind))


def test_quix_ticks_sink_writes_once_and_dead_letters(kafka_broker: Broker, tmp_path: Path) -> None:
    ticks = merged_ticks(300)
    records = [(t.instrument_id, msgspec.json.encode(t)) for t in ticks]
    records.insert(10, ("BTCUSDT.BINANCE", b"not json"))
    records.insert(20, ("BTCUSDT.BINANCE", TOO_PRECISE))
    topic, dlq = kafka_broker.unique("ticks"), kafka_broker.unique("dlq")
    root = tmp_path / "delta"
    # One partition, created with the retention configs Tansu needs, before producing.
    create_topics(KafkaConfig(brokers=kafka_broker.address), [topic, dlq])
    produce(kafka_broker, topic, records)

    first = _run(kafka_broker, topic, dlq, root, kafka_broker.unique("sink"), tmp_path)

    trades = [t for t in ticks if isinstance(t, TradeTick)]
    quotes = [t for t in ticks if isinstance(t, Quote)]
    assert trades and quotes
    got_trades = _table(root, "trade").sort("seq")
    got_quotes = _table(root, "quote").sort("seq")
    assert got_trades.height == len(trades)
    assert got_quotes.height == len(quotes)
    # Exact decimals, in topic order, with the partition offset as the idempotency sequence.
    assert [Decimal(str(p)).normalize() for p in got_trades["price"]] == [
        t.price.normalize() for t in trades
    ]
    assert got_trades["trade_id"].to_list() == [t.trade_id for t in trades]
    assert set(got_trades["origin"]) == {kafka_origin(topic, 0)}
    offsets = {v: i for i, (_, v) in enumerate(records)}
    assert got_quotes["seq"].to_list() == [offsets[msgspec.json.encode(q)] for q in quotes]

    dead = [msgspec.json.decode(b, type=DeadLetter) for b in read_topic(kafka_broker, dlq)]
    assert [(d.reason, d.payload) for d in dead] == [
        ("DECODE_ERROR", b"not json"),
        ("SCHEMA_MISMATCH", TOO_PRECISE),
    ]
    c = first.stage(STAGE)
    assert (c.records_in, c.out, c.dead_lettered, c.duplicates) == (len(records), len(ticks), 2, 0)
    assert c.balanced

    # Replay everything: nothing is written twice, every good tick counts as a duplicate.
    second = _run(kafka_broker, topic, dlq, root, kafka_broker.unique("replay"), tmp_path)
    assert _table(root, "trade").height == len(trades)
    assert _table(root, "quote").height == len(quotes)
    c2 = second.stage(STAGE)
    assert (c2.records_in, c2.out, c2.dead_lettered, c2.duplicates) == (
        len(records),
        0,
        2,
        len(ticks),
    )
    assert c2.balanced


def test_quix_flow_runs_the_tick_sink_by_name(kafka_broker: Broker, tmp_path: Path) -> None:
    ticks = merged_ticks(3)
    topic, dlq = kafka_broker.unique("ticks"), kafka_broker.unique("dlq")
    create_topics(KafkaConfig(brokers=kafka_broker.address), [topic, dlq])
    produce(kafka_broker, topic, [(t.instrument_id, msgspec.json.encode(t)) for t in ticks])
    accounting = Accounting()
    app = quix_flow(
        "ticks_sink",
        kafka_broker.address,
        consumer_group=kafka_broker.unique("run"),
        state_dir=str(tmp_path / "state"),
        accounting=accounting,
        delta_root=str(tmp_path / "delta"),
        topic=topic,
        dlq_topic=dlq,
    )
    app.run(timeout=2.0)
    n = sum(_table(tmp_path / "delta", k).height for k in ("trade", "quote"))
    assert n == len(ticks) == accounting.stage(STAGE).out


def test_quix_flow_names_the_flows_it_has() -> None:
    with pytest.raises(ValueError, match="normalize stays on Bytewax"):
        quix_flow("normalize", "127.0.0.1:1")
