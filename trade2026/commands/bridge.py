"""``trade2026 bridge``: copy records between NATS subjects and a Kafka topic.

Firms whose market data lives on Kafka run the non-latency-critical flows on Quix
Streams (``engines/quix``); the bridge joins the two buses without changing a byte:

* ``nats-to-kafka``: each NATS message becomes a Kafka record whose key is the subject
  with the pattern's literal prefix removed (``md.ticks.BTCUSDT.BINANCE`` under
  ``md.ticks.>`` gives the key ``BTCUSDT.BINANCE``, the instrument), so an instrument
  stays in order on one partition and Quix windows group by it. NATS headers become
  Kafka headers, plus ``T26-Subject`` (the original subject).
* ``kafka-to-nats``: each record is published on its ``T26-Subject`` header, or on
  ``--subject-prefix`` + key; the other headers are carried over.

Delivery is at-least-once both ways: Kafka offsets are committed only after NATS has
flushed the publishes, and the Kafka producer is idempotent. Core NATS has no replay,
so ``nats-to-kafka`` copies what arrives while it is subscribed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from trade2026 import exitcodes

if TYPE_CHECKING:
    from engines.quix.app import KafkaConfig
    from trade2026.natsconf import NatsConfig

__all__ = ["SUBJECT_HEADER", "bridge", "kafka_to_nats", "key_of", "nats_to_kafka"]

#: Kafka header carrying the NATS subject a record came from.
SUBJECT_HEADER = "T26-Subject"


def key_of(subject: str, patterns: Sequence[str]) -> str:
    """The Kafka key of a subject: what follows the literal prefix of its pattern."""
    for pattern in patterns:
        literal: list[str] = []
        for token in pattern.split("."):
            if token in ("*", ">"):
                break
            literal.append(token)
        prefix = ".".join(literal) + "." if literal else ""
        if len(literal) < len(pattern.split(".")) and subject.startswith(prefix):
            return subject[len(prefix) :]
    return subject


class _Stop:
    """Stop after ``count`` records or ``idle_s`` without one (None: never)."""

    def __init__(self, count: int | None, idle_s: float | None) -> None:
        self.count = count
        self.idle_s = idle_s
        self.n = 0
        self.last = time.monotonic()

    def seen(self) -> None:
        self.n += 1
        self.last = time.monotonic()

    def done(self) -> bool:
        if self.count is not None and self.n >= self.count:
            return True
        return self.idle_s is not None and time.monotonic() - self.last >= self.idle_s


async def nats_to_kafka(
    nats_config: NatsConfig,
    subjects: Sequence[str],
    topic: str,
    kafka: KafkaConfig,
    *,
    count: int | None = None,
    idle_timeout_s: float | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Copy NATS messages to ``topic`` until a stop condition; returns how many."""
    from confluent_kafka import Producer

    from engines.quix.app import create_topics
    from trade2026.natsloop import connect

    create_topics(kafka, [topic])
    producer = Producer({"bootstrap.servers": kafka.brokers, "enable.idempotence": True})
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    stop = _Stop(count, idle_timeout_s)
    nc = await connect(nats_config, step="bridge nats-to-kafka")
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
    try:
        for s in subjects:
            await nc.subscribe(s, cb=queue.put)
        await nc.flush()
        if on_ready is not None:
            on_ready()
        while not stop.done():
            try:
                msg = await asyncio.wait_for(queue.get(), timeout=0.1)
            except TimeoutError:
                producer.poll(0)
                continue
            headers = [(k, v.encode()) for k, v in (msg.headers or {}).items()]
            headers.append((SUBJECT_HEADER, msg.subject.encode()))
            while True:
                try:
                    producer.produce(
                        topic,
                        key=key_of(msg.subject, subjects).encode(),
                        value=msg.data,
                        headers=headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            producer.poll(0)
            stop.seen()
    finally:
        await nc.drain()
        remaining = producer.flush(30)
    if failures or remaining:
        raise RuntimeError(
            f"bridge nats-to-kafka: {len(failures)} failed and {remaining} undelivered "
            f"records to {topic!r} (first: {failures[:1]}); hint: check the brokers"
        )
    return stop.n


async def kafka_to_nats(
    kafka: KafkaConfig,
    topic: str,
    nats_config: NatsConfig,
    *,
    subject_prefix: str = "md.ticks.",
    count: int | None = None,
    idle_timeout_s: float | None = None,
) -> int:
    """Publish ``topic``'s records on NATS until a stop condition; returns how many."""
    from confluent_kafka import Consumer

    from trade2026.natsloop import connect

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.brokers,
            "group.id": kafka.consumer_group,
            "auto.offset.reset": kafka.auto_offset_reset,
            "session.timeout.ms": kafka.session_timeout_ms,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    stop = _Stop(count, idle_timeout_s)
    nc = await connect(nats_config, step="bridge kafka-to-nats")
    pending = 0
    try:
        while not stop.done():
            msg = await asyncio.to_thread(consumer.poll, 0.1)
            if msg is None:
                if pending:
                    await nc.flush()
                    consumer.commit(asynchronous=False)
                    pending = 0
                continue
            if msg.error() is not None:
                raise RuntimeError(
                    f"bridge kafka-to-nats: read {topic!r} failed: {msg.error()}; "
                    "hint: check --kafka and the topic name"
                )
            headers = {
                k: v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                for k, v in (msg.headers() or [])
            }
            subject = headers.pop(SUBJECT_HEADER, None)
            if subject is None:
                key = msg.key()
                subject = subject_prefix + (key.decode() if key else "unkeyed")
            await nc.publish(subject, msg.value() or b"", headers=headers or None)
            stop.seen()
            pending += 1
            if pending >= 1000:
                await nc.flush()
                consumer.commit(asynchronous=False)
                pending = 0
        if pending:
            await nc.flush()
            consumer.commit(asynchronous=False)
    finally:
        await nc.drain()
        consumer.close()
    return stop.n


_kafka_option = click.option(
    "--kafka",
    "brokers",
    envvar="KAFKA_BROKERS",
    required=True,
    help="Kafka bootstrap servers, comma-separated host:port (env KAFKA_BROKERS).",
)
_nats_option = click.option(
    "--nats-url",
    envvar="NATS_URL",
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="NATS server(s), comma-separated (env NATS_URL).",
)
_count_option = click.option(
    "--count", type=click.IntRange(1), default=None, help="Stop after N records."
)
_idle_option = click.option(
    "--idle-timeout", type=float, default=None, help="Stop after S seconds without a record."
)


def _run(what: str, coro: Any) -> None:
    try:
        n = asyncio.run(coro)
    except KeyboardInterrupt:
        return
    except (ConnectionError, OSError) as exc:
        click.echo(f"error: bridge {what}: {exc}", err=True)
        sys.exit(exitcodes.UNREACHABLE)
    except RuntimeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exitcodes.RUN_FAILED)
    click.echo(f"bridge {what}: {n:,} records", err=True)


