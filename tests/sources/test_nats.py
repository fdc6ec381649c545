"""NatsSource and JetStreamSource against a real nats-server (see tests/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import nats
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, cluster_main, run_main

from schemas.transport import RECV_NS_HEADER, Message
from sources.nats import JetStreamSource, NatsSource
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer

_ids = itertools.count()


def uniq(prefix: str) -> str:
    """A fresh subject/stream token per test, since the session server is shared."""
    return f"{prefix}{next(_ids)}x{int(time.time() * 1000) % 100000}"


def cfg(server: LocalNatsServer) -> NatsConfig:
    return NatsConfig(servers=(server.url,), reconnect_wait_s=0.1, connect_timeout_s=2.0)


def publish(url: str, msgs: Iterable[tuple[str, bytes, dict[str, str] | None, str]]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        for subject, data, headers, reply in msgs:
            await nc.publish(subject, data, reply=reply, headers=headers)
        await nc.flush()
        await nc.close()

    asyncio.run(go())


def js_setup(url: str, stream: str, subjects: list[str], msgs: list[tuple[str, bytes]]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=subjects)
        for subject, data in msgs:
            await js.publish(subject, data)
        await nc.close()

    asyncio.run(go())


def js_publish(url: str, msgs: list[tuple[str, bytes]]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for subject, data in msgs:
            await js.publish(subject, data)
        await nc.close()

    asyncio.run(go())


def when_ready(source: Any, parts: int, fn: Callable[[], None]) -> threading.Thread:
    """Run ``fn`` in a thread once every partition of ``source`` has subscribed."""

    def waiter() -> None:
        deadline = time.monotonic() + 10
        while len(source.stats) < parts and time.monotonic() < deadline:
            time.sleep(0.005)
        fn()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    return t


def read(
    part: StatefulSourcePartition[Message, Any], n: int, timeout_s: float = 10
) -> list[Message]:
    """Poll a partition like Bytewax does until ``n`` messages came out."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} messages"
        batch = list(part.next_batch())
        out.extend(batch)
        if not batch:
            time.sleep(0.002)
    return out


def build(source: FixedPartitionedSource[Message, Any], part: str, state: Any = None) -> Any:
    return source.build_part("inp", part, state)


# -- core NATS ----------------------------------------------------------------------------
def test_core_flow_carries_subject_data_headers_reply_and_recv_time(
    nats_server: LocalNatsServer,
) -> None:
    base = uniq("core.fields.")
    source = NatsSource(f"{base}.>", cfg(nats_server), clock=lambda: 42, stop_after=3)
    out: list[Message] = []
    flow = Dataflow("core_fields")
    op.output("out", op.input("inp", flow, source), TestingSink(out))
    msgs = [
        (f"{base}.a", b"one", {RECV_NS_HEADER: "1700000000123456789", "k": "v"}, "reply.here"),
        (f"{base}.b", b"two", {RECV_NS_HEADER: "not-a-number"}, ""),
        (f"{base}.c", b"three", None, ""),
    ]
    t = when_ready(source, 1, lambda: publish(nats_server.url, msgs))
    run_main(flow)
    t.join()
    assert [(m.subject, m.data) for m in out] == [
        (f"{base}.a", b"one"),
        (f"{base}.b", b"two"),
        (f"{base}.c", b"three"),
    ]
    assert out[0].headers == {RECV_NS_HEADER: "1700000000123456789", "k": "v"}
    assert out[0].reply == "reply.here"
    assert out[0].ts_recv == 1700000000123456789
    assert out[1].ts_recv == 42  # header present but not an int: the clock decides
    assert out[2].ts_recv == 42 and out[2].headers is None and out[2].reply is None
    assert all(m.seq is None for m in out)


