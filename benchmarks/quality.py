"""Overhead of the quality layer on a realistic stage: the normalize flow, in-process.

The recorded Binance sample (``../shared/data`` or ``data/``) goes through the normalize
flow (TestingSource -> decode -> sequence -> a counting sink, one worker) three ways:

* ``bare``     no quality layer;
* ``rules``    per-record rules only (raw messages before decoding, ticks as emitted);
* ``batch``    rules plus the per-batch validators (fast engine over the GX suite JSON,
               duty budget ``--max-duty``), stored in a temporary quality store.

Why it is built this way (a noisy 2-core machine shared with other work):

* the sample is looped ``--loops`` times, each loop shifted in time and in venue ids so
  the sequencer sees fresh, contiguous data (not duplicates): runs last seconds, and
  the batch layer validates *during* the timed run instead of only at ``close``;
* variants are interleaved round by round, in a rotating order, so drift and neighbours'
  load hit all three alike; medians *and* best runs are reported, and overheads both
  from the medians and as the median of the per-round paired ratios;
* validators are started and ready before timing (suite load is a start-up cost), and a
  warm-up round imports everything first (deltalake, pyarrow);
* the shutdown tail (``Quality.close``: validating what is queued, the last accounting
  snapshot) is timed separately, since a long-running stage pays it once.

    python -m benchmarks.quality [--runs 7] [--loops 4] [--batch-rows 10000]
                                 [--max-duty 0.05] [--book-levels decoder|checked] [--profile]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from benchmarks.common import print_table, write_result

_ROOT = Path(__file__).resolve().parents[1]
DATA_DIRS = (_ROOT.parent / "shared" / "data" / "binance", _ROOT / "data" / "binance")

#: Binance fields shifted per loop: venue ids (per symbol) and event times (ms).
_TRADE_IDS = ("t",)
_BOOK_IDS = ("u", "U", "lastUpdateId")
_TIMES_MS = ("E", "T")


def _data_files() -> list[Path]:
    for d in DATA_DIRS:
        files = sorted(d.glob("*.gz"))
        if files:
            return files
    raise SystemExit(f"no recorded sample in {' or '.join(map(str, DATA_DIRS))}")


def looped_sample(lines: list[tuple[str, bytes, int]], loops: int) -> list[tuple[str, bytes, int]]:
    """The sample ``loops`` times, each copy later in time and with higher venue ids.

    Why shift: a plain repeat is all duplicates to the sequencer (it would drop them and
    the ticks gate would judge nothing). Each copy moves receive and event times past the
    previous copy and adds, per symbol, the id span to trade ids and book update ids, so
    ids stay increasing and trade ids contiguous. Payloads are re-encoded once, here.
    """
    if loops <= 1:
        return lines
    dec, enc = msgspec.json.Decoder(), msgspec.json.Encoder()
    docs = [(s, dec.decode(d), t) for s, d, t in lines]
    span_ns = max(t for _, _, t in lines) - min(t for _, _, t in lines) + 1_000_000_000
    span_ms = span_ns // 1_000_000 + 1
    lo: dict[tuple[str, str], int] = {}
    hi: dict[tuple[str, str], int] = {}
    for subject, doc, _ in docs:
        body = doc.get("data", doc) if isinstance(doc, dict) else {}
        for group, keys in (("t", _TRADE_IDS), ("u", _BOOK_IDS)):
            for k in keys:
                v = body.get(k) if isinstance(body, dict) else None
                if isinstance(v, int):
                    key = (subject, group)
                    lo[key] = min(lo.get(key, v), v)
                    hi[key] = max(hi.get(key, v), v)
    out = list(lines)
    for n in range(1, loops):
        for subject, doc, ts in docs:
            if not isinstance(doc, dict):
                continue
            copy = dict(doc)
            body = copy
            if isinstance(copy.get("data"), dict):
                body = copy["data"] = dict(copy["data"])
            if "data" not in copy or body is not copy:
                for group, keys in (("t", _TRADE_IDS), ("u", _BOOK_IDS)):
                    key = (subject, group)
                    for k in keys:
                        if isinstance(body.get(k), int) and key in lo:
                            body[k] += n * (hi[key] - lo[key] + 1)
                for k in _TIMES_MS:
                    if isinstance(body.get(k), int):
                        body[k] += n * span_ms
            out.append((subject, enc.encode(copy), ts + n * span_ns))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7, help="timed rounds (each runs all variants)")
    ap.add_argument("--loops", type=int, default=4, help="copies of the sample per run")
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--max-duty", type=float, default=0.05)
    ap.add_argument("--engine", choices=("fast", "gx"), default="fast")
    ap.add_argument("--profile", action="store_true", help="cProfile one run of each variant")
    ap.add_argument(
        "--book-levels",
        choices=("decoder", "checked"),
        default="decoder",
        help="decoder: the ticks rule trusts the decoder's per-level checks, as normalize "
        "wires it (check_book_levels=False); checked: re-check every level",
    )
    ap.add_argument("--no-write", action="store_true", help="do not write results/quality.json")
    args = ap.parse_args(argv)

    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    from benchmarks.normalize import _load
    from flows.normalize import build_flow
    from operators.quality.rules import RulesConfig
    from operators.quality.tap import Quality, QualityConfig
    from schemas.instruments import load_instruments
    from schemas.transport import Message, Outgoing
    from trade2026.accounting import Accounting

    base = _load(_data_files())
    msgs = [Message(s, d, t) for s, d, t in looped_sample(base, args.loops)]
    registry = load_instruments()

    class _Count(StatelessSinkPartition[Outgoing]):
        n = 0

        def write_batch(self, items: list[Outgoing]) -> None:
            _Count.n += len(items)

    class _Sink(DynamicSink[Outgoing]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
            return _Count()

    gc_pauses: dict[tuple[int, int], float] = {}  # (generation, n) -> seconds
    gc_started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started.append(time.perf_counter())
        elif gc_started:
            gc_pauses[(info["generation"], len(gc_pauses))] = time.perf_counter() - gc_started.pop()

    def gc_counts(pauses: dict[tuple[int, int], float]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for g, _ in pauses:
            counts[g] = counts.get(g, 0) + 1
        return counts

    gc.callbacks.append(on_gc)

    def stats_dict(s: Any) -> dict[str, Any]:
        return {f: getattr(s, f) for f in s.__struct_fields__}

    def run(mode: str, store: str, profile: Any = None) -> dict[str, Any]:
        acct = Accounting()
        quality = None
        if mode != "bare":
            cfg = QualityConfig(
                rules=RulesConfig(check_book_levels=args.book_levels == "checked"),
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
        _Count.n = 0
        gc_pauses.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.runcall(run_main, flow)
        else:
            run_main(flow)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        detail: dict[str, Any] = {
            "seconds": seconds,
            "records_per_s": len(msgs) / seconds,
            # all threads of this process (validators included): robust to neighbours' load
            "cpu_s": cpu,
            "cpu_us_per_msg": cpu / len(msgs) * 1e6,
            "outputs": _Count.n,
            # every thread's collections: is retaining batches making the GC work harder?
            "gc_s": sum(gc_pauses.values()),
            "gc_collections": {str(g): n for g, n in sorted(gc_counts(gc_pauses).items())},
        }
        if quality is not None:
            validators = {st: quality.validator(st) for st in ("raw", "ticks")}
            detail["in_flow"] = {
                st: stats_dict(v.stats()) for st, v in validators.items() if v is not None
            }
            t1 = time.perf_counter()
            stats = quality.close(timeout=120)
            detail["close_s"] = time.perf_counter() - t1
            detail["validators"] = {st: stats_dict(s) for st, s in stats.items()}
            detail["dead_lettered"] = {
                st: acct.stage(st).dead_lettered for st in ("quality.raw", "quality.ticks")
            }
        return detail

    def rules_only() -> float:
        """µs per message of the two rules alone, outside any flow: the floor for "rules"."""
        from operators.normalize import TickDecoder
        from operators.quality.rules import build_rule
        from schemas.canonical import DeadLetter

        sample = msgs[: len(base)]
        ticks = [
            t for t in map(TickDecoder(registry).decode, sample) if not isinstance(t, DeadLetter)
        ]
        raw_rule = build_rule("raw", registry)
        tick_rule = build_rule(
            "ticks",
            registry,
            RulesConfig(check_order=False, check_book_levels=args.book_levels == "checked"),
        )
        t0 = time.perf_counter()
        for m in sample:
            raw_rule.check(m)
        for t in ticks:
            tick_rule.check(t)
        return (time.perf_counter() - t0) / len(sample) * 1e6

    modes = ("bare", "rules", "batch")
    if args.profile:
        import cProfile
        import pstats

        for mode in modes:
            prof = cProfile.Profile()
            with tempfile.TemporaryDirectory() as store:
                run(mode, store, prof)
            print(f"--- cProfile, {mode} (main thread) ---")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        return {}

    rule_us = statistics.median(rules_only() for _ in range(max(3, args.runs)))
    samples: dict[str, list[float]] = {m: [] for m in modes}
    details: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for mode in modes:  # warm-up: imports (deltalake, pyarrow), caches, allocator
        with tempfile.TemporaryDirectory() as store:
            run(mode, store)
    for r in range(args.runs):
        for mode in modes[r % 3 :] + modes[: r % 3]:  # rotate who goes first
            with tempfile.TemporaryDirectory() as store:
                detail = run(mode, store)
            samples[mode].append(detail["records_per_s"])
            details[mode].append(detail)
    med = {m: statistics.median(v) for m, v in samples.items()}
    best = {m: max(v) for m, v in samples.items()}
    cpu = {m: statistics.median(d["cpu_us_per_msg"] for d in details[m]) for m in modes}
    cpu_min = {m: min(d["cpu_us_per_msg"] for d in details[m]) for m in modes}

    def overhead(a: str, b: str, of: dict[str, float]) -> float:
        return 100.0 * (1.0 - of[b] / of[a])

    def cpu_overhead(a: str, b: str, of: dict[str, float]) -> float:
        return 100.0 * (of[b] / of[a] - 1.0)

    def paired(a: str, b: str) -> float:
        """Median over rounds of the same round's ratio: drift between rounds cancels."""
        return statistics.median(
            100.0 * (1.0 - y / x) for x, y in zip(samples[a], samples[b], strict=True)
        )

    def close_stats(key: str) -> float:
        return statistics.median(d[key] for d in details["batch"])

    gc_s = {m: statistics.median(d["gc_s"] for d in details[m]) for m in modes}

    in_flow_rows = {
        st: statistics.median(d["in_flow"][st]["validated_rows"] for d in details["batch"])
        for st in ("raw", "ticks")
    }
    results = {
        "stage": "normalize flow, in-process, one worker, recorded Binance sample looped",
        "messages": len(msgs),
        "sample_messages": len(base),
        "loops": args.loops,
        "runs": args.runs,
        "batch_rows": args.batch_rows,
        "max_duty": args.max_duty,
        "engine": args.engine,
        "book_levels": args.book_levels,
        "median_per_s": med,
        "best_per_s": best,
        "rules_alone_us_per_msg": rule_us,
        "rules_in_flow_us_per_msg": 1e6 / med["rules"] - 1e6 / med["bare"],
        "samples_per_s": samples,
        "overhead_pct": {
            "rules_vs_bare": overhead("bare", "rules", med),
            "batch_vs_rules": overhead("rules", "batch", med),
            "batch_vs_bare": overhead("bare", "batch", med),
        },
        "overhead_best_pct": {
            "rules_vs_bare": overhead("bare", "rules", best),
            "batch_vs_rules": overhead("rules", "batch", best),
            "batch_vs_bare": overhead("bare", "batch", best),
        },
        "overhead_paired_pct": {
            "rules_vs_bare": paired("bare", "rules"),
            "batch_vs_rules": paired("rules", "batch"),
            "batch_vs_bare": paired("bare", "batch"),
        },
        "cpu_us_per_msg_median": cpu,
        "cpu_us_per_msg_min": cpu_min,
        "cpu_overhead_pct": {
            "rules_vs_bare": cpu_overhead("bare", "rules", cpu),
            "batch_vs_rules": cpu_overhead("rules", "batch", cpu),
            "batch_vs_bare": cpu_overhead("bare", "batch", cpu),
        },
        "cpu_overhead_min_pct": {
            "rules_vs_bare": cpu_overhead("bare", "rules", cpu_min),
            "batch_vs_rules": cpu_overhead("rules", "batch", cpu_min),
            "batch_vs_bare": cpu_overhead("bare", "batch", cpu_min),
        },
        "close_s_median": close_stats("close_s"),
        "gc_s_median": gc_s,
        "validated_rows_in_flow_median": in_flow_rows,
        "detail": details,
    }
    path = None if args.no_write else write_result("quality", results)
    o, ob, op_ = (
        results["overhead_pct"],
        results["overhead_best_pct"],
        results["overhead_paired_pct"],
    )
    print_table(
        f"quality layer on the normalize flow ({len(msgs):,} messages = {args.loops} x "
        f"{len(base):,}; {args.runs} interleaved rounds)",
        ("variant", "median rec/s", "best rec/s", "overhead (median / best / paired)"),
        [
            ("no quality", f"{med['bare']:,.0f}", f"{best['bare']:,.0f}", ""),
            (
                "per-record rules",
                f"{med['rules']:,.0f}",
                f"{best['rules']:,.0f}",
                f"{o['rules_vs_bare']:.1f}% / {ob['rules_vs_bare']:.1f}% / "
                f"{op_['rules_vs_bare']:.1f}% vs bare",
            ),
            (
                "rules + batch validators",
                f"{med['batch']:,.0f}",
                f"{best['batch']:,.0f}",
                f"{o['batch_vs_rules']:.1f}% / {ob['batch_vs_rules']:.1f}% / "
                f"{op_['batch_vs_rules']:.1f}% vs rules",
            ),
        ],
    )
    co, cm = results["cpu_overhead_pct"], results["cpu_overhead_min_pct"]
    print_table(
        "process CPU time per message (all threads; robust to other processes' load)",
        ("variant", "median us/msg", "min us/msg", "overhead (median / min)"),
        [
            ("no quality", f"{cpu['bare']:.2f}", f"{cpu_min['bare']:.2f}", ""),
            (
                "per-record rules",
                f"{cpu['rules']:.2f}",
                f"{cpu_min['rules']:.2f}",
                f"{co['rules_vs_bare']:.1f}% / {cm['rules_vs_bare']:.1f}% vs bare",
            ),
            (
                "rules + batch validators",
                f"{cpu['batch']:.2f}",
                f"{cpu_min['batch']:.2f}",
                f"{co['batch_vs_rules']:.1f}% / {cm['batch_vs_rules']:.1f}% vs rules",
            ),
        ],
    )
    print(f"  close (batch variant): median {results['close_s_median']:.2f} s")
    print(
        f"  per-record rules: {rule_us:.2f} us/msg alone, "
        f"{results['rules_in_flow_us_per_msg']:.2f} us/msg added to the flow"
    )
    print("  GC pauses per run (median s): " + ", ".join(f"{m} {gc_s[m]:.3f}" for m in modes))
    for m in modes:
        print(f"    {m}: collections by generation " + str(details[m][-1]["gc_collections"]))
    for d in details["batch"]:
        parts = []
        for stage, s in d["validators"].items():
            f = d["in_flow"][stage]
            parts.append(
                f"{stage}: in flow {f['validated_batches']} batches / {f['validated_rows']:,} "
                f"rows ({f['validation_seconds']:.2f} s), total {s['validated_batches']} / "
                f"{s['validated_rows']:,}, skipped {s['skipped_batches']}, "
                f"failed {s['failed_batches']}"
            )
        print(f"  {d['records_per_s']:,.0f}/s close {d['close_s']:.2f} s; " + "; ".join(parts))
    if path is not None:
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
