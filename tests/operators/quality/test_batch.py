"""Per-batch validation: real GX validation of real Binance ticks, stored in real Delta tables."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import msgspec
import pytest

from operators.quality.batch import (
    BatchValidator,
    BatchValidatorConfig,
    DutyBudget,
    QualityStore,
    SuiteValidator,
    expectation_rows,
    prepare_frame,
    record_accounting,
    records_to_rows,
)
from schemas.canonical import Quote, TradeTick
from trade2026.accounting import Accounting

T0 = 1_723_161_600_000_000_000  # 2024-08-09T00:00:00Z


class Clock:
    def __init__(self, start: int = T0, step: int = 1_000_000_000) -> None:
        self.now, self.step = start, step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


class Alerts:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def __call__(self, subject: str, payload: bytes) -> None:
        with self.lock:
            self.sent.append((subject, json.loads(payload)))


@pytest.fixture(scope="module")
def ticks_validator() -> SuiteValidator:
    return SuiteValidator("ticks")


def _validate(v: SuiteValidator, records: list) -> dict:
    import pandas as pd

    return v.validate(
        prepare_frame("ticks", pd.DataFrame.from_records(records_to_rows("ticks", records)))
    )


def _failed(result: dict) -> dict[tuple[str, str | None], dict]:
    return {
        (r["expectation_type"], r["column"]): r
        for r in expectation_rows(result)
        if not r["success"]
    }


def test_real_ticks_pass_the_ticks_suite(ticks_validator, btc_ticks, eth_ticks):
    for ticks in (btc_ticks[:5000], eth_ticks[-5000:]):
        result = _validate(ticks_validator, ticks)
        assert _failed(result) == {}
        assert result["success"] is True
        assert result["statistics"]["evaluated_expectations"] == 15


def test_quotes_only_batch_fails_the_trade_to_quote_ratio(ticks_validator, btc_ticks):
    quotes = [t for t in btc_ticks[:4000] if isinstance(t, Quote)]
    failed = _failed(_validate(ticks_validator, quotes))
    assert set(failed) == {("expect_column_mean_to_be_between", "is_trade")}
    assert (
        json.loads(failed[("expect_column_mean_to_be_between", "is_trade")]["observed_value"])
        == 0.0
    )


def test_duplicate_trade_ids_fail_uniqueness(ticks_validator, btc_ticks):
    batch = list(btc_ticks[:3000])
    trades = [t for t in batch if isinstance(t, TradeTick)]
    # re-send three trades later with a later receive time: ordering stays intact
    last = batch[-1].ts_recv
    batch += [msgspec.structs.replace(t, ts_recv=last + i + 1) for i, t in enumerate(trades[:3])]
    failed = _failed(_validate(ticks_validator, batch))
    assert set(failed) == {("expect_column_values_to_be_unique", "trade_id")}
    # GX counts every row of a duplicated id: 3 ids twice each
    assert failed[("expect_column_values_to_be_unique", "trade_id")]["unexpected_count"] == 6


def test_a_few_late_receive_times_are_tolerated(ticks_validator, btc_ticks):
    batch = list(btc_ticks[:2000])
    batch[100], batch[1500] = batch[1500], batch[100]  # 0.1% of rows step back
    assert _failed(_validate(ticks_validator, batch)) == {}


def test_receive_time_going_backwards_fails_ordering(ticks_validator, btc_ticks):
    batch = list(btc_ticks[:2000])
    for i in range(0, 2000, 20):  # one swap in every 20 rows: ~5% of rows step back
        batch[i], batch[i + 10] = batch[i + 10], batch[i]
    ts = [t.ts_recv for t in batch]
    backwards = sum(1 for a, b in itertools.pairwise(ts) if b < a)
    failed = _failed(_validate(ticks_validator, batch))
    assert backwards / len(batch) > 0.01  # beyond the suite's 1% tolerance
    assert set(failed) == {("expect_column_values_to_be_increasing", "ts_recv")}
    assert (
        failed[("expect_column_values_to_be_increasing", "ts_recv")]["unexpected_count"]
        == backwards
    )


def test_crossed_quotes_fail_the_spread_range(ticks_validator, btc_ticks):
    batch = list(btc_ticks[:2000])
    crossed = 0
    for i, t in enumerate(batch):
        if isinstance(t, Quote) and i % 10 == 0 and t.bid_price != t.ask_price:
            batch[i] = msgspec.structs.replace(t, bid_price=t.ask_price, ask_price=t.bid_price)
            crossed += 1
    assert crossed > 0
    failed = _failed(_validate(ticks_validator, batch))
    assert set(failed) == {("expect_column_values_to_be_between", "spread")}
    assert failed[("expect_column_values_to_be_between", "spread")]["unexpected_count"] == crossed


def _read(root: Path, kind: str) -> list[dict]:
    from deltalake import DeltaTable

    return DeltaTable(str(root / kind)).to_pyarrow_table().to_pylist()


def test_batches_are_stored_in_delta_and_json_and_failures_alert(tmp_path, btc_ticks):
    alerts = Alerts()
    clock = Clock()
    cfg = BatchValidatorConfig(stage="ticks", store=str(tmp_path), batch_rows=3000, max_duty=1.0)
    v = BatchValidator(cfg, clock=clock, publish=alerts).start()
    assert v.wait_ready(60)
    v.offer_many(btc_ticks[:3000])  # a good batch
    v.offer_many([t for t in btc_ticks[3000:9000] if isinstance(t, Quote)][:1000])  # quotes only
    stats = v.close(timeout=60)
    assert (stats.validated_batches, stats.passed_batches, stats.failed_batches) == (2, 1, 1)
    assert stats.skipped_batches == 0 and stats.errored_batches == 0

    rows = sorted(_read(tmp_path, "validations"), key=lambda r: r["ts"])
    assert [(r["rows"], r["success"]) for r in rows] == [(3000, True), (1000, False)]
    assert rows[0]["ts"] == T0 + 1_000_000_000
    assert (
        rows[0]["ts_min"] == btc_ticks[0].ts_recv and rows[0]["ts_max"] == btc_ticks[2999].ts_recv
    )
    for r in rows:
        doc = json.loads(Path(r["json_path"]).read_text())
        assert doc["batch_id"] == r["batch_id"] and doc["result"]["success"] is r["success"]
    exps = _read(tmp_path, "expectations")
    assert len(exps) == 30
    bad = [e for e in exps if not e["success"]]
    assert [(e["batch_id"], e["expectation_type"], e["column"]) for e in bad] == [
        (rows[1]["batch_id"], "expect_column_mean_to_be_between", "is_trade")
    ]

    assert len(alerts.sent) == 1
    subject, alert = alerts.sent[0]
    assert subject == "quality.alerts"
    assert alert["stage"] == "ticks" and alert["batch_id"] == rows[1]["batch_id"]
    assert [(f["expectation_type"], f["column"]) for f in alert["failed"]] == [
        ("expect_column_mean_to_be_between", "is_trade")
    ]


def test_full_queue_skips_batches_visibly_without_blocking(tmp_path, btc_ticks):
    cfg = BatchValidatorConfig(stage="ticks", store=str(tmp_path), batch_rows=1000, max_queue=1)
    v = BatchValidator(cfg, clock=Clock())
    # the worker is not running yet: a stalled validator must not stall the stage
    started = time.perf_counter()
    for t in btc_ticks[:3500]:
        v.offer(t)
    assert time.perf_counter() - started < 5  # returns at list-append speed; never waits
    s = v.stats()
    assert (s.offered_rows, s.submitted_batches, s.skipped_batches, s.skipped_rows) == (
        3500,
        1,
        2,
        2000,
    )
    v.start()
    s = v.close(timeout=60)  # flushes the last 500 rows into the (now drained) queue
    assert s.validated_batches == 2 and s.skipped_batches == 2
    rows = _read(tmp_path, "validations")
    assert sorted(r["rows"] for r in rows) == [500, 1000]
    assert {(r["skipped_batches"], r["skipped_rows"]) for r in rows} == {(2, 2000)}


def test_worker_rests_per_duty_cycle(tmp_path, btc_ticks):
    class SlowTimer:
        """Claims every validation took 100 s: at max_duty 0.5 the worker then rests 100 s."""

        def __init__(self) -> None:
            self.t = 0.0

        def __call__(self) -> float:
            self.t += 50.0
            return self.t

    cfg = BatchValidatorConfig(
        stage="ticks", store=str(tmp_path), batch_rows=500, max_queue=4, max_duty=0.5
    )
    v = BatchValidator(cfg, clock=Clock(), timer=SlowTimer()).start()
    assert v.wait_ready(60)
    v.offer_many(btc_ticks[:1000])  # two batches
    deadline = time.monotonic() + 30
    while v.stats().validated_batches < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    assert v.stats().validated_batches == 1  # resting, not validating the second batch
    assert v.close(timeout=60).validated_batches == 2  # close drains regardless


def test_after_batch_hook_is_paid_from_the_duty_budget(tmp_path, btc_ticks):
    """The hook (an accounting snapshot, Delta writes) runs on the worker thread: its time
    counts as the validator's, so the duty budget bounds it too."""
    now = [0.0]

    def timer() -> float:
        return now[0]

    def slow_hook() -> None:
        now[0] += 40.0  # the hook "takes" 40 s of timer time

    budget = DutyBudget(0.05, timer)
    cfg = BatchValidatorConfig(stage="ticks", store=str(tmp_path), batch_rows=500)
    v = BatchValidator(cfg, clock=Clock(), timer=timer, after_batch=slow_hook, budget=budget)
    v.start()
    assert v.wait_ready(60)
    v.offer_many(btc_ticks[:500])
    stats = v.close(timeout=60)
    assert stats.validated_batches == 1
    assert stats.validation_seconds == pytest.approx(40.0)
    assert budget.spent == pytest.approx(40.0)


