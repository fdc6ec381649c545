"""``trade2026 bridge`` between a real nats-server and a real Kafka-compatible broker."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import msgspec
import nats
from click.testing import CliRunner

from engines.quix.app import KafkaConfig, create_topics
from schemas.transport import RECV_NS_HEADER
from tests.engines.conftest import Broker, produce, read_messages
from tests.feature_samples import merged_ticks
from trade2026.commands.bridge import SUBJECT_HEADER, bridge, key_of, nats_to_kafka
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer


def test_key_is_the_subject_after_the_patterns_literal_prefix() -> None:
    assert key_of("md.ticks.BTCUSDT.BINANCE", ["md.ticks.>"]) == "BTCUSDT.BINANCE"
    assert key_of("md.gaps.ETHUSDT.BINANCE", ["md.ticks.>", "md.gaps.>"]) == "ETHUSDT.BINANCE"
    assert key_of("dlq.normalize", ["dlq.*"]) == "normalize"
    assert key_of("orders.submit", ["orders.submit"]) == "orders.submit"  # no wildcard


def test_nats_to_kafka_keeps_bytes_keys_and_headers(
    kafka_broker: Broker, nats_server: LocalNatsServer
) -> None:
    ticks = merged_ticks(20)
    prefix = kafka_broker.unique("md").replace("-", "") + ".ticks."
    topic = kafka_broker.unique("bridged")
    ready = threading.Event()
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(
                asyncio.run(
                    nats_to_kafka(
                        NatsConfig(servers=(nats_server.url,)),
                        [prefix + ">"],
                        topic,
                        KafkaConfig(brokers=kafka_broker.address),
                        count=len(ticks),
                        idle_timeout_s=20,
                        on_ready=ready.set,
                    )
                )
            )
        except BaseException as exc:  # surfaced by the assertion below
            result.append(exc)
            ready.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert ready.wait(30), "the bridge did not subscribe within 30 s"

    async def publish() -> None:
        nc = await nats.connect(nats_server.url)
        for t in ticks:
            headers = {RECV_NS_HEADER: str(t.ts_recv)}
            await nc.publish(prefix + t.instrument_id, msgspec.json.encode(t), headers=headers)
        await nc.drain()

    asyncio.run(publish())
    worker.join(30)
    assert result == [len(ticks)]

    got = read_messages(kafka_broker, topic)
    assert [m.value() for m in got] == [msgspec.json.encode(t) for t in ticks]
    assert [m.key().decode() for m in got] == [t.instrument_id for t in ticks]
    for m, t in zip(got, ticks, strict=True):
        headers = dict(m.headers())
        assert headers[RECV_NS_HEADER] == str(t.ts_recv).encode()
        assert headers[SUBJECT_HEADER] == (prefix + t.instrument_id).encode()


def test_kafka_to_nats_command_republishes_on_original_subjects(
    kafka_broker: Broker, nats_server: LocalNatsServer
) -> None:
    ticks = merged_ticks(10)
    prefix = kafka_broker.unique("md").replace("-", "") + ".ticks."
    topic = kafka_broker.unique("bridged")
    create_topics(KafkaConfig(brokers=kafka_broker.address), [topic])
    # Half carry the subject header (as nats-to-kafka writes them), half only a key.
    for i, t in enumerate(ticks):
        headers = [(RECV_NS_HEADER, str(t.ts_recv).encode())]
        if i % 2 == 0:
            headers.append((SUBJECT_HEADER, (prefix + t.instrument_id).encode()))
        produce(kafka_broker, topic, [(t.instrument_id, msgspec.json.encode(t))], headers)

    received: list[tuple[str, bytes, dict[str, str] | None]] = []
    subscribed = threading.Event()
    stop = threading.Event()

    def subscribe() -> None:
        async def main() -> None:
            nc = await nats.connect(nats_server.url)

            async def cb(msg: Any) -> None:
                received.append((msg.subject, msg.data, msg.headers))

            await nc.subscribe(prefix + ">", cb=cb)
            await nc.flush()
            subscribed.set()
            while not stop.is_set() and len(received) < len(ticks):
                await asyncio.sleep(0.05)
            await nc.drain()

        asyncio.run(main())

    listener = threading.Thread(target=subscribe, daemon=True)
    listener.start()
    assert subscribed.wait(10)
    result = CliRunner().invoke(
        bridge,
        [
            "kafka-to-nats",
            "--topic",
            topic,
            "--subject-prefix",
            prefix,
            "--group",
            kafka_broker.unique("bridge"),
            "--from-beginning",
            "--kafka",
            kafka_broker.address,
            "--nats-url",
            nats_server.url,
            "--count",
            str(len(ticks)),
            "--idle-timeout",
            "20",
        ],
    )
    listener.join(10)
    stop.set()
    assert result.exit_code == 0, result.output
    assert [(s, d) for s, d, _ in received] == [
        (prefix + t.instrument_id, msgspec.json.encode(t)) for t in ticks
    ]
    assert [h for _, _, h in received] == [{RECV_NS_HEADER: str(t.ts_recv)} for t in ticks]
