"""The sources' fast path (raw deliveries from nats-py's parser) against the callback path.

The fast path hooks a nats-py internal, so it must give exactly what the public callback
path gives: same subjects, payloads, headers, reply subjects, receive times and stream
sequences, and the same holding back when the worker does not drain. Both paths run
here against a real nats-server.
"""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from schemas.transport import RECV_NS_HEADER, Message
from sources.nats import (
    FAST_PATH_SUPPORTED,
    JetStreamSource,
    NatsSource,
    _js_seqs,
    _parse_headers,
)
from tests.sources.test_nats import build, cfg, publish, read, uniq
from trade2026.natsserver import LocalNatsServer


def _fields(m: Message) -> tuple[object, ...]:
    return (m.subject, m.data, m.ts_recv, m.headers, m.reply, m.seq)


def test_this_nats_py_takes_the_fast_path() -> None:
    # The fast path is pinned to the nats-py minor versions it was tested with; the
    # venv must be one of them, or the tests below only compare the callback path
    # with itself.
    assert FAST_PATH_SUPPORTED


def test_js_seqs_reads_both_ack_subject_layouts() -> None:
    v1 = "$JS.ACK.MD.cons.1.1234.56.1700000000000000000.7"
    v2 = "$JS.ACK.hub.ACCHASH.MD.cons.1.1234.56.1700000000000000000.7.tok"
    assert _js_seqs(v1) == (1234, 56)
    assert _js_seqs(v1.encode()) == (1234, 56)
    assert _js_seqs(v2) == (1234, 56)
    assert _js_seqs(v2.encode()) == (1234, 56)


def test_header_blocks_parse_like_nats_py() -> None:
    assert _parse_headers(b"NATS/1.0\r\nNats-Msg-Id: 42\r\nT26-Recv-Ns: 7\r\n\r\n") == {
        "Nats-Msg-Id": "42",
        "T26-Recv-Ns": "7",
    }
    assert _parse_headers(
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 5\r\nNats-Last-Stream: 9\r\n\r\n"
    ) == {
        "Status": "100",
        "Description": "Idle Heartbeat",
        "Nats-Last-Consumer": "5",
        "Nats-Last-Stream": "9",
    }
    assert _parse_headers(b"NATS/1.0 100 FlowControl Request\r\n\r\n") == {
        "Status": "100",
        "Description": "FlowControl Request",
    }
    # Names with spaces are dropped, values are stripped and decoded as UTF-8.
    assert _parse_headers(b"NATS/1.0\r\nBad Name: x\r\nK:v \r\nU: \xc3\xa4\r\n\r\n") == {
        "K": "v",
        "U": "\u00e4",
    }
    assert _parse_headers(b"NATS/1.0\r\n\r\n") is None


def test_core_fast_and_callback_paths_give_the_same_messages(
    nats_server: LocalNatsServer,
) -> None:
    subj = uniq("fp")
    sources = {
        fast: NatsSource(f"{subj}.>", cfg(nats_server), fast_path=fast) for fast in (True, False)
    }
    parts = {fast: build(src, f"{subj}.>") for fast, src in sources.items()}
    try:
        msgs = [
            (f"{subj}.a", b"plain", None, ""),
            (f"{subj}.b", b"hdr", {RECV_NS_HEADER: "123", "X-K": "v"}, "inbox.r"),
            (f"{subj}.c", b"", {"Nats-Msg-Id": "9"}, ""),
        ] * 50
        publish(nats_server.url, msgs)
        got = {fast: read(part, len(msgs)) for fast, part in parts.items()}
    finally:
        for part in parts.values():
            part.close()
    # ts_recv comes from the clock for messages without the header: compare the rest.
    for m in got[True]:
        assert m.ts_recv > 0
    strip = [(m.subject, m.data, m.headers, m.reply) for m in got[True]]
    assert strip == [(m.subject, m.data, m.headers, m.reply) for m in got[False]]
    assert strip[:3] == [
        (f"{subj}.a", b"plain", None, None),
        (f"{subj}.b", b"hdr", {RECV_NS_HEADER: "123", "X-K": "v"}, "inbox.r"),
        (f"{subj}.c", b"", {"Nats-Msg-Id": "9"}, None),
    ]
    assert got[True][1].ts_recv == 123


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "callback"])
def test_jetstream_paths_give_the_same_messages_and_keep_headers_is_optional(
    nats_server: LocalNatsServer, fast: bool
) -> None:
    stream = uniq("FP").upper()
    subj = stream.lower()

    async def fill() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{subj}.>"])
        for i in range(300):
            headers = {RECV_NS_HEADER: str(1_000 + i), "Nats-Msg-Id": f"id{i}"}
            await js.publish(f"{subj}.s{i % 3}", str(i).encode(), headers=headers)
        await nc.close()

    asyncio.run(fill())
    out: dict[bool, list[Message]] = {}
    for keep in (True, False):
        source = JetStreamSource(
            stream, f"{subj}.>", cfg(nats_server), fast_path=fast, keep_headers=keep
        )
        part = build(source, f"{subj}.>")
        try:
            out[keep] = read(part, 300)
        finally:
            part.close()
    full, bare = out[True], out[False]
    assert [m.seq for m in full] == list(range(1, 301))
    assert [m.data for m in full] == [str(i).encode() for i in range(300)]
    assert [m.ts_recv for m in full] == [1_000 + i for i in range(300)]
    assert [m.headers for m in full] == [
        {RECV_NS_HEADER: str(1_000 + i), "Nats-Msg-Id": f"id{i}"} for i in range(300)
    ]
    assert all(m.reply is not None and m.reply.startswith("$JS.ACK.") for m in full)
    # Without headers: the same messages and receive times, only no header dict.
    assert [m.headers for m in bare] == [None] * 300
    assert [(m.subject, m.data, m.ts_recv, m.seq) for m in bare] == [
        (m.subject, m.data, m.ts_recv, m.seq) for m in full
    ]


def test_core_fast_path_holds_back_while_the_feed_is_full_and_keeps_order(
    nats_server: LocalNatsServer,
) -> None:
    subj = uniq("hold")
    source = NatsSource(f"{subj}.>", cfg(nats_server), max_pending=50, batch_size=20)
    part = build(source, f"{subj}.>")
    try:
        publish(nats_server.url, [(f"{subj}.a", str(i).encode(), None, "") for i in range(1_000)])
        # The worker is not draining; wait until the client has had every delivery.
        deadline = time.monotonic() + 10
        while part._nc.stats["in_msgs"] < 1_000:
            assert time.monotonic() < deadline, part._nc.stats
            time.sleep(0.01)
        stats = next(iter(source.stats.values()))
        # The feed stops at max_pending (+1); the rest waits, in order, not counted as
        # received until it is taken in.
        assert stats.received <= 51, stats
        got = read(part, 1_000)
    finally:
        part.close()
    assert [int(m.data) for m in got] == list(range(1_000))
    assert stats.slow_consumer_drops == 0
