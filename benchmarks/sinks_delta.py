"""Delta sink and replay throughput.

- NATS -> Delta: ticks in the JetStream ``MD`` stream through the ticks-sink flow, ticks/s;
  target >= 100k/s; the same flow fed in-process (no NATS) shows what the source costs;
- write: decoded canonical ticks (2/3 trades, 1/3 quotes) -> TickTableWriter, in
  batches of ``--batch`` rows (one commit per kind per batch), ticks/s;
- replay (frames): DeltaReplaySource(output="frames") through a trivial Bytewax flow
  that counts rows, ticks/s; target >= 1M/s;
- replay (ticks): the same, materialising canonical Tick structs with exact Decimals.

Writes ``benchmarks/results/sinks_delta.json`` and prints a table. One run, medians of
``--repeat`` repetitions. Usage: ``python -m benchmarks.sinks_delta --ticks 200000``.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_714_521_600 * 10**9


def make_ticks(n: int) -> list[Any]:
    from schemas.canonical import Quote, TradeTick
    from schemas.common import Aggressor
    from sinks.delta import Stamped

    out: list[Any] = []
    for i in range(n):
        ts = T0 + i * 1_000_000
        inst = ("BTCUSDT.BINANCE", "ETHUSDT.BINANCE", "SOLUSDT.BINANCE")[i % 3]
        if i % 3:
            t: Any = TradeTick(
                inst, Decimal(65000 + i % 100) / 10, Decimal("0.001"), Aggressor.BUY, str(i), ts, ts
            )
        else:
            t = Quote(
                inst, Decimal("100.1"), Decimal("2"), Decimal("100.2"), Decimal("3"), i, ts, ts
            )
        out.append(Stamped(f"md.ticks.{inst}", i + 1, t))
    return out


def bench_write(ticks: list[Any], batch: int, root: str) -> float:
    from sinks.delta import DeltaTicksConfig, TickTableWriter

    w = TickTableWriter(DeltaTicksConfig(root=root), kinds=["trade", "quote"])
    t0 = time.perf_counter()
    for off in range(0, len(ticks), batch):
        w.write(ticks[off : off + batch])
    return len(ticks) / (time.perf_counter() - t0)


def bench_replay(root: str, output: str, expect: int) -> float:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    from sources.delta import DeltaReplaySource

    seen = [0]
    flow = Dataflow("bench_replay")
    batches = op.input("in", flow, DeltaReplaySource(root, batch_size=100_000, output=output))  # type: ignore[arg-type]

    def count(b: Any) -> None:
        seen[0] += b.height if output == "frames" else len(b)

    op.inspect("count", batches, lambda _s, b: count(b))
    t0 = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t0
    assert seen[0] == expect, (seen[0], expect)
    return expect / dt


def bench_flow_inprocess(ticks: list[Any], root: str, source_batch: int = 1000) -> float:
    """The ticks-sink flow without NATS: encoded messages in source-sized batches -> Delta.

    The difference to :func:`bench_from_nats` is what the NATS source costs in the same
    process (nats-py parses and hands over every message under the same GIL).
    """
    import msgspec
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.testing import TestingSink, run_main

    from flows.ticks_sink import build_flow
    from schemas.transport import Message
    from sinks.delta import DeltaTicksConfig
    from trade2026.accounting import Accounting

    encode = msgspec.json.Encoder().encode
    msgs = [Message(st.origin, encode(st.tick), st.tick.ts_recv, seq=st.seq) for st in ticks]

    class Part(StatefulSourcePartition[Message, int]):
        def __init__(self) -> None:
            self.at = 0

        def next_batch(self) -> list[Message]:
            if self.at >= len(msgs):
                raise StopIteration
            self.at += source_batch
            return msgs[self.at - source_batch : self.at]

        def snapshot(self) -> int:
            return self.at

    class Source(FixedPartitionedSource[Message, int]):
        def list_parts(self) -> list[str]:
            return ["0"]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Part:
            return Part()

    acc = Accounting()
    flow = build_flow(
        DeltaTicksConfig(root=root), source=Source(), dlq_sink=TestingSink([]), accounting=acc
    )
    t0 = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t0
    assert acc.stage("ticks_sink").out == len(ticks)
    return len(ticks) / dt


def bench_from_nats(ticks: list[Any], root: str) -> float:
    """The production path: ticks in the JetStream ``MD`` stream, the ticks-sink flow, Delta.

    The stream is filled first, then the flow drains it; the time is the flow's run.
    """
    import asyncio

    import msgspec
    from bytewax.testing import run_main

    from flows.pipeline import build_ticks_sink_jetstream, ensure_streams
    from schemas.transport import MSG_ID_HEADER
    from trade2026.accounting import Accounting
    from trade2026.flowregistry import RunContext
    from trade2026.natsconf import NatsConfig
    from trade2026.natsserver import LocalNatsServer

    encode = msgspec.json.Encoder().encode
    with LocalNatsServer() as server:
        config = NatsConfig(servers=(server.url,))

        async def fill() -> None:
            import nats

            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await ensure_streams(js)
            for i, st in enumerate(ticks):
                await nc.publish(st.origin, encode(st.tick), headers={MSG_ID_HEADER: str(i)})
                if i % 10_000 == 0:
                    await nc.flush()
            await nc.flush()
            while (await js.stream_info("MD")).state.messages < len(ticks):
                await asyncio.sleep(0.05)
            await nc.close()

        asyncio.run(fill())
        ctx = RunContext(
            nats=config, accounting=Accounting(), stop_after=len(ticks), idle_timeout_s=30
        )
        flow, _source = build_ticks_sink_jetstream(ctx, root)
        t0 = time.perf_counter()
        run_main(flow)
        dt = time.perf_counter() - t0
    return len(ticks) / dt


@click.command()
@click.option("--ticks", default=200_000, show_default=True)
@click.option("--batch", default=50_000, show_default=True)
@click.option("--repeat", default=3, show_default=True)
def main(ticks: int, batch: int, repeat: int) -> None:
    import pyarrow as pa
    from rich.console import Console
    from rich.table import Table

    # pyarrow imports pandas on its first conversion from Python objects (1-3 s here):
    # a one-off start-up cost that would otherwise land inside the first timed run.
    pa.array([0], pa.int64())
    data = make_ticks(ticks)
    writes, frames, structs, from_nats, in_process = [], [], [], [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as root:
            writes.append(bench_write(data, batch, root))
            frames.append(bench_replay(root, "frames", ticks))
            structs.append(bench_replay(root, "ticks", ticks))
        with tempfile.TemporaryDirectory() as root:
            from_nats.append(bench_from_nats(data, root))
        with tempfile.TemporaryDirectory() as root:
            in_process.append(bench_flow_inprocess(data, root))
    result = {
        "benchmark": "sinks_delta",
        "ticks": ticks,
        "batch_rows": batch,
        "repeat": repeat,
        "python": platform.python_version(),
        "write_ticks_per_s": statistics.median(writes),
        "nats_to_delta_ticks_per_s": statistics.median(from_nats),
        "nats_to_delta_runs": from_nats,
        "flow_in_process_ticks_per_s": statistics.median(in_process),
        "flow_in_process_runs": in_process,
        "replay_frames_ticks_per_s": statistics.median(frames),
        "replay_structs_ticks_per_s": statistics.median(structs),
        "targets": {"write": 100_000, "replay": 1_000_000},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sinks_delta.json").write_text(json.dumps(result, indent=2))
    table = Table(title=f"Delta sink/replay, {ticks:,} ticks, median of {repeat}")
    table.add_column("path")
    table.add_column("ticks/s", justify="right")
    table.add_column("target", justify="right")
    table.add_row(
        "NATS (JetStream MD) -> ticks-sink flow -> Delta",
        f"{result['nats_to_delta_ticks_per_s']:,.0f}",
        "100,000",
    )
    table.add_row(
        "messages in-process -> ticks-sink flow -> Delta (no NATS)",
        f"{result['flow_in_process_ticks_per_s']:,.0f}",
        "-",
    )
    table.add_row("decoded ticks -> Delta writer", f"{result['write_ticks_per_s']:,.0f}", "-")
    table.add_row(
        "replay, frames (bytewax)", f"{result['replay_frames_ticks_per_s']:,.0f}", "1,000,000"
    )
    table.add_row(
        "replay, Tick structs (bytewax)", f"{result['replay_structs_ticks_per_s']:,.0f}", "-"
    )
    Console().print(table)


if __name__ == "__main__":
    main()
