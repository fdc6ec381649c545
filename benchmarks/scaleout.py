"""Normalize throughput on 1 worker, 2 workers (one process) and 2 processes (loopback).

The input is the bundled sample looped ``--passes`` times (``benchmarks.soak.SampleLoop``:
ids shifted each pass, so nothing is a duplicate), held in memory as one partition per
instrument, through the normalize flow into a counting sink. Each layout runs in fresh
processes (``python -m benchmarks.scaleout --worker ...``), and the rate is messages over
the time from the first batch any partition handed out to the end of the last process,
on the system-wide monotonic clock: imports and loading are excluded, cluster set-up
and shutdown are not. 2 processes talk over loopback TCP (bytewax's cluster mode).

Why the numbers look the way they do: decoding spreads over the workers, but dedupe and
gap detection are keyed by instrument, so every tick crosses Bytewax's keyed exchange,
and there are only two instruments. On a machine with two shared cores a second worker
or process has little spare CPU to use. Run: ``python -m benchmarks.scaleout``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ("1 worker", "2 workers", "2 processes")


def _worker(passes: int, workers: int, process_id: int, addresses: list[str]) -> None:
    """One process of a layout: prints {"first": t, "end": t, "in": n} as JSON."""
    import itertools

    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import cluster_main

    from benchmarks.soak import SampleLoop
    from flows.normalize import build_flow
    from schemas.transport import Message, Outgoing

    loop = SampleLoop()
    now = time.time_ns()
    per_part: dict[str, list[Message]] = {}
    for i, (subject, data) in enumerate(itertools.islice(loop.messages(), passes * len(loop))):
        inst = subject.rsplit(".", 1)[1]
        per_part.setdefault(inst, []).append(Message(subject, data, now + i * 1000))
    first: list[float] = []

    class Part(StatefulSourcePartition[Message, None]):
        def __init__(self, msgs: list[Message]) -> None:
            self._msgs, self._pos = msgs, 0

        def next_batch(self) -> list[Message]:
            if not first:
                first.append(time.monotonic())
            if self._pos >= len(self._msgs):
                raise StopIteration
            out = self._msgs[self._pos : self._pos + 1000]
            self._pos += len(out)
            return out

        def snapshot(self) -> None:
            return None

    class Source(FixedPartitionedSource[Message, None]):
        def list_parts(self) -> list[str]:
            return sorted(per_part)

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> Part:
            return Part(per_part[for_part])

    class Count(StatelessSinkPartition[Outgoing]):
        def write_batch(self, items: list[Outgoing]) -> None:
            pass

    class Sink(DynamicSink[Outgoing]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Count:
            return Count()

    flow = build_flow(Source(), Sink())
    cluster_main(flow, addresses, process_id, worker_count_per_proc=workers)
    end = time.monotonic()
    n = sum(len(v) for v in per_part.values())
    print(json.dumps({"first": first[0] if first else end, "end": end, "in": n}))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def run_layout(layout: str, passes: int) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "benchmarks.scaleout", "--worker", "--passes", str(passes)]
    if layout == "2 processes":
        addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(2))
        cmds = [[*base, "--process-id", str(i), "--addresses", addresses] for i in range(2)]
    else:
        cmds = [[*base, "--workers", "2" if layout == "2 workers" else "1"]]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE) for c in cmds]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"scaleout: {layout} failed; hint: run the worker command by hand")
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    span = max(r["end"] for r in reports) - min(r["first"] for r in reports)
    total = int(reports[0]["in"])  # every process loads the same input; partitions split it
    return total / span, total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--passes", type=int, default=4, help="times the sample is looped")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--addresses", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        addresses = args.addresses.split(";") if args.addresses else []
        _worker(args.passes, args.workers, args.process_id, addresses)
        return

    from benchmarks.common import print_table, write_result

    samples: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    total = 0
    for _ in range(args.runs):  # interleaved, so drift in machine load hits every layout
        for layout in LAYOUTS:
            rate, total = run_layout(layout, args.passes)
            samples[layout].append(rate)
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med["1 worker"]
    results: dict[str, Any] = {
        "messages": total,
        "passes": args.passes,
        "cpus": os.cpu_count(),
        **{
            k.replace(" ", "_"): {
                "median_msg_per_s": round(med[k]),
                "runs_msg_per_s": [round(x) for x in samples[k]],
                "speedup_vs_1_worker": round(med[k] / base, 2),
            }
            for k in LAYOUTS
        },
    }
    path = write_result("scaleout", results)
    print_table(
        f"Normalize scale-out, sample x {args.passes}, medians of {args.runs}",
        ["layout", "msg/s", "x 1 worker", "runs"],
        [
            [k, f"{med[k]:,.0f}", f"{med[k] / base:.2f}", " ".join(f"{x:,.0f}" for x in samples[k])]
            for k in LAYOUTS
        ],
    )
    print(f"  wrote {path}")


if __name__ == "__main__":
    main()
