"""Feature windowing throughput: items/s through the operator and through the flow.

The recorded sample's trades and quotes (both instruments, interleaved by receive time)
are fed (a) straight to :class:`operators.features.InstrumentBars`, one width at a time,
and (b) through ``flows.features.build_flow`` with both widths (1 s and 1 min) on one
worker into a counting sink. The input is replicated ``--repeat`` times with event times
shifted so every copy opens fresh windows. Median of ``--runs`` runs.

    python -m benchmarks.features [--runs 3] [--repeat 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.common import median_of, print_table, write_result

DATA = Path(__file__).resolve().parent.parent / "data" / "binance"


def load_ticks(repeat: int) -> list[Any]:
    from schemas.canonical import Quote, TradeTick
    from schemas.common import NANOS_PER_MILLI, Aggressor

    base: list[TradeTick | Quote] = []
    for path in sorted(DATA.glob("*.gz")):
        with gzip.open(path, "rt") as fh:
            for line in fh:
                recv_s, _, payload = line.partition(" ")
                msg = json.loads(payload)
                d, stream, recv = msg.get("data", {}), msg.get("stream", ""), int(recv_s)
                inst = f"{d.get('s')}.BINANCE"
                if stream.endswith("@trade"):
                    base.append(TradeTick(inst, Decimal(d["p"]), Decimal(d["q"]),
                                          Aggressor.SELL if d["m"] else Aggressor.BUY,
                                          str(d["t"]), d["T"] * NANOS_PER_MILLI, recv))  # fmt: skip
                elif stream.endswith("@bookTicker"):
                    base.append(Quote(inst, Decimal(d["b"]), Decimal(d["B"]), Decimal(d["a"]),
                                      Decimal(d["A"]), d["u"], recv, recv))  # fmt: skip
    base.sort(key=lambda t: t.ts_recv)
    span = base[-1].ts_recv - base[0].ts_recv + 120 * 1_000_000_000
    out: list[Any] = []
    for k in range(repeat):
        shift = k * span
        for t in base:
            if isinstance(t, TradeTick):
                out.append(TradeTick(t.instrument_id, t.price, t.size, t.aggressor, t.trade_id,
                                     t.ts_event + shift, t.ts_recv + shift))  # fmt: skip
            else:
                q = Quote(t.instrument_id, t.bid_price, t.bid_size, t.ask_price, t.ask_size,
                          t.update_id, t.ts_event + shift, t.ts_recv + shift)  # fmt: skip
                out.append(q)
    return out


def operator_rate(ticks: list[Any], width_ns: int) -> float:
    from operators.features import FeatureConfig, InstrumentBars

    lateness = FeatureConfig().allowed_lateness_ns
    t0 = time.perf_counter()
    ops: dict[str, InstrumentBars] = {}
    n_out = 0
    for t in ticks:
        op = ops.get(t.instrument_id)
        if op is None:
            op = ops[t.instrument_id] = InstrumentBars(t.instrument_id, width_ns, lateness)
        n_out += len(op.on_tick(t))
    for op in ops.values():
        n_out += len(op.flush())
    return len(ticks) / (time.perf_counter() - t0)


def flow_rate(ticks: list[Any], batch_size: int) -> float:
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    from flows.features import FeatureOutputs, build_flow

    class _Count(StatelessSinkPartition[Any]):
        n = 0

        def write_batch(self, items: list[Any]) -> None:
            _Count.n += len(items)

    class _Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
            return _Count()

    outs = FeatureOutputs(bars=_Sink(), late=_Sink(), dead_letters=_Sink())
    flow = build_flow(TestingSource(ticks, batch_size=batch_size), outs)
    t0 = time.perf_counter()
    run_main(flow)
    return len(ticks) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    from operators.features import MINUTE_NS, SECOND_NS

    ticks = load_ticks(args.repeat)
    results: dict[str, Any] = {"items": len(ticks), "runs": args.runs}
    rows = []
    cases = [
        ("operator 1s", lambda: operator_rate(ticks, SECOND_NS)),
        ("operator 1m", lambda: operator_rate(ticks, MINUTE_NS)),
        ("flow 1s+1m, batch 1000", lambda: flow_rate(ticks, 1000)),
        ("flow 1s+1m, batch 1", lambda: flow_rate(ticks, 1)),
    ]
    for name, fn in cases:
        med, samples = median_of(args.runs, fn)
        results[name] = {"median_items_per_s": round(med), "samples": [round(s) for s in samples]}
        rows.append((name, f"{med:,.0f}", ", ".join(f"{s:,.0f}" for s in samples)))
    path = write_result("features", results)
    print_table(
        f"features: {len(ticks):,} ticks, median of {args.runs}", ["case", "items/s", "runs"], rows
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
