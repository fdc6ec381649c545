"""The tick sink on Quix Streams: a Kafka ticks topic into the Delta tick tables.

Same logic as :mod:`flows.ticks_sink`: :func:`flows.ticks_sink.check_message` decodes and
checks each record (bad ones become ``DeadLetter`` on ``dlq.ticks_sink``), and
:class:`sinks.delta.TickTableWriter` commits them. What differs is where idempotency comes
from: on Kafka the ascending per-origin sequence is the partition offset, so a record's
origin is ``kafka:<topic>/<partition>`` and its ``seq`` is its offset. A replay after a
crash (offsets not yet committed) re-sends records whose offset the Delta table's
application transaction already covers, and they are dropped as duplicates.

Flushing: Quix hands the sink its batch at every checkpoint (``commit_interval_s`` /
``commit_every`` of :class:`~engines.quix.app.KafkaConfig`) and commits the Kafka offsets
only after :meth:`DeltaQuixSink.write` returned, so nothing unwritten is acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from engines.quix.app import KafkaConfig, attach_meter, make_application, topic_config
from flows.ticks_sink import check_message
from schemas.canonical import DeadLetter
from schemas.transport import RECV_NS_HEADER, Message
from sinks.delta import STAGE, DeltaTicksConfig, Stamped, TickTableWriter
from trade2026.accounting import Accounting

if TYPE_CHECKING:
    from quixstreams import Application
    from quixstreams.sinks import SinkBatch

    from trade2026.observability import FlowMetrics

__all__ = ["DLQ_TOPIC", "TICKS_TOPIC", "build_app", "kafka_origin", "to_message"]

TICKS_TOPIC = "ticks"
DLQ_TOPIC = f"dlq.{STAGE}"


def kafka_origin(topic: str, partition: int) -> str:
    """The Delta ``origin`` of a Kafka partition: offsets ascend within it, not across."""
    return f"kafka:{topic}/{partition}"


def _header(headers: Any, name: str) -> str | None:
    for k, v in headers or ():
        if k == name:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def to_message(
    value: bytes, headers: Any, timestamp_ms: int, topic: str, partition: int, offset: int
) -> Message:
    """A Kafka record as the bus :class:`Message` the shared checks expect.

    ``ts_recv`` is the ``T26-Recv-Ns`` header when upstream stamped one, else the Kafka
    record timestamp: never this process's clock.
    """
    recv = _header(headers, RECV_NS_HEADER)
    ts_recv = int(recv) if recv is not None and recv.isdigit() else timestamp_ms * 1_000_000
    return Message(kafka_origin(topic, partition), value, ts_recv, seq=offset)


def _sink_class() -> type:
    """Built on first use so importing this module does not import quixstreams."""
    from quixstreams.sinks import BatchingSink

    class DeltaQuixSink(BatchingSink):
        """A Quix batching sink over :class:`TickTableWriter`; commits before returning."""

        def __init__(self, writer: TickTableWriter) -> None:
            super().__init__()
            self.writer = writer

        def setup(self) -> None:
            """Tables are opened by the writer's constructor; nothing to connect."""

        def write(self, batch: SinkBatch) -> None:
            items = [it.value for it in batch if isinstance(it.value, Stamped)]
            if items:
                self.writer.write(items)

    return DeltaQuixSink


def build_app(
    kafka: KafkaConfig,
    delta: DeltaTicksConfig,
    *,
    topic: str = TICKS_TOPIC,
    dlq_topic: str = DLQ_TOPIC,
    accounting: Accounting | None = None,
    storage_options: Mapping[str, str] | None = None,
    metrics: FlowMetrics | None = None,
) -> Application:
    """The ticks-sink application; ``app.run()`` runs it until interrupted.

    ``metrics``: batch-size and latency histograms per checkpoint, stage
    ``ticks_sink.<topic>`` (:func:`~engines.quix.app.attach_meter`).
    """
    from quixstreams import message_context

    app = make_application(kafka)
    tc = topic_config(kafka)
    source = app.topic(topic, value_deserializer="bytes", key_deserializer="bytes", config=tc)
    dlq = app.topic(dlq_topic, value_serializer="bytes", key_serializer="bytes", config=tc)

    def check(value: bytes, key: Any, timestamp: int, headers: Any) -> Stamped | DeadLetter:
        ctx = message_context()
        msg = to_message(value, headers, timestamp, ctx.topic, ctx.partition, ctx.offset)
        return check_message(msg, accounting)

    writer = TickTableWriter(delta, storage_options=storage_options, accounting=accounting)
    sdf = app.dataframe(source).apply(check, metadata=True)
    dead = sdf.filter(lambda v: isinstance(v, DeadLetter))
    dead.apply(msgspec.json.encode).to_topic(dlq)
    good = sdf.filter(lambda v: isinstance(v, Stamped))
    good.sink(_sink_class()(writer))
    attach_meter(sdf, metrics, f"{STAGE}.{topic}")  # last: flushed after the Delta write
    return app
