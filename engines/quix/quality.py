"""The quality checks on Quix Streams: a stage's Kafka topic judged record by record.

The same gate as the Bytewax flows (:mod:`operators.quality.tap`, wired there by
:mod:`flows.quality`): the stage's per-record rule from :mod:`operators.quality.rules`,
the stage's per-batch suite from :mod:`operators.quality.batch` (results stored in the
same quality store, alerts on ``quality.alerts``), and the accounting under
``quality.<stage>``. What this module adds is only the Kafka side:

* a record becomes the bus :class:`~schemas.transport.Message` the tap expects, with the
  subject of its ``T26-Subject`` header (the NATS->Kafka bridge sets it; else the topic),
  ``ts_recv`` from ``T26-Recv-Ns`` (else the Kafka timestamp, never this process's
  clock) and ``seq`` = the partition offset;
* a failing record becomes a :class:`~schemas.canonical.DeadLetter` (reason code,
  original bytes) on ``dlq.<stage>``, keyed like the record;
* passing records go on to ``out_topic`` untouched when one is given (the gate in front
  of a consumer), else nowhere (the checks as a side tap);
* the tap's ``commit`` (counts, hand-off of the good records to the batch validator)
  runs at every Quix checkpoint, from a sink's ``flush``, before offsets are committed:
  counting per checkpoint, not per record, as the Bytewax taps count per batch.

Stages: ``ticks`` (canonical tick JSON, key = instrument id) and ``raw`` (venue
payloads). Rule state (last trade id per instrument, last seq per subject) lives in the
process: keys stay on their partition, but a rebalance or restart starts it afresh, as a
restarted Bytewax tap does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from engines.quix.app import (
    KafkaConfig,
    attach_meter,
    create_topics,
    make_application,
    topic_config,
)
from operators.quality.batch import ALERTS_SUBJECT
from operators.quality.tap import Quality, QualityTap
from schemas.canonical import DeadLetter, Tick
from schemas.transport import RECV_NS_HEADER, Message

if TYPE_CHECKING:
    from quixstreams import Application

    from trade2026.observability import FlowMetrics

__all__ = [
    "ALERTS_TOPIC",
    "STAGE_TOPICS",
    "SUBJECT_HEADER",
    "VIEWS",
    "build_app",
    "kafka_publisher",
    "to_message",
]

#: The bridge's header with the original NATS subject (trade2026/commands/bridge.py).
SUBJECT_HEADER = "T26-Subject"
ALERTS_TOPIC = ALERTS_SUBJECT
#: The input topic of each stage this engine checks.
STAGE_TOPICS = {"ticks": "ticks", "raw": "raw"}

_tick_decoder = msgspec.json.Decoder(Tick)


def _tick_view(msg: Message) -> Tick:
    """A ticks-topic record as the rule judges it; a decode error is ``SCHEMA_MISMATCH``."""
    return _tick_decoder.decode(msg.data)


def _raw_view(msg: Message) -> Message:
    return msg


#: What the tap of each stage judges, given the record as a Message. Shared with the
#: Bytewax comparison in tests/engines/test_quix_quality.py, so both judge the same thing.
VIEWS: dict[str, Callable[[Message], Any]] = {"ticks": _tick_view, "raw": _raw_view}


def _header(headers: Any, name: str) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def to_message(
    value: bytes | None, headers: Any, timestamp_ms: int, topic: str, offset: int
) -> Message:
    """A Kafka record as the bus message the taps judge (see the module docstring)."""
    subject = _header(headers, SUBJECT_HEADER) or topic
    recv = _header(headers, RECV_NS_HEADER)
    ts_recv = int(recv) if recv is not None and recv.isdigit() else timestamp_ms * 1_000_000
    return Message(subject, value or b"", ts_recv, seq=offset)


def kafka_publisher(kafka: KafkaConfig) -> Callable[[str, bytes], None]:
    """``publish(subject, payload)`` for the validator threads: the subject is the topic.

    One lazy idempotent producer, flushed per alert: alerts are rare and a lost one must
    not go unseen (a failed flush raises into the validator, which counts it).
    """
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def publish(subject: str, payload: bytes) -> None:
        from confluent_kafka import Producer

        with lock:
            if "p" not in state:
                state["p"] = Producer(
                    {"bootstrap.servers": kafka.brokers, "enable.idempotence": True}
                )
            producer = state["p"]
            producer.produce(subject, value=payload)
            left = producer.flush(10.0)
        if left:
            raise ConnectionError(
                f"quality alerts: {left} not delivered to {kafka.brokers}/{subject} in 10 s; "
                "hint: check the brokers and that the topic exists"
            )

    return publish


def _commit_sink_class() -> type:
    """Built on first use so importing this module does not import quixstreams."""
    from quixstreams.sinks import BaseSink

    class TapCommitSink(BaseSink):
        """Takes every judged record (nothing kept) and commits the tap at checkpoints."""

        def __init__(self, tap: QualityTap) -> None:
            super().__init__()
            self.tap = tap

        def add(self, *args: Any, **kwargs: Any) -> None:
            """Nothing to keep: the tap already holds the counts and the good records."""

        def flush(self) -> None:
            with self.tap.lock:
                self.tap.commit()

    return TapCommitSink


def build_app(
    kafka: KafkaConfig,
    quality: Quality,
    *,
    stage: str = "ticks",
    topic: str | None = None,
    dlq_topic: str | None = None,
    out_topic: str | None = None,
    alerts_topic: str | None = ALERTS_TOPIC,
    metrics: FlowMetrics | None = None,
) -> Application:
    """The quality app of ``stage``; ``app.run()`` runs it until interrupted.

    ``quality`` decides the rules, the batch validation and the store (production:
    :meth:`QualityConfig.production`; ``close()`` it after the app stops, or use
    ``close_at_exit``). ``alerts_topic`` is created when given, since a validator thread
    publishes to it. ``metrics``: batch-size and latency histograms per checkpoint,
    stage ``quality.<topic>`` (:func:`~engines.quix.app.attach_meter`).
    """
    from quixstreams import message_context

    if stage not in VIEWS:
        raise ValueError(
            f"quix quality: no stage {stage!r} on this engine; hint: one of {sorted(VIEWS)}"
        )
    topic = topic or STAGE_TOPICS[stage]
    app = make_application(kafka)
    tc = topic_config(kafka)
    if alerts_topic:
        create_topics(kafka, [alerts_topic])
    source = app.topic(topic, value_deserializer="bytes", key_deserializer="bytes", config=tc)
    dlq = app.topic(
        dlq_topic or f"dlq.{stage}", value_serializer="bytes", key_serializer="bytes", config=tc
    )
    tap = quality.tap(stage, view=VIEWS[stage])
    encode = msgspec.json.Encoder().encode

    def judge(value: bytes, key: Any, timestamp: int, headers: Any) -> Message | DeadLetter:
        ctx = message_context()
        msg = to_message(value, headers, timestamp, ctx.topic, ctx.offset)
        with tap.lock:
            letter = tap.check(msg)
        return msg if letter is None else letter

    sdf = app.dataframe(source).apply(judge, metadata=True)
    sdf.filter(lambda v: isinstance(v, DeadLetter)).apply(encode).to_topic(dlq)
    if out_topic:
        out = app.topic(out_topic, value_serializer="bytes", key_serializer="bytes", config=tc)
        sdf.filter(lambda v: isinstance(v, Message)).apply(lambda m: m.data).to_topic(out)
    sdf.sink(_commit_sink_class()(tap))
    attach_meter(sdf, metrics, f"quality.{topic}")
    return app
