"""PipelinedNatsSink against a real nats-server: order, the epoch guarantee, kill -9.

The sink returns from ``write_batch`` before the batch is flushed and waits for the
flush in ``snapshot()`` instead (see its docstring). What must hold:

* messages arrive complete and in order per key;
* ``snapshot()`` does not return while a written batch is not on the server (here: the
  server is down), so Bytewax cannot commit an epoch ahead of its messages;
* a flow killed with -9 at random points and resumed from its recovery store still
  delivers every input message (at least once).

The flow under kill runs in a child process: this file doubles as its entry point
(``python -m tests.sinks.test_nats_pipelined <url> <recovery dir> <count>``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import nats
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from nats.aio.msg import Msg

from schemas.transport import Message, Outgoing
from sinks.nats import PipelinedNatsSink
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer

ROOT = Path(__file__).resolve().parents[2]


def cfg(url: str) -> NatsConfig:
    return NatsConfig(servers=(url,), reconnect_wait_s=0.1)


def add_stream(url: str, name: str, subjects: list[str]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(name=name, subjects=subjects)
        await nc.close()

    asyncio.run(go())


def stored(url: str, name: str) -> list[tuple[str, bytes, dict[str, str] | None]]:
    async def go() -> list[tuple[str, bytes, dict[str, str] | None]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        info = await js.stream_info(name)
        out = []
        if info.state.messages:
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(name, seq)
                out.append((m.subject or "", m.data or b"", m.headers))
        await nc.close()
        return out

    return asyncio.run(go())


def stored_count(url: str, name: str) -> int:
    async def go() -> int:
        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(name)).state.messages)
        finally:
            await nc.close()

    return asyncio.run(go())


def wait_until(pred: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("partitions", [1, 2])
def test_pipelined_sink_delivers_everything_in_order_with_headers(
    nats_server: LocalNatsServer, partitions: int
) -> None:
    stream = f"PIPEORDER{partitions}"
    add_stream(nats_server.url, stream, [f"pipeorder{partitions}.>"])
    items = [
        Outgoing(f"pipeorder{partitions}.k{i % 3}", str(i).encode(), {"X-N": str(i)})
        for i in range(2_000)
    ]
    sink = PipelinedNatsSink(cfg(nats_server.url), partitions=partitions)
    flow = Dataflow("pipelined")
    src = op.input("inp", flow, TestingSource(items, batch_size=70))
    op.output("out", op.key_on("key", src, lambda o: o.subject), sink)
    run_main(flow, epoch_interval=timedelta(milliseconds=5))
    wait_until(lambda: stored_count(nats_server.url, stream) >= 2_000, "2,000 stored")
    got = stored(nats_server.url, stream)
    assert sorted(int(d) for _, d, _ in got) == list(range(2_000))
    for key in (f"pipeorder{partitions}.k{k}" for k in range(3)):
        seq = [int(d) for s, d, _ in got if s == key]
        assert seq == sorted(seq), f"{key} out of order"
    assert all(h is not None and h["X-N"] == d.decode() for _, d, h in got)
    assert sum(s.published for s in sink.stats.values()) == 2_000


def test_snapshot_waits_until_the_written_batch_reached_the_server(
    own_nats_server: LocalNatsServer,
) -> None:
    server = own_nats_server
    add_stream(server.url, "PIPESNAP", ["pipesnap.>"])
    sink = PipelinedNatsSink(cfg(server.url), outage_timeout_s=30.0)
    part = sink.build_part("out", "nats-0", None)
    try:
        part.write_batch([Outgoing("pipesnap.a", str(i).encode()) for i in range(100)])
        assert part.snapshot() is None
        assert stored_count(server.url, "PIPESNAP") == 100
        server.stop(kill=True, keep_store=True)
        # Once the client knows (else the batch may go to the dead socket, which the
        # flush reports only after its timeout, failing the step: a different case).
        wait_until(lambda: sink.stats["nats-0"].disconnects >= 1, "the disconnect")
        # write_batch does not wait for this batch: the server is down.
        part.write_batch([Outgoing("pipesnap.a", str(i).encode()) for i in range(100, 200)])
        done = threading.Event()

        def snap() -> None:
            part.snapshot()
            done.set()

        snapper = threading.Thread(target=snap, daemon=True)
        snapper.start()
        # While the server is down the batch cannot be flushed, so the epoch's snapshot
        # must still be waiting.
        assert not done.wait(1.0), "snapshot() returned with the batch unflushed"
        server.restart()
        snapper.join(40)
        assert done.is_set()
        # The snapshot returned only after the flush: the server has the whole batch.
        wait_until(lambda: stored_count(server.url, "PIPESNAP") >= 200, "200 stored")
    finally:
        part.close()
    assert [int(d) for _, d, _ in stored(server.url, "PIPESNAP")] == list(range(200))


# -- kill -9 ---------------------------------------------------------------------------------
TOTAL = 20_000


def _child_flow(url: str, rec_dir: str, count: int) -> None:
    """Relay the KIN stream to kout.* through PipelinedNatsSink, with recovery."""
    from bytewax.recovery import RecoveryConfig
    from bytewax.run import cli_main

    from sources.nats import JetStreamSource

    source = JetStreamSource(
        "KIN", "kin.>", cfg(url), batch_size=200, stop_after=count, idle_timeout_s=5.0
    )

    def relay(m: Message) -> tuple[str, Outgoing]:
        out = Outgoing("kout." + m.subject[4:], m.data)
        return out.subject, out

    flow = Dataflow("pipelined_kill")
    stream = op.map("relay", op.input("inp", flow, source), relay)
    op.output("out", stream, PipelinedNatsSink(cfg(url)))
    cli_main(
        flow,
        epoch_interval=timedelta(milliseconds=20),
        recovery_config=RecoveryConfig(Path(rec_dir)),
    )


def test_killed_flow_with_the_pipelined_sink_loses_nothing(
    own_nats_server: LocalNatsServer, tmp_path: Path
) -> None:
    from bytewax.recovery import init_db_dir

    url = own_nats_server.url
    add_stream(url, "KIN", ["kin.>"])
    add_stream(url, "KOUT", ["kout.>"])

    async def fill() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=4000)
        for i in range(TOTAL):
            await js.publish_async(f"kin.s{i % 8}", str(i).encode())
        await js.publish_async_completed()
        await nc.close()

    asyncio.run(fill())
    rec = tmp_path / "rec"
    rec.mkdir()
    init_db_dir(rec, 1)
    log = tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "tests.sinks.test_nats_pipelined", url, str(rec), str(TOTAL)]

    def start() -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)

    kills = 0
    targets = (TOTAL // 5, TOTAL // 2, 4 * TOTAL // 5)
    for target in targets:
        proc = start()
        deadline = time.monotonic() + 120
        while stored_count(url, "KOUT") < target and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
    # Run to the end: a resumed run starts after its last committed epoch and stops
    # once idle.
    proc = start()
    assert proc.wait(180) == 0, log.read_text()[-3000:]
    assert kills >= 1, "the flow finished before any kill"
    out = _out(url)
    missing = set(range(TOTAL)) - set(out)
    assert not missing, f"{len(missing)} messages lost, e.g. {sorted(missing)[:10]}"
    # Some run resumed from a snapshot: had every run started over, each kill would
    # have replayed all it had relayed.
    assert len(out) - TOTAL < sum(targets[:kills]), (len(out), kills)


def _out(url: str) -> list[int]:
    """Every payload stored in KOUT (duplicates included), read with one push consumer."""

    async def go() -> list[int]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        n = int((await js.stream_info("KOUT")).state.messages)
        got: list[int] = []
        done = asyncio.Event()

        async def cb(msg: Msg) -> None:
            got.append(int(msg.data))
            if len(got) >= n:
                done.set()

        sub = await js.subscribe("kout.>", ordered_consumer=True, cb=cb)
        if n:
            await asyncio.wait_for(done.wait(), 60)
        await sub.unsubscribe()
        await nc.close()
        return got

    return asyncio.run(go())


if __name__ == "__main__":
    _child_flow(sys.argv[1], sys.argv[2], int(sys.argv[3]))
