"""The quality checks on Quix Streams against a real broker, compared with the Bytewax gate.

The same recorded ticks, with faults injected at known places, go through the Bytewax
quality gate (:func:`flows.quality.quality_tap`, as the flows wire it) and through the
Quix app (``engines/quix/quality.py``) on Tansu. Both must dead-letter the same records
with the same reasons and bytes, pass the same records, count the same, and store the
same batch validations.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from engines.quix import quix_flow
from engines.quix.app import KafkaConfig, create_topics
from engines.quix.quality import SUBJECT_HEADER, VIEWS, build_app
from flows.quality import quality_tap
from operators.quality.rules import RulesConfig
from operators.quality.tap import Quality, QualityConfig
from schemas.canonical import DeadLetter, Quote, TradeTick
from schemas.instruments import load_instruments
from schemas.transport import RECV_NS_HEADER, Message
from tests.engines.conftest import Broker, read_messages, read_topic
from tests.feature_samples import merged_ticks
from trade2026.observability import FlowMetrics

STAGE = "ticks"
#: Stored results carry this time: both engines get the same injected clock.
CLOCK_NS = 1_800_000_000_000_000_000


def _faulty_ticks() -> tuple[list[tuple[str, bytes, int]], list[tuple[int, str]]]:
    """``(instrument, payload, ts_recv)`` records and the ``(index, reason)`` injected."""
    ticks = merged_ticks(300)
    records: list[tuple[str, bytes, int]] = [
        (t.instrument_id, msgspec.json.encode(t), t.ts_recv) for t in ticks
    ]
    trade = next(t for t in ticks if isinstance(t, TradeTick))
    quote = next(t for t in ticks if isinstance(t, Quote))
    faults: list[tuple[int, bytes, str]] = [
        (7, b"not json", "SCHEMA_MISMATCH"),
        (
            50,
            msgspec.json.encode(msgspec.structs.replace(trade, price=Decimal(0))),
            "INVALID_PRICE",
        ),
        (90, msgspec.json.encode(quote), "OUT_OF_ORDER"),  # its update id again, later
        (
            120,
            msgspec.json.encode(
                msgspec.structs.replace(quote, bid_price=quote.ask_price + 1, update_id=1)
            ),
            "CROSSED_QUOTE",
        ),
        (
            200,
            msgspec.json.encode(msgspec.structs.replace(trade, instrument_id="NOPE.X")),
            "UNKNOWN_INSTRUMENT",
        ),
    ]
    for index, payload, _ in faults:
        records.insert(index, (trade.instrument_id, payload, trade.ts_recv))
    return records, [(i, reason) for i, _, reason in faults]


def _messages(records: list[tuple[str, bytes, int]]) -> list[Message]:
    """The records as the Bytewax side reads them off NATS (seq: the Kafka offset)."""
    return [
        Message(f"md.ticks.{inst}", data, ts_recv, seq=i)
        for i, (inst, data, ts_recv) in enumerate(records)
    ]


def _quality(store: Path, alerts: list[tuple[str, bytes]] | None = None) -> Quality:
    config = QualityConfig(
        store=str(store),
        stages=(STAGE,),
        batch_rows=200,
        max_queue=100,
        max_duty=1.0,  # validate every batch in full: the comparison must not depend on load
        alerts=alerts is not None,
    )
    publish = None if alerts is None else (lambda s, p: alerts.append((s, p)))
    return Quality(config, load_instruments(), clock=lambda: CLOCK_NS, publish=publish)


def _bytewax(records: list[tuple[str, bytes, int]], store: Path) -> tuple[Any, ...]:
    quality = _quality(store)
    tap = quality.tap(STAGE, view=VIEWS[STAGE])
    ok: list[Message] = []
    dead: list[DeadLetter] = []
    flow = Dataflow("quality_ref")
    stream = op.input("in", flow, TestingSource(_messages(records), batch_size=64))
    good, letters = quality_tap("gate", stream, tap)
    op.output("ok", good, TestingSink(ok))
    op.output("dead", letters, TestingSink(dead))
    run_main(flow)
    stats = quality.close()[STAGE]
    acct = quality.accounting
    return ok, dead, acct.stage("quality.ticks"), acct.reasons("quality.ticks"), stats


def _produce(
    broker: Broker, topic: str, records: list[tuple[str, bytes, int]], prefix: str = "md.ticks."
) -> None:
    """Keyed by instrument, with the headers the NATS->Kafka bridge sets."""
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 5})
    for inst, data, ts_recv in records:
        headers = [
            (SUBJECT_HEADER, f"{prefix}{inst}".encode()),
            (RECV_NS_HEADER, str(ts_recv).encode()),
        ]
        producer.produce(topic, key=inst.encode(), value=data, headers=headers)
        producer.poll(0)
    assert producer.flush(30) == 0


def _validations(store: Path) -> list[tuple[Any, ...]]:
    df = pl.read_delta(str(store / "validations")).sort("ts", "batch_id")
    cols = ["stage", "suite", "rows", "success"]
    return [tuple(r) for r in df.select(cols).iter_rows()]


def test_quix_quality_equals_the_bytewax_gate(kafka_broker: Broker, tmp_path: Path) -> None:
    records, injected = _faulty_ticks()
    topic, dlq, out = (kafka_broker.unique(p) for p in ("ticks", "dlq", "checked"))
    kafka = KafkaConfig(
        brokers=kafka_broker.address,
        consumer_group=kafka_broker.unique("quality"),
        state_dir=str(tmp_path / "state"),
    )
    create_topics(kafka, [topic, dlq, out])
    _produce(kafka_broker, topic, records)

    ref_ok, ref_dead, ref_counts, ref_reasons, ref_stats = _bytewax(records, tmp_path / "bytewax")

    quality = _quality(tmp_path / "quix")
    registry = CollectorRegistry()
    # "Now" is 3 ms after the newest receive time: every sample is at least 3 ms.
    newest = max(ts for _, _, ts in records)
    metrics = FlowMetrics(registry, flow="quality", clock=lambda: newest + 3_000_000)
    app = build_app(
        kafka,
        quality,
        stage=STAGE,
        topic=topic,
        dlq_topic=dlq,
        out_topic=out,
        alerts_topic=None,
        metrics=metrics,
    )
    app.run(timeout=2.0)  # stops 2 s after the last message
    stats = quality.close()[STAGE]

    # The injected faults, and nothing else, are dead letters, with their reason and bytes.
    dead = [msgspec.json.decode(b, type=DeadLetter) for b in read_topic(kafka_broker, dlq)]
    assert [(d.reason, d.payload) for d in dead] == [(r, records[i][1]) for i, r in injected]
    # Exactly the Bytewax gate's dead letters (detail, subject, ts_recv and all).
    assert dead == ref_dead
    # The same records pass, in order, with their original bytes and keys.
    passed = read_messages(kafka_broker, out)
    assert [m.value() for m in passed] == [m.data for m in ref_ok]
    assert len(passed) == len(records) - len(injected)
    assert passed[0].key() == records[0][0].encode()
    # The same counts: in = out + dead-lettered on both engines.
    counts = quality.accounting.stage("quality.ticks")
    assert (counts.records_in, counts.out, counts.dead_lettered) == (
        len(records),
        len(records) - len(injected),
        len(injected),
    )
    assert (ref_counts.records_in, ref_counts.out, ref_counts.dead_lettered) == (
        counts.records_in,
        counts.out,
        counts.dead_lettered,
    )
    assert counts.balanced
    assert quality.accounting.reasons("quality.ticks") == ref_reasons
    assert ref_reasons == {r: 1 for _, r in injected}
    # The same batch validations, stored the same way.
    assert stats.offered_rows == ref_stats.offered_rows == len(records) - len(injected)
    assert stats.validated_batches == ref_stats.validated_batches >= 2
    assert stats.skipped_batches == ref_stats.skipped_batches == 0
    assert _validations(tmp_path / "quix") == _validations(tmp_path / "bytewax")
    # Histograms per checkpoint: every record counted once, one latency sample per batch.
    labels = {"stage": f"quality.{topic}"}
    batches = registry.get_sample_value("trade2026_batch_size_count", labels)
    assert registry.get_sample_value("trade2026_batch_size_sum", labels) == len(records)
    assert batches is not None and batches >= 1
    assert registry.get_sample_value("trade2026_stage_latency_seconds_count", labels) == batches
    early = {**labels, "le": "0.0025"}
    assert registry.get_sample_value("trade2026_stage_latency_seconds_bucket", early) == 0


def test_quix_flow_runs_the_quality_checks_by_name(kafka_broker: Broker, tmp_path: Path) -> None:
    """``trade2026 run quality --engine quix`` builds this: production layer, alerts on Kafka."""
    records, injected = _faulty_ticks()
    records = records[:60]
    injected = [(i, r) for i, r in injected if i < 60]
    topic, dlq = kafka_broker.unique("ticks"), kafka_broker.unique("dlq")
    create_topics(KafkaConfig(brokers=kafka_broker.address), [topic, dlq])
    _produce(kafka_broker, topic, records)
    quality = _quality(tmp_path / "store")
    app = quix_flow(
        "quality",
        kafka_broker.address,
        consumer_group=kafka_broker.unique("run"),
        state_dir=str(tmp_path / "state"),
        quality=quality,
        topic=topic,
        dlq_topic=dlq,
        alerts_topic=kafka_broker.unique("alerts"),
    )
    app.run(timeout=2.0)
    quality.close()
    dead = [msgspec.json.decode(b, type=DeadLetter) for b in read_topic(kafka_broker, dlq)]
    assert [d.reason for d in dead] == [r for _, r in injected]
    c = quality.accounting.stage("quality.ticks")
    assert (c.records_in, c.dead_lettered) == (len(records), len(injected)) and c.balanced


def test_quix_quality_raw_stage_and_kafka_alerts(kafka_broker: Broker, tmp_path: Path) -> None:
    """The raw stage (venue payloads) and the alert publisher the production layer uses."""
    from engines.quix.quality import kafka_publisher

    topic, dlq, alerts = (kafka_broker.unique(p) for p in ("raw", "dlq", "alerts"))
    kafka = KafkaConfig(
        brokers=kafka_broker.address,
        consumer_group=kafka_broker.unique("raw"),
        state_dir=str(tmp_path / "state"),
    )
    create_topics(kafka, [topic, dlq])
    good = b'{"stream":"btcusdt@trade","data":{}}'
    raw = [good, b"", b"  ", b"<html>", good, b"x" * 2_000]
    _produce(
        kafka_broker,
        topic,
        [("binance", data, 1_723_161_255_000_000_000) for data in raw],
        prefix="md.raw.",
    )
    quality = Quality(
        QualityConfig(stages=("raw",), rules=RulesConfig(max_payload_bytes=1_000)),
        load_instruments(),
        clock=lambda: CLOCK_NS,
    )
    app = quix_flow(
        "quality_raw",
        kafka_broker.address,
        consumer_group=kafka_broker.unique("raw"),
        state_dir=str(tmp_path / "state"),
        quality=quality,
        topic=topic,
        dlq_topic=dlq,
        alerts_topic=alerts,
    )
    app.run(timeout=2.0)
    dead = [msgspec.json.decode(b, type=DeadLetter) for b in read_topic(kafka_broker, dlq)]
    assert [(d.reason, d.payload) for d in dead] == [
        ("EMPTY_PAYLOAD", b""),
        ("EMPTY_PAYLOAD", b"  "),
        ("INVALID_JSON", b"<html>"),
        ("OVERSIZED", b"x" * 2_000),
    ]
    assert {d.subject for d in dead} == {"md.raw.binance"}
    c = quality.accounting.stage("quality.raw")
    assert (c.records_in, c.out, c.dead_lettered) == (6, 2, 4)

    publish = kafka_publisher(kafka)
    publish(alerts, b'{"stage":"raw","success":false}')
    assert read_topic(kafka_broker, alerts) == [b'{"stage":"raw","success":false}']
