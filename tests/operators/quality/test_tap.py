"""QualityTap: rule, dead letters with the original bytes, accounting, batch hand-off."""

from __future__ import annotations

import time
from decimal import Decimal

import msgspec

from operators.quality.tap import Quality, QualityConfig
from schemas.canonical import Quote
from schemas.instruments import load_instruments
from schemas.transport import Message, Outgoing
from trade2026.accounting import Accounting


def test_raw_tap_dead_letters_with_original_bytes_and_balances():
    acct = Accounting()
    q = Quality(QualityConfig(), load_instruments(), accounting=acct, clock=time.time_ns)
    tap = q.tap("raw")
    good = Message("md.raw.binance.btcusdt", b'{"stream":"x"}', 5)
    empty = Message("md.raw.binance.btcusdt", b"  ", 6)
    html = Message("md.raw.binance.btcusdt", b"<html>", 7)
    ok, dead = tap.split([good, empty, html, good])
    assert ok == [good, good]
    assert [(d.stage, d.reason, d.payload, d.subject, d.ts_recv) for d in dead] == [
        ("raw", "EMPTY_PAYLOAD", b"  ", "md.raw.binance.btcusdt", 6),
        ("raw", "INVALID_JSON", b"<html>", "md.raw.binance.btcusdt", 7),
    ]
    c = acct.stage("quality.raw")
    assert (c.records_in, c.out, c.dead_lettered, c.balanced) == (4, 2, 2, True)
    assert acct.reasons("quality.raw") == {"EMPTY_PAYLOAD": 1, "INVALID_JSON": 1}


def test_host_stage_keeps_the_host_balanced(btc_ticks):
    acct = Accounting()
    acct.add("alt_sink", {("-", "in"): 2})  # the host took two records in
    q = Quality(QualityConfig(), load_instruments(), accounting=acct, clock=time.time_ns)
    tap = q.tap("alt", host_stage="alt_sink")
    ok, dead = tap.split([{"source": "news", "ts_event": 5}, {"source": "news"}])
    acct.add("alt_sink", {("-", "out"): len(ok)})  # the host's sink writes what passed
    assert [d.reason for d in dead] == ["MISSING_FIELD"]
    assert acct.stage("alt_sink").balanced and acct.stage("alt_sink").dead_lettered == 1


def test_view_decodes_outputs_and_undecodable_is_schema_mismatch():
    q = Quality(QualityConfig(), load_instruments(), clock=time.time_ns)
    decode = msgspec.json.Decoder(Quote).decode
    tap = q.tap("ticks", view=lambda o: decode(o.data))
    d = Decimal
    crossed = Quote("BTCUSDT.BINANCE", d(2), d(1), d(1), d(1), 1, 10, 10)
    out = Outgoing("md.ticks.BTCUSDT.BINANCE", msgspec.json.encode(crossed))
    junk = Outgoing("md.ticks.BTCUSDT.BINANCE", b"{}")
    ok, dead = tap.split([out, junk])
    assert ok == []
    assert [(d.reason, d.payload) for d in dead] == [
        ("CROSSED_QUOTE", out.data),
        ("SCHEMA_MISMATCH", b"{}"),
    ]


def test_batch_layer_stores_results_and_alerts(tmp_path, btc_ticks):
    from operators.quality.batch import QualityStore

    sent: list[tuple[str, bytes]] = []
    q = Quality(
        QualityConfig(store=str(tmp_path), batch_rows=1000, max_duty=1.0, max_queue=4),
        load_instruments(),
        clock=time.time_ns,
        publish=lambda s, p: sent.append((s, p)),
    )
    tap = q.tap("ticks")
    validator = q.validator("ticks")
    assert validator is not None and validator.wait_ready(60)
    quotes = [t for t in btc_ticks[2000:9000] if isinstance(t, Quote)][:1000]
    tap.split(btc_ticks[:2000])  # two good batches
    tap.split(quotes)  # quotes only: fails the trade/quote ratio
    stats = q.close()["ticks"]
    assert (stats.validated_batches, stats.passed_batches, stats.failed_batches) == (3, 2, 1)
    rows = QualityStore(tmp_path).read("validations")
    assert sorted(r["success"] for r in rows) == [False, True, True]
    assert [s for s, _ in sent] == ["quality.alerts"]
    acc = {r["stage"]: r for r in QualityStore(tmp_path).read("accounting")}
    assert acc["quality.ticks"]["records_in"] == 3000
