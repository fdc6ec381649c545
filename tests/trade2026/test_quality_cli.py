"""``trade2026 quality check|report`` through click's CliRunner, on real files and Delta tables."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from trade2026.commands.quality import parse_time, quality_command

DATA = Path(__file__).resolve().parents[2] / "data" / "binance" / "spot_btcusdt_20240808.gz"


def _rows(limit: int = 3000, kinds: tuple[str, ...] = ("trade", "quote")) -> list[dict]:
    """Canonical tick rows (decimals as strings, as the Delta sink stores them)."""
    if not DATA.exists():
        pytest.skip(f"recorded Binance sample {DATA} is missing (it ships with the repo)")
    out = []
    with gzip.open(DATA, "rt") as f:
        for line in f:
            recv, _, body = line.partition(" ")
            msg = json.loads(body)
            stream, d = msg.get("stream", ""), msg.get("data", {})
            if stream.endswith("@trade") and "trade" in kinds:
                out.append(
                    {
                        "kind": "trade",
                        "instrument_id": "BTCUSDT.BINANCE",
                        "price": d["p"],
                        "size": d["q"],
                        "aggressor": "SELL" if d["m"] else "BUY",
                        "trade_id": str(d["t"]),
                        "ts_event": d["T"] * 1_000_000,
                        "ts_recv": int(recv),
                    }
                )
            elif stream.endswith("@bookTicker") and "quote" in kinds:
                out.append(
                    {
                        "kind": "quote",
                        "instrument_id": "BTCUSDT.BINANCE",
                        "bid_price": d["b"],
                        "bid_size": d["B"],
                        "ask_price": d["a"],
                        "ask_size": d["A"],
                        "update_id": d["u"],
                        "ts_event": int(recv),
                        "ts_recv": int(recv),
                    }
                )
            if len(out) >= limit:
                break
    return out


def _invoke(*args: str):
    return CliRunner().invoke(quality_command, list(args), catch_exceptions=False)


def test_check_passes_a_good_parquet_file(tmp_path):
    import pandas as pd

    path = tmp_path / "ticks.parquet"
    pd.DataFrame(_rows()).to_parquet(path)
    r = _invoke("check", str(path), "--suite", "ticks")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("PASS") and "3000 rows" in r.output and "15/15" in r.output


def test_check_fails_a_quotes_only_jsonl_file(tmp_path):
    path = tmp_path / "quotes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(1000, kinds=("quote",))))
    r = _invoke("check", str(path), "--suite", "ticks")
    assert r.exit_code == 1, r.output
    assert r.output.startswith("FAIL")
    assert "expect_column_mean_to_be_between(is_trade)" in r.output


def test_check_validates_a_delta_table_and_csv(tmp_path):
    import pandas as pd
    import pyarrow as pa
    from deltalake import write_deltalake

    rows = _rows(2000)
    write_deltalake(
        str(tmp_path / "table"), pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    )
    assert _invoke("check", str(tmp_path / "table"), "--suite", "ticks").exit_code == 0
    bad = pd.DataFrame(rows)
    bad.loc[bad["kind"] == "trade", "price"] = "-1"  # negative prices
    bad.to_csv(tmp_path / "bad.csv", index=False)
    r = _invoke("check", str(tmp_path / "bad.csv"), "--suite", "ticks")
    assert r.exit_code == 1 and "expect_column_values_to_be_between(price)" in r.output


def test_check_exit_codes_for_usage_and_unreadable_input(tmp_path):
    good = tmp_path / "x.csv"
    good.write_text("kind\ntrade\n")
    assert _invoke("check", str(good), "--suite", "no_such_suite").exit_code == 2
    assert _invoke("check", str(good)).exit_code == 2  # --suite is required
    (tmp_path / "x.xlsx").write_text("?")
    assert _invoke("check", str(tmp_path / "x.xlsx"), "--suite", "ticks").exit_code == 2
    assert _invoke("check", str(tmp_path / "missing.parquet"), "--suite", "ticks").exit_code == 3
    (tmp_path / "corrupt.parquet").write_bytes(b"not parquet at all")
    r = _invoke("check", str(tmp_path / "corrupt.parquet"), "--suite", "ticks")
    assert r.exit_code == 3 and "hint:" in r.output


def test_report_command_writes_and_prints_the_index(tmp_path):
    r = _invoke(
        "report",
        "--store",
        str(tmp_path / "store"),
        "--out",
        str(tmp_path / "rep"),
        "--since",
        "2024-08-08T23:55:00Z",
        "--until",
        "1723161600000000000",
        "--no-gx-pages",
    )
    assert r.exit_code == 0, r.output
    index = Path(r.output.strip())
    assert index == tmp_path / "rep" / "index.html" and index.is_file()
    assert "2024-08-08T23:55:00.000000Z to 2024-08-09T00:00:00.000000Z" in index.read_text()
    bad = _invoke(
        "report", "--since", "2024-08-09", "--until", "2024-08-08", "--out", str(tmp_path / "x")
    )
    assert bad.exit_code == 2


def test_parse_time():
    assert parse_time("2024-08-09T00:00:00Z") == 1_723_161_600_000_000_000
    assert parse_time("2024-08-09T00:00:00.000001") == 1_723_161_600_000_001_000
    assert parse_time("42") == 42
    assert parse_time(None) is None
