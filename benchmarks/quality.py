"""Overhead of the per-batch GX validator on a stage's throughput.

The stage is the ticks quality rule over the recorded Binance ticks (decoded up front).
Each run pushes N records through ``rule.check``; "with" also hands every record to a
started :class:`BatchValidator` (GX import and suite load happen before timing). Reports
median records/s of each, the overhead, and how many batches were validated vs skipped.

    python -m benchmarks.quality [--records 400000] [--runs 3] [--batch-rows 50000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=50_000)
    ap.add_argument("--max-duty", type=float, default=0.05)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from operators.quality.batch import BatchValidator, BatchValidatorConfig
    from operators.quality.rules import build_rule
    from schemas.instruments import load_instruments
    from tests.operators.quality.conftest import BTC, ETH, load_ticks

    base = load_ticks(BTC) + load_ticks(ETH)
    base.sort(key=lambda t: t.ts_recv)
    records = (base * (args.records // len(base) + 1))[: args.records]
    known = load_instruments()

    def run(validator: BatchValidator | None) -> float:
        rule = build_rule("ticks", known)
        offer = validator.offer if validator is not None else None
        t0 = time.perf_counter()
        for r in records:
            rule.check(r)  # replayed data repeats ids: the verdict is ignored, the cost is not
            if offer is not None:
                offer(r)
        return len(records) / (time.perf_counter() - t0)

    without, with_, stats = [], [], []
    ns = iter(range(1, 10**9))
    for _ in range(args.runs):
        without.append(run(None))
        with tempfile.TemporaryDirectory() as store:
            cfg = BatchValidatorConfig(
                stage="ticks", store=store, batch_rows=args.batch_rows, max_duty=args.max_duty
            )
            v = BatchValidator(cfg, clock=lambda: next(ns)).start()
            t_ready = time.perf_counter()
            v.wait_ready(120)
            ready_s = time.perf_counter() - t_ready
            with_.append(run(v))
            final = v.close(timeout=120)
            stats.append(
                {"ready_s": ready_s, **{f: getattr(final, f) for f in final.__struct_fields__}}
            )
    med_without, med_with = statistics.median(without), statistics.median(with_)
    result = {
        "benchmark": "quality_batch_validator",
        "records": len(records),
        "runs": args.runs,
        "batch_rows": args.batch_rows,
        "max_duty": args.max_duty,
        "without_per_s": med_without,
        "with_per_s": med_with,
        "overhead_pct": 100 * (1 - med_with / med_without),
        "runs_detail": {"without": without, "with": with_, "validator": stats},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=2))
    print(f"{'':28}{'records/s':>12}")
    print(f"{'ticks rule':28}{med_without:>12,.0f}")
    print(f"{'ticks rule + batch GX':28}{med_with:>12,.0f}")
    print(f"overhead {result['overhead_pct']:.1f}% (target < 10%)")
    for s in stats:
        print(
            f"  validated {s['validated_batches']} / skipped {s['skipped_batches']} batches "
            f"({s['skipped_rows']} rows), GX {s['validation_seconds']:.2f} s, "
            f"ready after {s['ready_s']:.1f} s"
        )
    return result


if __name__ == "__main__":
    main()