def test_core_hash_partitions_two_workers_keep_subject_order_exactly_once(
    nats_server: LocalNatsServer,
) -> None:
    base = uniq("core.hash.")
    subjects = [f"{base}.s{i}" for i in range(8)]
    per_subject = 40
    source = NatsSource(f"{base}.>", cfg(nats_server), hash_partitions=2, idle_timeout_s=1.0)
    assert source.list_parts() == [f"{base}.>@0/2", f"{base}.>@1/2"]
    out: list[Message] = []
    flow = Dataflow("core_hash")
    op.output("out", op.input("inp", flow, source), TestingSink(out))
    msgs = [(s, str(n).encode(), None, "") for n in range(per_subject) for s in subjects]
    t = when_ready(source, 2, lambda: publish(nats_server.url, msgs))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    t.join()

    assert len(out) == len(msgs)
    for s in subjects:
        assert [int(m.data) for m in out if m.subject == s] == list(range(per_subject))
    # Each partition kept exactly the subjects that hash to it (crc32 mod 2).
    expected = [0, 0]
    for s in subjects:
        expected[zlib.crc32(s.encode()) % 2] += per_subject
    got = [source.stats[f"{base}.>@{i}/2"].delivered for i in range(2)]
    assert got == expected
    assert sum(st.skipped_other_partition for st in source.stats.values()) == len(msgs)


def test_core_queue_group_shares_messages(nats_server: LocalNatsServer) -> None:
    subject = uniq("core.queue.")
    a = NatsSource(subject, cfg(nats_server), queue="q")
    b = NatsSource(subject, cfg(nats_server), queue="q")
    pa, pb = build(a, subject), build(b, subject)
    try:
        publish(nats_server.url, [(subject, str(i).encode(), None, "") for i in range(200)])
        deadline = time.monotonic() + 5
        got: list[Message] = []
        while len(got) < 200 and time.monotonic() < deadline:
            got += pa.next_batch() + pb.next_batch()
            time.sleep(0.002)
        assert sorted(int(m.data) for m in got) == list(range(200))
        assert a.stats[subject].delivered + b.stats[subject].delivered == 200
    finally:
        pa.close()
        pb.close()


def test_core_source_reconnects_after_server_restart(own_nats_server: LocalNatsServer) -> None:
    server = own_nats_server
    source = NatsSource("core.restart", cfg(server))
    part = build(source, "core.restart")
    try:
        publish(server.url, [("core.restart", b"before", None, "")])
        assert [m.data for m in read(part, 1)] == [b"before"]
        server.restart(kill=True)
        stats = source.stats["core.restart"]
        deadline = time.monotonic() + 10
        while stats.reconnects < 1:
            assert time.monotonic() < deadline, "source did not reconnect"
            time.sleep(0.02)
        publish(server.url, [("core.restart", b"after", None, "")])
        assert [m.data for m in read(part, 1)] == [b"after"]
        assert stats.disconnects >= 1 and stats.reconnects >= 1
    finally:
        part.close()


def test_empty_partition_asks_to_be_woken_later(nats_server: LocalNatsServer) -> None:
    subject = uniq("core.idle.")
    source = NatsSource(subject, cfg(nats_server), idle_wait=timedelta(milliseconds=50))
    part = build(source, subject)
    default = build(NatsSource(subject, cfg(nats_server)), subject)
    try:
        before = datetime.now(UTC)
        assert part.next_batch() == []
        awake = part.next_awake()
        assert awake is not None and awake >= before + timedelta(milliseconds=50)
        assert default.next_batch() == []
        assert default.next_awake() is None  # Bytewax's own 1 ms back-off
        publish(nats_server.url, [(subject, b"x", None, "")])
        assert [m.data for m in read(part, 1)] == [b"x"]
        assert part.next_awake() is None  # busy: poll again at once
    finally:
        part.close()
        default.close()


def test_bad_arguments_name_the_step() -> None:
    with pytest.raises(ValueError, match=r"NatsSource.*hint"):
        NatsSource([], NatsConfig())
    with pytest.raises(ValueError, match=r"hash_partitions.*hint"):
        NatsSource("a", NatsConfig(), hash_partitions=0)


# -- JetStream ----------------------------------------------------------------------------
def test_jetstream_flow_reads_stream_with_sequences(nats_server: LocalNatsServer) -> None:
    stream = uniq("JSFLOW")
    base = stream.lower()
    js_setup(
        nats_server.url,
        stream,
        [f"{base}.>"],
        [(f"{base}.s{i % 3}", str(i).encode()) for i in range(30)],
    )
    source = JetStreamSource(stream, f"{base}.>", cfg(nats_server), stop_after=30)
    out: list[Message] = []
    flow = Dataflow("js_flow")
    op.output("out", op.input("inp", flow, source), TestingSink(out))
    run_main(flow)
    assert [m.seq for m in out] == list(range(1, 31))
    assert [int(m.data) for m in out] == list(range(30))
    assert out[4].subject == f"{base}.s1"


