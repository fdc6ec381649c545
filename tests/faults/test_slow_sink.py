"""A stalled sink: backpressure reaches JetStream, so memory stays bounded and the backlog shows.

The flow is JetStream source -> sink whose ``write_batch`` blocks until the test lets it
go (a stalled database, a full disk waiting for an operator). Bytewax runs the sink on
the worker thread, so the worker stops pulling from the source; the source's buffer
stops at ``max_pending``, its subscription callback waits, flow control holds the
consumer, and the rest of the backlog stays on the server, where it is visible as the
consumer's pending count.

Measured here (10,000 messages of 8 KB, ``max_pending=500``, sink stalled 2 s):

* durable consumer (ack policy "all", ``max_ack_pending`` = 1,000): the process grew
  ~15 MB and the server kept ~8,950 messages pending: bounded and visible;
* ordered push consumer (the JetStreamSource default): nats-py's own ordered consumer
  answered flow control before the worker had drained anything, so the server pushed
  the whole stream into its subscription queue (server pending 0, process +96 MB).
  ``sources/nats.py`` now answers flow control only once the worker drained what came
  before it: the process grew ~0 MB and the server kept ~9,740 messages pending.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import bytewax.operators as op
import nats
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from schemas.transport import Message
from sources.nats import JetStreamSource
from tests.faults import add_streams
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer

TOTAL = 10_000
PAYLOAD = 8_000
MAX_PENDING = 500
BATCH = 100
#: The stream is ~80 MB; a bounded source holds a small fraction of it.
RSS_BOUND_MB = 40


class _GatedSink(DynamicSink[Message]):
    """Blocks every write until ``gate`` is set; records sequences written."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seqs: list[int] = []

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Message]:
        sink = self

        class Part(StatelessSinkPartition[Message]):
            def write_batch(self, items: list[Message]) -> None:
                sink.entered.set()
                sink.gate.wait()
                sink.seqs.extend(m.seq or 0 for m in items)

        return Part()


def _server_backlog(url: str, stream: str) -> int:
    """Messages the server still holds for our consumer (undelivered), as an operator sees it."""

    async def go() -> int:
        nc = await nats.connect(url)
        try:
            infos = await nc.jetstream().consumers_info(stream)
            return sum(int(ci.num_pending or 0) for ci in infos)
        finally:
            await nc.close()

    return asyncio.run(go())


def _wait(pred: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _rss_mb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 1_000_000


@pytest.mark.parametrize(
    "durable",
    [
        "slow",
        None,
    ],
    ids=["durable", "ordered"],
)
def test_stalled_sink_keeps_the_backlog_on_the_server_and_loses_nothing(
    own_nats_server: LocalNatsServer, durable: str | None
) -> None:
    url = own_nats_server.url
    add_streams(url, {"SLOW": ["slow.>"]})

    async def fill() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=2000)
        futs = [await js.publish_async(f"slow.s{i % 8}", b"x" * PAYLOAD) for i in range(TOTAL)]
        await asyncio.gather(*futs)
        await nc.close()

    asyncio.run(fill())
    source = JetStreamSource(
        "SLOW",
        "slow.>",
        NatsConfig(servers=(url,)),
        durable=durable,
        batch_size=BATCH,
        max_pending=MAX_PENDING,
        idle_timeout_s=3.0,
    )
    sink = _GatedSink()
    flow = Dataflow("slow_sink")
    op.output("out", op.input("inp", flow, source), sink)
    rss0 = _rss_mb()
    thread = threading.Thread(target=run_main, args=(flow,), daemon=True)
    thread.start()
    try:
        assert sink.entered.wait(30), "the sink was never called"
        stats = next(iter(source.stats.values()))
        time.sleep(2.0)  # the stall lasts
        grown = _rss_mb() - rss0
        server_backlog = _server_backlog(url, "SLOW")
        # The source's own buffer respects max_pending (plus one batch in the worker).
        assert stats.received - stats.delivered <= MAX_PENDING + BATCH + 1, stats
        # Visible: most of the backlog is still pending on the server ...
        assert server_backlog > TOTAL // 2, (server_backlog, stats)
        # ... and so not in our memory.
        assert grown < RSS_BOUND_MB, f"process grew {grown} MB during the stall"
    finally:
        sink.gate.set()
        thread.join(60)
    assert not thread.is_alive()
    assert sink.seqs == list(range(1, TOTAL + 1))
