"""nats-server restart mid-stream: JetStream input loses nothing, core NATS reports its gap.

Both run as whole flows (Bytewax in a thread) against a private nats-server that is
killed (SIGKILL, as a crash) and started again on the same port and store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import bytewax.operators as op
import nats
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.normalize import build_flow
from flows.pipeline import STREAMS, build_normalize_jetstream
from schemas.transport import Message, Outgoing
from sources.nats import NatsSource
from tests.faults import add_streams, js_publish, read_stream, recorded_messages, stream_count
from trade2026.accounting import Accounting
from trade2026.flowregistry import RunContext
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer


def _wait(pred: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _publish(url: str, subject: str, values: range) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        for i in values:
            await nc.publish(subject, str(i).encode())
        await nc.flush()
        await nc.close()

    asyncio.run(go())


def test_jetstream_flow_loses_and_repeats_nothing_across_a_server_crash(
    own_nats_server: LocalNatsServer,
) -> None:
    server = own_nats_server
    url = server.url
    add_streams(url, STREAMS)
    msgs = recorded_messages()
    assert js_publish(url, msgs) == len(msgs)
    expected: list[Outgoing] = []
    run_main(build_flow(TestingSource([m for _, m in msgs]), TestingSink(expected)))

    config = NatsConfig(servers=(url,), reconnect_wait_s=0.1)
    ctx = RunContext(nats=config, accounting=Accounting(), idle_timeout_s=4.0)
    flow, source, sink = build_normalize_jetstream(ctx)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_main(flow)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait(lambda: stream_count(url, "MD") >= len(msgs) // 4, "a quarter of the output")
    server.restart(kill=True, down_s=0.5)
    thread.join(90)
    assert not thread.is_alive() and not errors, errors

    got = read_stream(url, "MD") + read_stream(url, "DLQ")
    assert Counter(got) == Counter((o.subject, o.data) for o in expected)
    src = next(iter(source.stats.values()))
    assert src.disconnects >= 1 and src.reconnects >= 1
    snk = next(iter(sink.stats.values()))
    assert snk.disconnects >= 1 and snk.reconnects >= 1
    assert ctx.accounting.stage("normalize").records_in >= len(msgs)


def test_core_nats_flow_reconnects_and_reports_the_outage_as_a_possible_gap(
    own_nats_server: LocalNatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = own_nats_server
    url = server.url
    subject = "core.gap"
    # A slow reconnect makes the subscriber come back after the publisher below.
    config = NatsConfig(servers=(url,), reconnect_wait_s=2.0)
    source = NatsSource(subject, config, idle_timeout_s=4.0)
    got: list[Message] = []
    flow = Dataflow("core_gap")
    op.output("out", op.input("inp", flow, source), TestingSink(got))
    thread = threading.Thread(target=run_main, args=(flow,), daemon=True)
    caplog.set_level(logging.WARNING, logger="sources.nats")
    thread.start()
    _wait(lambda: bool(source.stats), "the subscription")
    stats = source.stats[subject]

    def values() -> set[int]:
        return {int(m.data) for m in list(got)}

    _publish(url, subject, range(0, 100))
    _wait(lambda: len(got) >= 100, "messages before the restart")
    server.restart(kill=True, down_s=0.3)
    _publish(url, subject, range(100, 200))  # while our subscriber is still away
    _wait(lambda: stats.reconnects >= 1, "the reconnect")
    _publish(url, subject, range(200, 300))
    _wait(lambda: values() >= set(range(200, 300)), "messages after the reconnect")
    thread.join(30)
    assert not thread.is_alive()

    seen = values()
    assert set(range(100)) <= seen and set(range(200, 300)) <= seen
    lost = set(range(100, 200)) - seen
    # Core NATS is at-most-once: what was published while we were away is gone, and the
    # source says so (counters and a warning) rather than pretending nothing happened.
    assert lost, "expected the messages published during the outage to be lost"
    assert stats.disconnects >= 1 and stats.reconnects >= 1
    assert "at-most-once" in caplog.text
