"""Poison messages and oversized payloads on the JetStream pipeline: dead-lettered, flow goes on.

The flow is the production wiring (:func:`flows.pipeline.build_normalize_jetstream`)
against a real nats-server; what is checked is what the output streams hold afterwards.
"""

from __future__ import annotations

import base64
from collections import Counter

import msgspec
from bytewax.testing import run_main

from flows.pipeline import STREAMS, build_normalize_jetstream
from schemas.canonical import DeadLetter
from schemas.transport import Message
from tests.faults import add_streams, js_publish, read_stream, recorded_messages
from trade2026.accounting import Accounting
from trade2026.flowregistry import RunContext
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer

SUBJECT = "md.raw.binance.ethusdt"
TRADE = b'{"stream":"ethusdt@trade","data":{"e":"trade","E":1723161255342,"s":"ETHUSDT","t":%d,"p":"%s","q":"0.5","T":1723161255342,"m":true,"M":true}}'  # noqa: E501
T_RECV = 1723161255000000000

#: (payload, subject, the reason the normalizer must give)
POISON: list[tuple[bytes, str, str]] = [
    (b"{oops", SUBJECT, "INVALID_JSON"),
    (b"\x00\xff\xfe binary garbage", SUBJECT, "INVALID_JSON"),
    (b"[1,2,3]", SUBJECT, "NOT_AN_OBJECT"),
    (b'{"stream":"ethusdt@trade","data":{"p":"1"}}', SUBJECT, "SCHEMA_MISMATCH"),
    (TRADE % (1, b"NaN"), SUBJECT, "NON_FINITE"),
    (TRADE % (2, b"-5"), SUBJECT, "INVALID_PRICE"),
    (TRADE % (3, b"2600.1"), "md.raw.nosuchvenue.ethusdt", "UNKNOWN_VENUE"),
    # 200 KiB: over the normalizer's 64 KiB limit, under NATS's 1 MiB max payload.
    (b'{"stream":"ethusdt@trade","pad":"' + b"x" * 200_000 + b'"}', SUBJECT, "OVERSIZED"),
]


def test_poison_goes_to_the_dlq_stream_with_its_bytes_and_the_flow_keeps_going(
    own_nats_server: LocalNatsServer,
) -> None:
    url = own_nats_server.url
    add_streams(url, STREAMS)
    good = recorded_messages()[:2000]
    # Poison interleaved with good traffic, and good traffic after the last poison.
    items: list[tuple[str, Message]] = []
    for i, (msg_id, m) in enumerate(good):
        items.append((msg_id, m))
        if i % 200 == 100 and i // 200 < len(POISON):
            data, subject, _ = POISON[i // 200]
            items.append((f"poison{i}", Message(subject, data, T_RECV)))
    assert sum(1 for mid, _ in items if mid.startswith("poison")) == len(POISON)
    assert js_publish(url, items) == len(items)

    acct = Accounting()
    ctx = RunContext(nats=NatsConfig(servers=(url,)), accounting=acct, idle_timeout_s=2.0)
    flow, _, _ = build_normalize_jetstream(ctx)
    run_main(flow)  # returns only when the input went idle: nothing crashed it

    ticks = [s for s, _ in read_stream(url, "MD") if s.startswith("md.ticks.")]
    assert len(ticks) == len(good)
    dead = [msgspec.json.decode(d, type=DeadLetter) for _, d in read_stream(url, "DLQ")]
    assert Counter(d.reason for d in dead) == Counter(r for _, _, r in POISON)
    assert {d.payload for d in dead} == {p for p, _, _ in POISON}
    assert all(d.stage == "normalize" for d in dead)
    oversized = next(d for d in dead if d.reason == "OVERSIZED")
    assert len(oversized.payload) > 200_000 and "bytes" in oversized.detail
    count = acct.stage("normalize")
    assert count.records_in == len(items) and count.dead_lettered == len(POISON)
    assert count.balanced
    # base64 on the wire, as docs/contract.md says
    raw_dlq = read_stream(url, "DLQ")[0][1]
    assert base64.b64encode(dead[0].payload) in raw_dlq