def test_jetstream_resumes_after_the_snapshot_sequence(nats_server: LocalNatsServer) -> None:
    stream = uniq("JSRESUME")
    subject = stream.lower()
    js_setup(nats_server.url, stream, [subject], [(subject, str(i).encode()) for i in range(1, 21)])
    # batch_size=1 so the snapshot falls mid-stream, after exactly 7 messages.
    source = JetStreamSource(stream, subject, cfg(nats_server), batch_size=1)
    first = build(source, subject)
    try:
        got = read(first, 7)
        assert [m.seq for m in got] == list(range(1, 8))
        state = first.snapshot()
    finally:
        first.close()
    assert state == 7
    resumed = build(source, subject, state)
    try:
        got = read(resumed, 13)
        assert [m.seq for m in got] == list(range(8, 21))
        assert [int(m.data) for m in got] == list(range(8, 21))
        assert resumed.snapshot() == 20
    finally:
        resumed.close()


def test_jetstream_hash_partitions_split_subjects(nats_server: LocalNatsServer) -> None:
    stream = uniq("JSHASH")
    base = stream.lower()
    subjects = [f"{base}.s{i}" for i in range(6)]
    msgs = [(s, f"{s}:{n}".encode()) for n in range(10) for s in subjects]
    js_setup(nats_server.url, stream, [f"{base}.>"], msgs)
    source = JetStreamSource(stream, f"{base}.>", cfg(nats_server), hash_partitions=2)
    parts = [build(source, p) for p in source.list_parts()]
    try:
        want = [sum(1 for s, _ in msgs if zlib.crc32(s.encode()) % 2 == i) for i in range(2)]
        got = [read(p, n) for p, n in zip(parts, want, strict=True)]
        for i, batch in enumerate(got):
            assert {zlib.crc32(m.subject.encode()) % 2 for m in batch} == {i}
            assert [m.seq for m in batch] == sorted(m.seq for m in batch)  # type: ignore[type-var]
        assert sorted(m.seq for b in got for m in b) == list(range(1, 61))  # type: ignore[type-var]
    finally:
        for p in parts:
            p.close()


@pytest.mark.parametrize("durable", [None, "relay"])
def test_jetstream_loses_nothing_across_server_restart(
    own_nats_server: LocalNatsServer, durable: str | None
) -> None:
    server = own_nats_server
    before, after = 3000, 300
    js_setup(
        server.url, "RESTART", ["restart.>"], [(f"restart.s{i % 4}", b"x") for i in range(before)]
    )
    source = JetStreamSource(
        "RESTART", "restart.>", cfg(server), durable=durable, batch_size=50, max_pending=200
    )
    part = build(source, "restart.>")
    try:
        # Kill the server while most of the stream is still in flight or unsent.
        got = read(part, 100)
        server.restart(kill=True)
        js_publish(server.url, [(f"restart.s{i % 4}", b"y") for i in range(after)])
        got += read(part, before + after - len(got), timeout_s=20)
        assert [m.seq for m in got] == list(range(1, before + after + 1))
        assert source.stats["restart.>"].reconnects >= 1
        time.sleep(0.2)
        assert part.next_batch() == []  # and nothing twice
    finally:
        part.close()


def test_jetstream_durable_keeps_position_on_the_server(nats_server: LocalNatsServer) -> None:
    stream = uniq("JSDUR")
    subject = stream.lower()
    js_setup(nats_server.url, stream, [subject], [(subject, str(i).encode()) for i in range(1, 11)])
    source = JetStreamSource(stream, subject, cfg(nats_server), durable="dur", batch_size=1)
    first = build(source, subject)
    try:
        assert [m.seq for m in read(first, 4)] == [1, 2, 3, 4]
    finally:
        first.close()
    # No Bytewax state: the durable's ack floor says where to go on.
    again = build(source, subject)
    try:
        assert [m.seq for m in read(again, 6)] == list(range(5, 11))
    finally:
        again.close()


def test_jetstream_missing_stream_names_the_step(nats_server: LocalNatsServer) -> None:
    source = JetStreamSource("NO_SUCH_STREAM", "nope.>", cfg(nats_server))
    with pytest.raises(LookupError, match=r"NO_SUCH_STREAM.*hint"):
        build(source, "nope.>")
