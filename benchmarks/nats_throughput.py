"""How fast can we move messages through NATS from Python, bare and through Bytewax?

Each relay subscribes ``md.raw.>`` and republishes to ``md.out.<rest>`` with no
processing. A publisher *process* sends ``--messages`` 100-byte messages as fast as it
can and a counting subscriber *process* times the relayed ones, so the relay under test
has the process to itself:

* ``bare``: nats-py callback subscription that republishes (the floor of what any
  Python relay costs),
* ``bytewax``: ``NatsSource -> map to Outgoing -> NatsSink`` with ``run_main``,
* ``bytewax_pipelined``: the same with ``PipelinedNatsSink`` (flush overlapped with
  the next batch, waited for at each epoch end).

Also measured in-process: the sinks on their own (``write_batch`` of 1,000 per call;
JetStream waits for every ack; the pipelined core sink with a snapshot every 10
batches), one JetStreamSource partition draining a stream (ordered consumer on the fast
path and on nats-py's callback path, durable with one "ack all" per batch; and a stream
whose messages carry the two headers of a tick, read with and without
``keep_headers``), medians of ``--runs`` interleaved runs, and the source's idle
trade-off: CPU and publish-to-output latency at 100 msg/s for different ``idle_wait``
values (``None`` = Bytewax's own 1 ms back-off).

Rates are messages relayed per second between the first and the last relayed message
seen by the counter. Run: ``python -m benchmarks.nats_throughput`` (about 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

N_PAYLOAD = 100


# -- helper processes ----------------------------------------------------------------------
def _publisher(url: str, n: int, rate: float | None, go: Any) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)
        go.wait()
        pad = b"x" * N_PAYLOAD
        if rate is None:
            for i in range(n):
                await nc.publish(f"md.raw.s{i % 16}", pad)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # let the flusher run
        else:
            start = time.perf_counter()
            for i in range(n):
                await nc.publish(f"md.raw.s{i % 16}", str(time.time_ns()).encode())
                await nc.flush()
                delay = start + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await nc.flush()
        await nc.close()

    asyncio.run(main())


def _counter(url: str, n: int, idle_s: float, ready: Any, out: Any) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)
        first = last = 0.0
        count = 0
        done = asyncio.Event()

        async def cb(msg: Any) -> None:
            nonlocal first, last, count
            now = time.perf_counter()
            if count == 0:
                first = now
            last = now
            count += 1
            if count >= n:
                done.set()

        await nc.subscribe("md.out.>", cb=cb)
        await nc.flush()
        ready.set()
        seen = -1
        while not done.is_set() and seen != count:
            seen = count
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), idle_s)
        await nc.close()
        out.put((count, last - first))

    asyncio.run(main())


# -- relays --------------------------------------------------------------------------------
def _bare_relay(url: str, stop: threading.Event, ready: threading.Event) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)

        async def cb(msg: Any) -> None:
            await nc.publish("md.out." + msg.subject[7:], msg.data, headers=msg.headers)

        await nc.subscribe("md.raw.>", cb=cb)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await nc.flush()
        await nc.close()

    asyncio.run(main())


def _bytewax_relay(
    url: str, stop: threading.Event, ready: threading.Event, pipelined: bool = False
) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    from schemas.transport import Message, Outgoing
    from sinks.nats import NatsSink, PipelinedNatsSink
    from sources.nats import NatsSource
    from trade2026.natsconf import NatsConfig

    config = NatsConfig(servers=(url,))
    source = NatsSource("md.raw.>", config, idle_timeout_s=1.0)

    def relay(m: Message) -> Outgoing:
        return Outgoing("md.out." + m.subject[7:], m.data, m.headers)

    def relay_keyed(m: Message) -> tuple[str, Outgoing]:
        # A partitioned sink takes (key, item): the relay step makes the pair itself.
        return "", Outgoing("md.out." + m.subject[7:], m.data, m.headers)

    flow = Dataflow("relay")
    inp = op.input("inp", flow, source)
    if pipelined:
        op.output("out", op.map("relay", inp, relay_keyed), PipelinedNatsSink(config))
    else:
        op.output("out", op.map("relay", inp, relay), NatsSink(config))

    def signal_ready() -> None:
        while not source.stats:
            time.sleep(0.005)
        ready.set()

    threading.Thread(target=signal_ready, daemon=True).start()
    run_main(flow)


def relay_run(url: str, kind: str, n: int) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    go, counter_ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    counter = ctx.Process(target=_counter, args=(url, n, 2.0, counter_ready, out))
    publisher = ctx.Process(target=_publisher, args=(url, n, None, go))
    counter.start()
    publisher.start()
    counter_ready.wait(20)
    stop, ready = threading.Event(), threading.Event()
    if kind == "bare":
        t = threading.Thread(target=_bare_relay, args=(url, stop, ready), daemon=True)
    else:
        pipelined = kind == "bytewax_pipelined"
        t = threading.Thread(target=_bytewax_relay, args=(url, stop, ready, pipelined), daemon=True)
    t.start()
    ready.wait(20)
    go.set()
    count, span = out.get(timeout=120)
    stop.set()
    publisher.join(30)
    counter.join(30)
    t.join(30)
    return (count / span if span > 0 else 0.0), count


# -- sinks ---------------------------------------------------------------------------------
def sink_rates(url: str, n: int) -> dict[str, float]:
    import nats

    from schemas.transport import Outgoing
    from sinks.nats import JetStreamSink, NatsSink, PipelinedNatsSink
    from trade2026.natsconf import NatsConfig

    async def make_stream() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream("BENCH")
        await js.add_stream(name="BENCH", subjects=["bench.>"])
        await nc.close()

    asyncio.run(make_stream())
    config = NatsConfig(servers=(url,))
    pad = b"x" * N_PAYLOAD
    batches = [
        [Outgoing(f"bench.s{(b * 1000 + i) % 16}", pad) for i in range(1000)]
        for b in range(n // 1000)
    ]
    rates: dict[str, float] = {}
    counter = iter(range(10**12))
    for name, sink in (
        ("core_sink", NatsSink(config)),
        ("jetstream_sink", JetStreamSink(config, msg_id=lambda o: str(next(counter)))),
    ):
        part = sink.build("bench", 0, 1)
        t0 = time.perf_counter()
        for batch in batches:
            part.write_batch(batch)
        rates[name] = len(batches) * 1000 / (time.perf_counter() - t0)
        part.close()
    # Pipelined: the flush overlaps the next batch; snapshot() (an epoch end) every 10
    # batches waits for the outstanding one, as Bytewax would call it.
    pipe = PipelinedNatsSink(config).build_part("bench", "nats-0", None)
    t0 = time.perf_counter()
    for i, batch in enumerate(batches):
        pipe.write_batch(batch)
        if i % 10 == 9:
            pipe.snapshot()
    pipe.snapshot()
    rates["core_sink_pipelined"] = len(batches) * 1000 / (time.perf_counter() - t0)
    pipe.close()
    return rates


# -- JetStream source ----------------------------------------------------------------------
def jetstream_source_rates(url: str, n: int, runs: int) -> dict[str, list[float]]:
    """Read a stream of ``n`` messages through one partition; variants interleaved.

    Two streams: bare 100 B messages, and the same with the two headers every tick
    carries (``Nats-Msg-Id``, ``T26-Recv-Ns``). ``callback`` is the public nats-py
    callback path the fast path replaces; ``no_headers`` is ``keep_headers=False``.
    """
    import nats

    from schemas.transport import MSG_ID_HEADER, RECV_NS_HEADER
    from sources.nats import JetStreamSource
    from trade2026.natsconf import NatsConfig

    async def fill(stream: str, headers: bool) -> None:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=4000)
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        pad = b"x" * N_PAYLOAD
        for i in range(n):
            hdr = {MSG_ID_HEADER: str(i), RECV_NS_HEADER: str(time.time_ns())} if headers else None
            await js.publish_async(f"{stream.lower()}.s{i % 16}", pad, headers=hdr)
        await js.publish_async_completed()
        await nc.close()

    asyncio.run(fill("BENCHSRC", False))
    asyncio.run(fill("BENCHHDR", True))
    variants: dict[str, tuple[str, dict[str, Any]]] = {
        "jetstream_source_ordered": ("BENCHSRC", {}),
        "jetstream_source_ordered_callback": ("BENCHSRC", {"fast_path": False}),
        "jetstream_source_durable": ("BENCHSRC", {"durable": "b"}),
        "jetstream_source_ordered_headers": ("BENCHHDR", {}),
        "jetstream_source_ordered_headers_callback": ("BENCHHDR", {"fast_path": False}),
        "jetstream_source_ordered_headers_no_headers": ("BENCHHDR", {"keep_headers": False}),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(runs):
        for name, (stream, kw) in variants.items():
            if "durable" in kw:  # a durable resumes from its ack floor: a fresh one per run
                kw = {**kw, "durable": f"b{run}"}
            source = JetStreamSource(
                stream, f"{stream.lower()}.>", NatsConfig(servers=(url,)), **kw
            )
            t0 = time.perf_counter()
            part = source.build_part("bench", f"{stream.lower()}.>", None)
            got = 0
            while got < n:
                batch = list(part.next_batch())
                got += len(batch)
                if not batch:
                    time.sleep(0.001)
            rates[name].append(n / (time.perf_counter() - t0))
            part.close()
    return rates


# -- idle trade-off ------------------------------------------------------------------------
def idle_point(url: str, wait: timedelta | None, seconds: float, rate: float) -> dict[str, float]:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    from schemas.transport import Message
    from sources.nats import NatsSource
    from trade2026.natsconf import NatsConfig

    lat: list[int] = []

    class Latency(StatelessSinkPartition[Message]):
        def write_batch(self, items: list[Message]) -> None:
            now = time.time_ns()
            lat.extend(now - int(m.data) for m in items)

    class LatencySink(DynamicSink[Message]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Latency:
            return Latency()

    n = int(seconds * rate)
    source = NatsSource("md.raw.>", NatsConfig(servers=(url,)), idle_wait=wait, stop_after=n)
    flow = Dataflow("idle")
    op.output("out", op.input("inp", flow, source), LatencySink())
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    publisher = ctx.Process(target=_publisher, args=(url, n, rate, go))
    publisher.start()

    def start_when_ready() -> None:
        while not source.stats:
            time.sleep(0.005)
        go.set()

    threading.Thread(target=start_when_ready, daemon=True).start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run_main(flow)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    publisher.join(10)
    return {
        "cpu_pct_of_one_core": round(100 * cpu / wall, 1),
        "latency_median_ms": round(statistics.median(lat) / 1e6, 3),
        "latency_p99_ms": round(sorted(lat)[int(0.99 * (len(lat) - 1))] / 1e6, 3),
    }


def main(argv: list[str] | None = None) -> None:
    from benchmarks.common import print_table, write_result
    from trade2026.natsserver import LocalNatsServer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=2.0)
    args = p.parse_args(argv)

    results: dict[str, Any] = {"messages": args.messages, "payload_bytes": N_PAYLOAD}
    rows: list[list[object]] = []
    with LocalNatsServer() as server:
        for kind in ("bare", "bytewax", "bytewax_pipelined"):
            samples = [relay_run(server.url, kind, args.messages) for _ in range(args.runs)]
            rates = [r for r, _ in samples]
            med = statistics.median(rates)
            results[f"relay_{kind}"] = {
                "median_msg_per_s": round(med),
                "runs_msg_per_s": [round(r) for r in rates],
                "delivered": [c for _, c in samples],
            }
            rows.append([f"relay {kind}", f"{med:,.0f}", " ".join(f"{r:,.0f}" for r in rates)])
        sink = sink_rates(server.url, min(args.messages, 50_000))
        for name, rate in sink.items():
            results[name] = {"msg_per_s": round(rate)}
            rows.append([name.replace("_", " "), f"{rate:,.0f}", "1 run"])
        src = jetstream_source_rates(server.url, min(args.messages, 50_000), args.runs)
        for name, runs in src.items():
            med = statistics.median(runs)
            results[name] = {"msg_per_s": round(med), "runs_msg_per_s": [round(r) for r in runs]}
            rows.append(
                [name.replace("_", " "), f"{med:,.0f}", " ".join(f"{r:,.0f}" for r in runs)]
            )
        idle: dict[str, Any] = {}
        for label, wait in (
            ("bytewax_default_1ms", None),
            ("2ms", timedelta(milliseconds=2)),
            ("10ms", timedelta(milliseconds=10)),
        ):
            idle[label] = idle_point(server.url, wait, args.idle_seconds, 100.0)
        results["idle_wait_at_100_msg_per_s"] = idle
    ratio = results["relay_bytewax"]["median_msg_per_s"] / max(
        1, results["relay_bare"]["median_msg_per_s"]
    )
    results["bytewax_over_bare"] = round(ratio, 3)
    path = write_result("nats_throughput", results)
    print_table(
        f"NATS throughput, {args.messages:,} x {N_PAYLOAD} B, medians of {args.runs}",
        ["path", "msg/s", "runs"],
        rows,
    )
    print(f"  bytewax relay / bare relay = {ratio:.2f}")
    print_table(
        "Source idle_wait at 100 msg/s",
        ["idle_wait", "CPU % of a core", "median ms", "p99 ms"],
        [
            [k, v["cpu_pct_of_one_core"], v["latency_median_ms"], v["latency_p99_ms"]]
            for k, v in idle.items()
        ],
    )
    print(f"  wrote {path}")


if __name__ == "__main__":
    main()
