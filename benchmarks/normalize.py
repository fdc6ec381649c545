"""Normalization throughput: in-process on one worker, and end to end through NATS.

In-process: the recorded sample files through the normalize flow (RecordedSource ->
decode -> sequence -> a counting sink), one worker. Target: >= 300,000 msg/s.

End to end: a publisher process replays the raw messages onto ``md.raw.*`` as fast as
it can, the flow (in this process) normalizes them onto ``md.ticks.*``, and a counter
process times the first publish to the last tick. A bare nats-py relay (subscribe
``md.raw.>``, republish, nothing else) runs through the same harness in the same run,
and the flow is reported as a ratio to it. Target: >= 100,000 msg/s.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import median_of, print_table, write_result


def _load(files: list[Path]) -> list[tuple[str, bytes, int]]:
    from sources.recorded import merge_recorded

    return [(ln.subject, ln.data, ln.ts_recv) for ln in merge_recorded([str(f) for f in files])]


def in_process(files: list[Path], runs: int) -> dict[str, Any]:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    from flows.normalize import build_flow
    from operators.normalize import TickDecoder
    from schemas.instruments import load_instruments
    from schemas.transport import Message, Outgoing
    from trade2026.accounting import Accounting

    msgs = [Message(s, d, t) for s, d, t in _load(files)]

    class _Count(StatelessSinkPartition[Outgoing]):
        n = 0

        def write_batch(self, items: list[Outgoing]) -> None:
            _Count.n += len(items)

    class _Sink(DynamicSink[Outgoing]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
            return _Count()

    def flow_run() -> float:
        _Count.n = 0
        flow = build_flow(TestingSource(msgs, batch_size=1000), _Sink(), accounting=Accounting())
        t = time.perf_counter()
        run_main(flow)
        return len(msgs) / (time.perf_counter() - t)

    decoder = TickDecoder(load_instruments())

    def decode_only() -> float:
        t = time.perf_counter()
        for m in msgs:
            decoder.decode(m)
        return len(msgs) / (time.perf_counter() - t)

    flow_med, flow_all = median_of(runs, flow_run)
    dec_med, dec_all = median_of(runs, decode_only)
    return {
        "messages": len(msgs),
        "flow_msgs_per_s": flow_med,
        "flow_samples": flow_all,
        "decode_only_msgs_per_s": dec_med,
        "decode_samples": dec_all,
    }


# --------------------------------------------------------------------------- end to end


def _publisher(url: str, payload: list[tuple[str, bytes]], go: Any, out: Any) -> None:
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
        go.wait()
        t0 = time.time_ns()
        for i, (subject, data) in enumerate(payload):
            await nc.publish(subject, data)
            if i % 5000 == 0:
                await nc.flush()
        await nc.flush()
        out.put(("published", t0, time.time_ns()))
        await nc.close()

    asyncio.run(main())


def _counter(url: str, subject: str, expected: int, ready: Any, out: Any) -> None:
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect(url)
        state = {"n": 0, "last": 0}
        done = asyncio.Event()

        async def cb(msg: Any) -> None:
            state["n"] += 1
            state["last"] = time.time_ns()
            if state["n"] >= expected:
                done.set()

        await nc.subscribe(
            subject, cb=cb, pending_msgs_limit=2_000_000, pending_bytes_limit=1 << 30
        )
        await nc.flush()
        ready.set()
        while not done.is_set():
            before = state["n"]
            try:
                await asyncio.wait_for(done.wait(), timeout=10)
            except TimeoutError:
                if state["n"] == before:
                    break
        out.put(("received", state["n"], state["last"]))
        await nc.close()

    asyncio.run(main())


def _relay(url: str, ready: Any, stop: Any) -> None:
    import asyncio

    import nats

    async def main() -> None:
        nc = await nats.connect(url, pending_size=64 * 1024 * 1024)

        async def cb(msg: Any) -> None:
            await nc.publish("relay." + msg.subject, msg.data)

        await nc.subscribe(
            "md.raw.>", cb=cb, pending_msgs_limit=2_000_000, pending_bytes_limit=1 << 30
        )
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
            await nc.flush()
        await nc.close()

    asyncio.run(main())


def _harness(
    url: str, payload: list[tuple[str, bytes]], out_subject: str, expected: int, start_middle: Any
) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    go, ready = ctx.Event(), ctx.Event()
    counter = ctx.Process(target=_counter, args=(url, out_subject, expected, ready, q))
    pub = ctx.Process(target=_publisher, args=(url, payload, go, q))
    counter.start()
    pub.start()
    ready.wait(30)
    stop_middle = start_middle()
    time.sleep(0.5)
    go.set()
    results = dict((r[0], r[1:]) for r in (q.get(timeout=120), q.get(timeout=120)))
    pub.join(30)
    counter.join(30)
    stop_middle()
    t0 = results["published"][0]
    n, last = results["received"]
    if n < expected:
        raise RuntimeError(f"benchmark: received {n} of {expected} on {out_subject}")
    return n / ((last - t0) / 1e9)


def end_to_end(files: list[Path], runs: int) -> dict[str, Any]:
    from bytewax.testing import run_main

    from trade2026.accounting import Accounting
    from trade2026.flowregistry import RunContext, build_normalize
    from trade2026.natsconf import NatsConfig
    from trade2026.natsserver import LocalNatsServer

    payload = [(s, d) for s, d, _ in _load(files)]
    n = len(payload)
    with LocalNatsServer() as server:
        url = server.url

        def relay_middle() -> Any:
            ctx = mp.get_context("spawn")
            ready, stop = ctx.Event(), ctx.Event()
            p = ctx.Process(target=_relay, args=(url, ready, stop))
            p.start()
            ready.wait(30)

            def halt() -> None:
                stop.set()
                p.join(10)

            return halt

        def flow_middle() -> Any:
            acct = Accounting()
            ctx = RunContext(
                nats=NatsConfig(servers=(url,)), accounting=acct, stop_after=n, idle_timeout_s=20
            )
            flow, source = build_normalize(ctx)
            t = threading.Thread(target=run_main, args=(flow,), daemon=True)
            t.start()
            while not source.stats:
                time.sleep(0.01)
            return lambda: t.join(60)

        relay_med, relay_all = median_of(
            runs, lambda: _harness(url, payload, "relay.>", n, relay_middle)
        )
        flow_med, flow_all = median_of(
            runs, lambda: _harness(url, payload, "md.ticks.>", n - 0, flow_middle)
        )
    return {
        "messages": n,
        "relay_msgs_per_s": relay_med,
        "relay_samples": relay_all,
        "flow_msgs_per_s": flow_med,
        "flow_samples": flow_all,
        "flow_to_relay_ratio": flow_med / relay_med,
    }


def main(runs: int = 3, e2e: bool = True) -> dict[str, Any]:
    from trade2026.sample import sample_files

    files = sample_files()
    results: dict[str, Any] = {"in_process": in_process(files, runs)}
    if e2e:
        results["end_to_end"] = end_to_end(files, runs)
    path = write_result("normalize", results)
    ip = results["in_process"]
    rows: list[list[object]] = [
        ["in-process flow, 1 worker", f"{ip['flow_msgs_per_s']:,.0f}", "300,000"],
        ["in-process decode only", f"{ip['decode_only_msgs_per_s']:,.0f}", "-"],
    ]
    if e2e:
        ee = results["end_to_end"]
        rows += [
            ["bare nats-py relay", f"{ee['relay_msgs_per_s']:,.0f}", "-"],
            ["end to end through NATS", f"{ee['flow_msgs_per_s']:,.0f}", "100,000"],
            ["flow / relay ratio", f"{ee['flow_to_relay_ratio']:.2f}", "-"],
        ]
    print_table(f"normalize benchmark (median of {runs} runs)", ["what", "msg/s", "target"], rows)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