def _nats(url: str) -> NatsConfig:
    from trade2026.natsconf import NatsConfig

    return NatsConfig.from_env(servers=tuple(u.strip() for u in url.split(",")))


@click.group("bridge")
def bridge() -> None:
    """Copy records between NATS subjects and a Kafka topic, keyed by instrument."""


@bridge.command("nats-to-kafka")
@click.option(
    "--subjects",
    multiple=True,
    default=("md.ticks.>",),
    show_default=True,
    help="NATS subject pattern(s) to copy; repeat for several.",
)
@click.option("--topic", default="ticks", show_default=True, help="Kafka topic to write.")
@_kafka_option
@_nats_option
@_count_option
@_idle_option
def nats_to_kafka_command(
    subjects: tuple[str, ...],
    topic: str,
    brokers: str,
    nats_url: str,
    count: int | None,
    idle_timeout: float | None,
) -> None:
    """Copy NATS messages to a Kafka topic; key = subject after the pattern's prefix."""
    from engines.quix.app import KafkaConfig

    kafka = KafkaConfig(brokers=brokers)
    _run(
        "nats-to-kafka",
        nats_to_kafka(
            _nats(nats_url),
            subjects,
            topic,
            kafka,
            count=count,
            idle_timeout_s=idle_timeout,
            on_ready=lambda: click.echo(f"bridge: subscribed to {', '.join(subjects)}", err=True),
        ),
    )


@bridge.command("kafka-to-nats")
@click.option("--topic", default="ticks", show_default=True, help="Kafka topic to read.")
@click.option(
    "--subject-prefix",
    default="md.ticks.",
    show_default=True,
    help="Subject = prefix + key, for records without a T26-Subject header.",
)
@click.option(
    "--group", default="trade2026-bridge", show_default=True, help="Kafka consumer group."
)
@click.option(
    "--from-beginning/--from-latest",
    default=False,
    help="Where a new consumer group starts.",
)
@_kafka_option
@_nats_option
@_count_option
@_idle_option
def kafka_to_nats_command(
    topic: str,
    subject_prefix: str,
    group: str,
    from_beginning: bool,
    brokers: str,
    nats_url: str,
    count: int | None,
    idle_timeout: float | None,
) -> None:
    """Publish a Kafka topic's records on NATS, on their original subjects."""
    from engines.quix.app import KafkaConfig

    kafka = KafkaConfig(
        brokers=brokers,
        consumer_group=group,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    _run(
        "kafka-to-nats",
        kafka_to_nats(
            kafka,
            topic,
            _nats(nats_url),
            subject_prefix=subject_prefix,
            count=count,
            idle_timeout_s=idle_timeout,
        ),
    )
