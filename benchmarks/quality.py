"""Overhead of the quality layer on a realistic stage: the normalize flow, in-process.

The recorded Binance sample goes through the normalize flow (TestingSource -> decode ->
sequence -> a counting sink, one worker) three ways, interleaved round by round so drift
on a shared machine hits all three alike:

* ``bare``     no quality layer;
* ``rules``    per-record rules only (raw messages before decoding, ticks as emitted);
* ``batch``    rules plus the per-batch validators (fast engine over the GX suite JSON,
               duty budget ``--max-duty``), stored in a temporary quality store.

Validators are started and ready before timing (suite load is a start-up cost); the
shutdown tail (``Quality.close``: validating what is pending, the last accounting
snapshot) is timed separately, since a long-running stage pays it once. Reports the
median records/s of each, the overheads (target: the batch layer under 10 % of the
stage's throughput), and per run what the validators did.

    python -m benchmarks.quality [--runs 3] [--batch-rows 10000] [--max-duty 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import print_table, write_result

DATA = Path(__file__).resolve().parents[1] / "data" / "binance"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--max-duty", type=float, default=0.05)
    ap.add_argument("--engine", choices=("fast", "gx"), default="fast")
    args = ap.parse_args(argv)

    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    from benchmarks.normalize import _load
    from flows.normalize import build_flow
    from operators.quality.tap import Quality, QualityConfig
    from schemas.instruments import load_instruments
    from schemas.transport import Message, Outgoing
    from trade2026.accounting import Accounting

    msgs = [Message(s, d, t) for s, d, t in _load(sorted(DATA.glob("*.gz")))]
    registry = load_instruments()

    class _Count(StatelessSinkPartition[Outgoing]):
        n = 0

        def write_batch(self, items: list[Outgoing]) -> None:
            _Count.n += len(items)

    class _Sink(DynamicSink[Outgoing]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
            return _Count()

    def run(mode: str, store: str) -> tuple[float, dict[str, Any]]:
        acct = Accounting()
        quality = None
        if mode != "bare":
            cfg = QualityConfig(
                store=store if mode == "batch" else "",
                batch_rows=args.batch_rows,
                max_duty=args.max_duty,
                engine=args.engine,
            )
            quality = Quality(cfg, registry, accounting=acct, clock=time.time_ns)
            for stage in ("raw", "ticks"):
                v = quality.validator(stage)
                if v is not None:
                    v.wait_ready(120)
        flow = build_flow(
            TestingSource(msgs, batch_size=1000), _Sink(), accounting=acct, quality=quality
        )
        t0 = time.perf_counter()
        run_main(flow)
        rate = len(msgs) / (time.perf_counter() - t0)
        detail: dict[str, Any] = {"records_per_s": rate}
        if quality is not None:
            t1 = time.perf_counter()
            stats = quality.close(timeout=120)
            detail["close_s"] = time.perf_counter() - t1
            detail["validators"] = {
                stage: {f: getattr(s, f) for f in s.__struct_fields__} for stage, s in stats.items()
            }
            detail["dead_lettered"] = {
                st: acct.stage(st).dead_lettered for st in ("quality.raw", "quality.ticks")
            }
        return rate, detail

    def rules_only() -> float:
        """µs per message of the two rules alone, outside any flow: the floor for "rules"."""
        import msgspec

        from operators.normalize import TickDecoder
        from operators.quality.rules import RulesConfig, build_rule
        from schemas.canonical import DeadLetter

        ticks = [
            t for t in map(TickDecoder(registry).decode, msgs) if not isinstance(t, DeadLetter)
        ]
        raw_rule = build_rule("raw", registry)
        tick_rule = build_rule(
            "ticks", registry, msgspec.structs.replace(RulesConfig(), check_order=False)
        )
        t0 = time.perf_counter()
        for m in msgs:
            raw_rule.check(m)
        for t in ticks:
            tick_rule.check(t)
        return (time.perf_counter() - t0) / len(msgs) * 1e6

    rule_us = statistics.median(rules_only() for _ in range(args.runs))
    modes = ("bare", "rules", "batch")
    samples: dict[str, list[float]] = {m: [] for m in modes}
    details: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    run("bare", "")  # warm-up: imports, instrument cache, allocator
    for _ in range(args.runs):
        for mode in modes:
            with tempfile.TemporaryDirectory() as store:
                rate, detail = run(mode, store)
            samples[mode].append(rate)
            details[mode].append(detail)
    med = {m: statistics.median(v) for m, v in samples.items()}

    def overhead(a: str, b: str) -> float:
        return 100.0 * (1.0 - med[b] / med[a])

    results = {
        "stage": "normalize flow, in-process, one worker, recorded Binance sample",
        "messages": len(msgs),
        "runs": args.runs,
        "batch_rows": args.batch_rows,
        "max_duty": args.max_duty,
        "engine": args.engine,
        "median_per_s": med,
        "rules_alone_us_per_msg": rule_us,
        "rules_in_flow_us_per_msg": 1e6 / med["rules"] - 1e6 / med["bare"],
        "samples_per_s": samples,
        "overhead_pct": {
            "rules_vs_bare": overhead("bare", "rules"),
            "batch_vs_rules": overhead("rules", "batch"),
            "batch_vs_bare": overhead("bare", "batch"),
        },
        "detail": details,
    }
    path = write_result("quality", results)
    print_table(
        f"quality layer on the normalize flow ({len(msgs):,} messages, median of {args.runs})",
        ("variant", "records/s", "overhead"),
        [
            ("no quality", f"{med['bare']:,.0f}", ""),
            ("per-record rules", f"{med['rules']:,.0f}", f"{overhead('bare', 'rules'):.1f}%"),
            (
                "rules + batch validators",
                f"{med['batch']:,.0f}",
                f"{overhead('rules', 'batch'):.1f}% vs rules (target < 10%)",
            ),
        ],
    )
    print(
        f"  per-record rules: {rule_us:.2f} us/msg alone, "
        f"{1e6 / med['rules'] - 1e6 / med['bare']:.2f} us/msg added to the flow"
    )
    for d in details["batch"]:
        for stage, s in d["validators"].items():
            print(
                f"  {stage}: validated {s['validated_batches']} batches "
                f"({s['sampled_batches']} sampled, {s['validated_rows']:,} rows), "
                f"skipped {s['skipped_batches']}, passed {s['passed_batches']}, "
                f"failed {s['failed_batches']}, {s['validation_seconds']:.3f} s; "
                f"close {d['close_s']:.2f} s"
            )
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
