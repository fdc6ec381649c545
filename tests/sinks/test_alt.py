"""Alternative-data writer and flow against real Delta tables, with the bundled samples."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.alt_sink import DLQ_SUBJECT, build_flow
from schemas.alt import ALT_SOURCES
from schemas.canonical import DeadLetter
from schemas.transport import Message, Outgoing
from sinks.alt import AltConfig, AltRecord, AltTableWriter, alt_table_uri
from trade2026.accounting import Accounting

DATA = Path(__file__).resolve().parents[2] / "data" / "alt"
T = 1_714_521_600 * 10**9


def rows(root: str, source: str) -> list[dict]:
    from deltalake import DeltaTable

    return DeltaTable(alt_table_uri(root, source)).to_pyarrow_table().to_pylist()


def funding(**extra: object) -> bytes:
    rec = {
        "venue": "BINANCE",
        "instrument_id": "BTCUSDT.BINANCE",
        "funding_rate": "0.0001",
        "funding_time": T,
        "ts_event": T + 1,
    }
    rec.update(extra)
    return msgspec.json.encode(rec)


def test_bundled_samples_load(tmp_path: Path) -> None:
    root = str(tmp_path)
    for source, n in (("funding", 6), ("news", 5)):
        w = AltTableWriter(AltConfig(root=root), ALT_SOURCES[source])
        lines = (DATA / f"{source}_sample.jsonl").read_bytes().splitlines()
        recs = [
            w.check(line, origin=f"alt.raw.{source}", seq=i + 1) for i, line in enumerate(lines)
        ]
        assert all(isinstance(r, AltRecord) for r in recs), recs
        assert w.write(recs) == n  # type: ignore[arg-type]
        got = rows(root, source)
        assert len(got) == n and all(r["synthetic"] is True for r in got)
    f = sorted(rows(root, "funding"), key=lambda r: r["seq"])
    assert f[0]["funding_rate"] == Decimal("0.0001") and f[2]["funding_rate"] == Decimal("-0.00005")
    assert str(f[0]["date"]) == "2024-05-01"
    news = sorted(rows(root, "news"), key=lambda r: r["seq"])
    assert news[1]["sentiment"] == -0.4 and news[0]["instruments"] == ["BTCUSDT.BINANCE"]


def test_new_optional_field_evolves_the_schema(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    root = str(tmp_path)
    w = AltTableWriter(AltConfig(root=root), ALT_SOURCES["funding"])
    w.write([w.check(funding(), origin="alt.raw.funding", seq=1)])  # type: ignore[list-item]
    w.write([w.check(funding(open_interest=12345, basis=0.25), origin="alt.raw.funding", seq=2)])  # type: ignore[list-item]
    names = [f.name for f in DeltaTable(alt_table_uri(root, "funding")).schema().fields]
    assert "open_interest" in names and "basis" in names
    got = sorted(rows(root, "funding"), key=lambda r: r["seq"])
    assert got[0]["open_interest"] is None and got[1]["open_interest"] == 12345
    # a fresh writer (restart) sees the evolved column and refuses a conflicting type
    again = AltTableWriter(AltConfig(root=root), ALT_SOURCES["funding"])
    bad = again.check(funding(open_interest="lots"), origin="alt.raw.funding", seq=3)
    assert isinstance(bad, DeadLetter) and bad.reason == "TYPE_CONFLICT"
    assert bad.payload == funding(open_interest="lots")
    ok = again.check(funding(basis=1), origin="alt.raw.funding", seq=4)  # int fits a float column
    assert isinstance(ok, AltRecord)


def test_invalid_records_are_dead_lettered(tmp_path: Path) -> None:
    w = AltTableWriter(AltConfig(root=str(tmp_path)), ALT_SOURCES["news"])
    head = b'{"headline_id": "x", "source": "s", "headline": "h", '
    cases = {
        b"not json": "DECODE_ERROR",
        b"[1, 2]": "DECODE_ERROR",
        head + b'"ts_event": 1}': "INVALID_RECORD",
        head + b'"sentiment": 3.0, "ts_event": 1}': "INVALID_RECORD",
        head + b'"sentiment": "up", "ts_event": 1}': "INVALID_RECORD",
        head + b'"sentiment": 0.1, "ts_event": 1, "extra": {"a": 1}}': "UNSUPPORTED_FIELD",
    }
    for raw, reason in cases.items():
        out = w.check(raw, origin="alt.raw.news")
        assert isinstance(out, DeadLetter) and out.reason == reason, (raw, out)
        assert out.payload == raw


def test_alt_writes_are_idempotent(tmp_path: Path) -> None:
    root = str(tmp_path)
    recs = lambda w: [w.check(funding(), origin="alt.raw.funding", seq=s) for s in range(1, 11)]  # noqa: E731
    w = AltTableWriter(AltConfig(root=root), ALT_SOURCES["funding"])
    assert w.write(recs(w)[:6]) == 6
    w2 = AltTableWriter(AltConfig(root=root), ALT_SOURCES["funding"])
    assert w2.write(recs(w2)) == 4
    assert sorted(r["seq"] for r in rows(root, "funding")) == list(range(1, 11))


def test_alt_flow_end_to_end(tmp_path: Path) -> None:
    acc = Accounting()
    msgs = [
        Message("alt.raw.funding", line, T, seq=i + 1)
        for i, line in enumerate((DATA / "funding_sample.jsonl").read_bytes().splitlines())
    ]
    msgs += [
        Message("alt.raw.news", line, T, seq=i + 1)
        for i, line in enumerate((DATA / "news_sample.jsonl").read_bytes().splitlines())
    ]
    msgs += [Message("alt.raw.onchain", b"{}", T, seq=1), Message("alt.raw.news", b"{}", T, seq=99)]
    dlq: list[Outgoing] = []
    run_main(
        build_flow(
            AltConfig(root=str(tmp_path), batch_ms=20),
            source=TestingSource(msgs),
            dlq_sink=TestingSink(dlq),
            accounting=acc,
        )
    )
    assert len(rows(str(tmp_path), "funding")) == 6 and len(rows(str(tmp_path), "news")) == 5
    reasons = sorted(msgspec.json.decode(o.data, type=DeadLetter).reason for o in dlq)
    assert reasons == ["INVALID_RECORD", "UNKNOWN_SOURCE"] and {o.subject for o in dlq} == {
        DLQ_SUBJECT
    }
    count = acc.stage("alt_sink")
    assert (count.records_in, count.out, count.dead_lettered) == (13, 11, 2) and count.balanced