def test_broken_suite_counts_every_batch_as_errored_and_alerts(tmp_path, btc_ticks):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "ticks.json").write_text(
        json.dumps(
            {"name": "ticks", "expectations": [{"type": "expect_no_such_thing", "kwargs": {}}]}
        )
    )
    alerts = Alerts()
    cfg = BatchValidatorConfig(
        stage="ticks", store=str(tmp_path / "store"), suites_dir=str(suites), batch_rows=100
    )
    v = BatchValidator(cfg, clock=Clock(), publish=alerts).start()
    v.offer_many(btc_ticks[:100])
    s = v.close(timeout=60)
    assert (s.validated_batches, s.errored_batches, s.passed_batches) == (1, 1, 0)
    assert "expect_no_such_thing" in alerts.sent[0][1]["error"]
    (row,) = _read(tmp_path / "store", "validations")
    assert row["success"] is False and "expect_no_such_thing" in row["error"]


def test_record_accounting_round_trips(tmp_path):
    acc = Accounting()
    acc.add(
        "ticks",
        {
            ("BTCUSDT.BINANCE", "in"): 10,
            ("BTCUSDT.BINANCE", "out"): 7,
            ("BTCUSDT.BINANCE", "dead_lettered"): 2,
            ("BTCUSDT.BINANCE", "duplicate"): 1,
        },
    )
    acc.add("ticks", {("-", "in"): 3, ("-", "dead_lettered"): 3})
    acc.add_reasons(
        "ticks", ["CROSSED_QUOTE", "CROSSED_QUOTE", "INVALID_JSON", "INVALID_JSON", "INVALID_JSON"]
    )
    record_accounting(acc, tmp_path, T0)
    got = {
        (r["stage"], r["instrument"]): (
            r["records_in"],
            r["out"],
            r["dead_lettered"],
            r["duplicates"],
            r["ts"],
        )
        for r in _read(tmp_path, "accounting")
    }
    assert got == {
        ("ticks", "BTCUSDT.BINANCE"): (10, 7, 2, 1, T0),
        ("ticks", "-"): (3, 0, 3, 0, T0),
    }
    dl = {(r["stage"], r["reason"]): r["count"] for r in _read(tmp_path, "dead_letters")}
    assert dl == {("ticks", "CROSSED_QUOTE"): 2, ("ticks", "INVALID_JSON"): 3}
    assert QualityStore(tmp_path).read("accounting", since=T0 + 1) == []
