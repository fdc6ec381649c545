"""The HTML report, rendered from a store written by real validations, read back and checked
against the stored Delta tables and JSON results (read here independently)."""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from operators.quality.batch import BatchValidator, BatchValidatorConfig, record_accounting
from operators.quality.report import build_report
from schemas.canonical import Quote
from trade2026.accounting import Accounting

T0 = 1_723_161_600_000_000_000
MIN = 60_000_000_000


class Tables(HTMLParser):
    """Collects the text of every table cell, by table id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._id: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._id = dict(attrs).get("id")
            self.tables[self._id] = []
        elif tag == "tr" and self._id:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._id].append(self._row)
            self._row = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> dict[str, list[list[str]]]:
    p = Tables()
    p.feed(page)
    return p.tables


@pytest.fixture(scope="module")
def store(tmp_path_factory, btc_ticks, eth_ticks) -> Path:
    root = tmp_path_factory.mktemp("quality")
    times = iter([T0, T0 + MIN, T0 + 2 * MIN, T0 + 3 * MIN])
    v = BatchValidator(
        BatchValidatorConfig(
            stage="ticks", store=str(root), batch_rows=2000, max_queue=4, max_duty=1.0
        ),
        clock=lambda: next(times),
    ).start()
    v.offer_many(btc_ticks[:2000])  # pass
    v.offer_many([t for t in btc_ticks[2000:12000] if isinstance(t, Quote)][:2000])  # fail
    v.offer_many(eth_ticks[:2000])  # pass
    v.offer_many([t for t in eth_ticks[2000:12000] if isinstance(t, Quote)][:2000])  # fail
    v.close(timeout=120)
    acc = Accounting()
    acc.add(
        "normalize",
        {
            ("BTCUSDT.BINANCE", "in"): 100,
            ("BTCUSDT.BINANCE", "out"): 90,
            ("BTCUSDT.BINANCE", "dead_lettered"): 6,
            ("BTCUSDT.BINANCE", "duplicate"): 4,
        },
    )
    acc.add_reasons("normalize", ["CROSSED_QUOTE"] * 4 + ["INVALID_JSON"] * 2)
    record_accounting(acc, root, T0 + MIN)
    acc.add(
        "normalize",
        {
            ("ETHUSDT.BINANCE", "in"): 50,
            ("ETHUSDT.BINANCE", "out"): 49,
            ("ETHUSDT.BINANCE", "dead_lettered"): 1,
        },
    )
    acc.add_reasons("normalize", ["UNKNOWN_SYMBOL"])
    record_accounting(acc, root, T0 + 3 * MIN)
    return root


def _delta(root: Path, kind: str) -> list[dict]:
    from deltalake import DeltaTable

    return DeltaTable(str(root / kind)).to_pyarrow_table().to_pylist()


def test_report_numbers_match_the_store(store, tmp_path):
    index = build_report(store, tmp_path / "report")
    page = index.read_text()
    t = _tables(page)

    vals = _delta(store, "validations")
    passed = sum(1 for r in vals if r["success"])
    (summary,) = t["summary"]
    assert summary[:5] == ["ticks", str(len(vals)), str(passed), str(len(vals) - passed), "0"]
    assert summary[5] == f"{100 * passed / len(vals):.1f}%" == "50.0%"
    assert summary[6] == str(sum(r["rows"] for r in vals)) == "8000"

    # accounting: the latest snapshot, summed over instruments, from the raw table
    acc = _delta(store, "accounting")
    last = max(r["ts"] for r in acc)
    latest = [r for r in acc if r["ts"] == last]
    want = [sum(r[k] for r in latest) for k in ("records_in", "out", "dead_lettered", "duplicates")]
    assert want == [150, 139, 7, 4]
    (row,) = t["accounting"]
    assert row[:6] == ["normalize", *map(str, want), "0"]

    dl = {r["reason"]: r["count"] for r in _delta(store, "dead_letters") if r["ts"] == last}
    assert (
        {r[1]: int(r[2]) for r in t["dead-letters"]}
        == dl
        == {"CROSSED_QUOTE": 4, "INVALID_JSON": 2, "UNKNOWN_SYMBOL": 1}
    )

    # failing expectations: newest first, with the examples stored in the JSON results
    failing = t["failing"]
    bad_batches = sorted((r for r in vals if not r["success"]), key=lambda r: r["ts"], reverse=True)
    assert [r[2] for r in failing] == [r["batch_id"] for r in bad_batches]
    assert {(r[3], r[4]) for r in failing} == {("expect_column_mean_to_be_between", "is_trade")}
    for r, batch in zip(failing, bad_batches, strict=True):
        doc = json.loads(Path(batch["json_path"]).read_text())
        (res,) = [x for x in doc["result"]["results"] if not x["success"]]
        assert float(r[6]) == res["result"]["observed_value"] == 0.0

    # the plot: one series, one point per time bucket with a batch, rates as stored
    assert page.count('<polyline class="series" data-stage="ticks"') == 1
    titles = re.findall(
        r"<title>ticks [^:]+:\d\d:\d\d\.\d+Z: (\d+)% of (\d+) batches passed</title>", page
    )
    by_ts = sorted(vals, key=lambda r: r["ts"])
    assert [(int(p), int(n)) for p, n in titles] == [(100 if r["success"] else 0, 1) for r in by_ts]
    assert "<script" not in page and not re.search(r'(src|href)="https?://', page)

    # GX Data Docs page for the latest batch, offline-safe
    gx = (tmp_path / "report" / "gx" / "ticks.html").read_text()
    assert "expect_column_mean_to_be_between" in gx or "is_trade" in gx
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?://', gx)


def test_report_range_filters_validations_and_snapshots(store, tmp_path):
    index = build_report(store, tmp_path / "r2", since=T0 + MIN, until=T0 + 2 * MIN, gx_pages=False)
    t = _tables(index.read_text())
    vals = [r for r in _delta(store, "validations") if T0 + MIN <= r["ts"] <= T0 + 2 * MIN]
    assert len(vals) == 2
    (summary,) = t["summary"]
    assert summary[1:4] == [
        "2",
        str(sum(r["success"] for r in vals)),
        str(sum(not r["success"] for r in vals)),
    ]
    (row,) = t["accounting"]
    assert row[1:5] == ["100", "90", "6", "4"]  # the snapshot at T0 + 1 min
    assert Counter(r[1] for r in t["dead-letters"]) == Counter(
        {"CROSSED_QUOTE": 1, "INVALID_JSON": 1}
    )


def test_empty_store_renders(tmp_path):
    index = build_report(tmp_path / "nothing", tmp_path / "out")
    page = index.read_text()
    assert "No validations in this range." in page
    assert _tables(page)["summary"] == []
