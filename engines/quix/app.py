"""Quix Streams ``Application`` settings that work on real Kafka and on Tansu alike.

Two settings are not Quix defaults, both measured against the Tansu broker the tests use:

* Topics are created up front with explicit ``retention.ms`` and ``retention.bytes``.
  Quix derives its changelog topics' config from the input topic's broker config and
  fails when the broker does not report those two keys, which Tansu does not unless they
  were set at creation.
* ``session.timeout.ms`` is ~6 s. With the librdkafka default (45 s) the first group
  join took 23 s against Tansu; a shorter session lets the join settle in about a second.
  It also bounds how long a dead consumer holds its partitions on real Kafka.

Kafka keys are the instrument id (or account id) everywhere, so a key's records stay in
order on one partition and grouped windows need no repartition topic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from schemas.common import NANOS_PER_MILLI
from schemas.transport import RECV_NS_HEADER

if TYPE_CHECKING:
    from quixstreams import Application
    from quixstreams.dataframe import StreamingDataFrame
    from quixstreams.models import TopicConfig

    from trade2026.observability import FlowMetrics

__all__ = [
    "KafkaConfig",
    "attach_meter",
    "create_topics",
    "make_application",
    "ns_to_ms",
    "topic_config",
]

#: Seven days: long enough to rebuild a day's features or tables from the topic.
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000


class KafkaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the Kafka cluster is and how a Quix application joins it.

    ``brokers``: comma-separated ``host:port``. ``partitions``/``replication_factor``/
    ``retention_*``: used only when a topic does not exist yet. ``state_dir``: Quix's
    RocksDB state (window contents); each application needs its own.
    """

    brokers: str
    consumer_group: str = "trade2026"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = 6000
    partitions: int = 1
    replication_factor: int = 1
    retention_ms: int = DEFAULT_RETENTION_MS
    retention_bytes: int = -1
    state_dir: str = "state/quix"
    #: Commit (and flush sinks) at least this often ...
    commit_interval_s: float = 1.0
    #: ... or after this many messages (0: only by time).
    commit_every: int = 0
    processing_guarantee: Literal["at-least-once", "exactly-once"] = "at-least-once"
    loglevel: str = "WARNING"

    def __post_init__(self) -> None:
        if not self.brokers.strip():
            raise ValueError("kafka config: brokers is empty; hint: pass --kafka HOST:PORT")
        if self.partitions < 1 or self.replication_factor < 1:
            raise ValueError(
                "kafka config: partitions and replication_factor must be >= 1; "
                "hint: use 1 for a single-broker development cluster"
            )


def topic_config(cfg: KafkaConfig) -> TopicConfig:
    """The creation config every topic of ours gets (explicit retention: see module doc)."""
    from quixstreams.models import TopicConfig

    return TopicConfig(
        num_partitions=cfg.partitions,
        replication_factor=cfg.replication_factor,
        extra_config={
            "retention.ms": str(cfg.retention_ms),
            "retention.bytes": str(cfg.retention_bytes),
        },
    )


def create_topics(cfg: KafkaConfig, names: Iterable[str], timeout_s: float = 30.0) -> None:
    """Create missing topics with :func:`topic_config`; existing topics are left alone.

    Used by the bridge, which has no Quix application; Quix applications create their
    topics through ``app.topic(..., config=topic_config(cfg))`` with the same settings.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": cfg.brokers})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise ConnectionError(
            f"kafka: list topics on {cfg.brokers} failed: {exc}; "
            "hint: check --kafka and that the brokers are up"
        ) from exc
    tc = topic_config(cfg)
    wanted = [
        NewTopic(
            n,
            num_partitions=cfg.partitions,
            replication_factor=cfg.replication_factor,
            config=dict(tc.extra_config),
        )
        for n in dict.fromkeys(names)
        if n not in existing
    ]
    if not wanted:
        return
    for name, fut in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):  # a concurrent creator won the race
                continue
            raise RuntimeError(
                f"kafka: create topic {name!r} on {cfg.brokers} failed: {exc}; "
                "hint: check broker ACLs and the partition/replication settings"
            ) from exc


def make_application(cfg: KafkaConfig, **overrides: Any) -> Application:
    """A Quix ``Application`` with our settings; ``overrides`` go to its constructor."""
    from quixstreams import Application

    consumer_extra = {"session.timeout.ms": cfg.session_timeout_ms}
    consumer_extra.update(overrides.pop("consumer_extra_config", {}))
    kwargs: dict[str, Any] = {
        "broker_address": cfg.brokers,
        "consumer_group": cfg.consumer_group,
        "auto_offset_reset": cfg.auto_offset_reset,
        "commit_interval": cfg.commit_interval_s,
        "commit_every": cfg.commit_every,
        "consumer_extra_config": consumer_extra,
        "state_dir": cfg.state_dir,
        "processing_guarantee": cfg.processing_guarantee,
        "loglevel": cfg.loglevel,
    }
    kwargs.update(overrides)
    return Application(**kwargs)


def ns_to_ms(ts_ns: int) -> int:
    """Kafka and Quix windows count milliseconds; our timestamps are integer ns.

    Flooring is exact for window membership and closing, because window widths and
    allowed lateness are whole milliseconds: ``floor(t / w_ns) == floor(floor(t / 1e6) / w_ms)``.
    """
    return ts_ns // NANOS_PER_MILLI


def attach_meter(
    sdf: StreamingDataFrame,
    metrics: FlowMetrics | None,
    stage: str,
    clock: Callable[[], int] | None = None,
) -> None:
    """Feed ``metrics``' batch-size and latency histograms from a Quix app (no-op on None).

    Quix has no batches of its own: the unit is the checkpoint (every
    ``commit_interval_s``), when sinks are flushed and offsets committed. A sink attached
    last, so flushed after the app's writers, observes per checkpoint the records it saw
    and the latency of the first of them: ``clock()`` minus its ``T26-Recv-Ns`` header,
    else its Kafka timestamp. Per record it pays one counter increment. ``clock``
    defaults to the metrics' own (``FlowMetrics(clock=...)``, default ``time.time_ns``).
    """
    if metrics is None:
        return
    from quixstreams.sinks import BaseSink

    now: Callable[[], int] = clock or metrics.clock

    batch = metrics.batch_size.labels(stage)
    latency = metrics.latency.labels(stage)

    class MeterSink(BaseSink):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.first_recv = 0

        def add(
            self,
            value: Any,
            key: Any,
            timestamp: int,
            headers: Any,
            topic: str,
            partition: int,
            offset: int,
        ) -> None:
            if not self.n:
                recv = timestamp * NANOS_PER_MILLI
                for k, v in headers or ():
                    if k == RECV_NS_HEADER:
                        raw = v.decode() if isinstance(v, bytes) else str(v)
                        recv = int(raw) if raw.isdigit() else recv
                        break
                self.first_recv = recv
            self.n += 1

        def flush(self) -> None:
            if self.n:
                batch.observe(self.n)
                latency.observe(max(0, now() - self.first_recv) / 1e9)
            self.n = 0

    sdf.sink(MeterSink())
