"""NatsSink and JetStreamSink against a real nats-server (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import bytewax.operators as op
import nats
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from schemas.transport import MSG_ID_HEADER, Outgoing
from sinks.nats import JetStreamSink, NatsSink
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop
from trade2026.natsserver import LocalNatsServer

_ids = itertools.count()


def uniq(prefix: str) -> str:
    return f"{prefix}{next(_ids)}x{int(time.time() * 1000) % 100000}"


def cfg(server: LocalNatsServer) -> NatsConfig:
    return NatsConfig(servers=(server.url,), reconnect_wait_s=0.1)


def add_stream(url: str, name: str, subjects: list[str]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(name=name, subjects=subjects)
        await nc.close()

    asyncio.run(go())


def stream_messages(url: str, name: str) -> list[tuple[int, str, bytes, dict[str, str] | None]]:
    async def go() -> list[tuple[int, str, bytes, dict[str, str] | None]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        info = await js.stream_info(name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await js.get_msg(name, seq)
            out.append((m.seq or 0, m.subject or "", m.data or b"", m.headers))
        await nc.close()
        return out

    return asyncio.run(go())


def run_sink(items: list[Outgoing], sink: NatsSink | JetStreamSink, batch_size: int = 100) -> None:
    flow = Dataflow("sink")
    op.output("out", op.input("inp", flow, TestingSource(items, batch_size=batch_size)), sink)
    run_main(flow)


def test_nats_sink_publishes_subject_data_headers_in_order(nats_server: LocalNatsServer) -> None:
    base = uniq("sink.core.")
    loop = NatsLoop().start()
    try:
        nc = loop.connect(cfg(nats_server))
        sub = loop.run(nc.subscribe(f"{base}.>"))
        loop.run(nc.flush())
        items = [
            Outgoing(f"{base}.s{i % 3}", str(i).encode(), {"i": str(i)} if i % 2 else None)
            for i in range(250)
        ]
        sink = NatsSink(cfg(nats_server))
        run_sink(items, sink, batch_size=64)

        async def collect(n: int) -> list[tuple[str, bytes, dict[str, str] | None]]:
            return [
                (m.subject, m.data, m.headers)
                for m in [await sub.next_msg(timeout=2) for _ in range(n)]
            ]

        got = loop.run(collect(250), timeout_s=10)
        assert got == [(o.subject, o.data, o.headers) for o in items]
        assert sink.stats[0].published == 250
        assert sink.stats[0].batches == 4  # one flush per batch of 64
        loop.run(nc.close())
    finally:
        loop.stop()


def test_jetstream_sink_stores_everything_and_dedups_a_rerun(nats_server: LocalNatsServer) -> None:
    stream = uniq("SINKJS")
    subject = stream.lower()
    add_stream(nats_server.url, stream, [f"{subject}.>"])
    items = [Outgoing(f"{subject}.s{i % 2}", str(i).encode(), {"k": "v"}) for i in range(300)]
    first = JetStreamSink(cfg(nats_server), msg_id=lambda o: o.data.decode(), stream=stream)
    run_sink(items, first)
    # A replay of the same input (e.g. after a crash) must not store anything twice.
    second = JetStreamSink(cfg(nats_server), msg_id=lambda o: o.data.decode(), stream=stream)
    run_sink(items, second)

    stored = stream_messages(nats_server.url, stream)
    assert [(s, d) for _, s, d, _ in stored] == [(o.subject, o.data) for o in items]
    headers = stored[0][3] or {}
    assert headers["k"] == "v" and headers[MSG_ID_HEADER] == "0"
    assert headers["Nats-Expected-Stream"] == stream
    assert first.stats[0].duplicates == 0
    assert second.stats[0].duplicates == 300


def test_jetstream_sink_takes_the_msg_id_header_first(nats_server: LocalNatsServer) -> None:
    stream = uniq("SINKHDR")
    subject = stream.lower()
    add_stream(nats_server.url, stream, [subject])
    items = [
        Outgoing(subject, b"a", {MSG_ID_HEADER: "same"}),
        Outgoing(subject, b"b", {MSG_ID_HEADER: "same"}),
        Outgoing(subject, b"c", {MSG_ID_HEADER: "other"}),
    ]
    sink = JetStreamSink(cfg(nats_server), msg_id=lambda o: "never-used")
    part = sink.build("out", 0, 1)
    try:
        part.write_batch(items)
    finally:
        part.close()
    assert [d for _, _, d, _ in stream_messages(nats_server.url, stream)] == [b"a", b"c"]


def test_jetstream_sink_without_msg_id_names_the_step(nats_server: LocalNatsServer) -> None:
    part = JetStreamSink(cfg(nats_server)).build("out", 0, 1)
    try:
        with pytest.raises(ValueError, match=r"out jetstream sink.*Nats-Msg-Id.*hint"):
            part.write_batch([Outgoing("x", b"no id")])
    finally:
        part.close()


def test_jetstream_sink_waits_out_a_server_restart(own_nats_server: LocalNatsServer) -> None:
    server = own_nats_server
    add_stream(server.url, "SINKRESTART", ["sr.>"])
    sink = JetStreamSink(cfg(server), msg_id=lambda o: o.data.decode(), ack_timeout_s=1.0)
    part = sink.build("out", 0, 1)
    try:
        part.write_batch([Outgoing("sr.a", str(i).encode()) for i in range(100)])
        server.stop(kill=True, keep_store=True)
        # Bring the server back while write_batch is already waiting for it.
        threading.Timer(0.5, server.restart).start()
        part.write_batch([Outgoing("sr.a", str(i).encode()) for i in range(100, 200)])
    finally:
        part.close()
    stored = stream_messages(server.url, "SINKRESTART")
    assert [int(d) for _, _, d, _ in stored] == list(range(200))
    assert sink.stats[0].reconnects >= 1
