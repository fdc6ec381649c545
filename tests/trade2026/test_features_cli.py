"""``trade2026 features`` against a real store in tmp_path: apply, materialize, get, history."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from click.testing import CliRunner

from flows.features import FeatureOutputs, build_flow
from operators.features import FeatureConfig
from schemas.features import Bar
from sinks.features import data_dir, store_rows, write_offline
from tests.feature_samples import merged_ticks
from trade2026.commands.features import features

REPO_SRC = Path(__file__).resolve().parents[2] / "feature_repo"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TRADE2026_FEATURE_DATA", raising=False)
    dst = tmp_path / "repo"
    shutil.copytree(REPO_SRC, dst, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return dst


def test_importing_the_command_does_not_import_feast() -> None:
    code = "import sys, trade2026.commands.features; print('feast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_apply_materialize_get_history(repo: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(features, ["--repo", str(repo), "apply"])
    assert res.exit_code == 0, res.output
    assert "instrument_bars_1m" in res.output

    bars: list[Bar] = []
    outs = FeatureOutputs(
        bars=TestingSink(bars), late=TestingSink([]), dead_letters=TestingSink([])
    )
    run_main(build_flow(TestingSource(merged_ticks(), batch_size=2000), outs, FeatureConfig()))
    for view, rows in store_rows(bars).items():
        write_offline(data_dir(repo), view, rows)

    args = [
        "--repo",
        str(repo),
        "materialize",
        "--start",
        "2024-08-08T23:00:00",
        "--end",
        "2024-08-09T01:00:00",
    ]
    res = runner.invoke(features, args)
    assert res.exit_code == 0, res.output

    res = runner.invoke(
        features,
        [
            "--repo",
            str(repo),
            "get",
            "BTCUSDT.BINANCE",
            "ETHUSDT.BINANCE",
            "--json",
            "--feature",
            "close",
            "--feature",
            "trade_count",
        ],
    )
    assert res.exit_code == 0, res.output
    got = {r["instrument_id"]: r for r in json.loads(res.output)}
    # the latest 1-minute window per instrument, computed independently from the bars' source
    offline = pl.read_parquet(data_dir(repo) / "offline" / "instrument_bars_1m" / "*.parquet")
    latest = offline.sort("event_timestamp").group_by("instrument_id").last()
    for r in latest.iter_rows(named=True):
        assert got[r["instrument_id"]]["close"] == r["close"]
        assert got[r["instrument_id"]]["trade_count"] == r["trade_count"]

    # incremental materialization after a full one changes nothing
    res = runner.invoke(
        features, ["--repo", str(repo), "materialize", "--end", "2024-08-09T01:00:00"]
    )
    assert res.exit_code == 0, res.output
    again = runner.invoke(
        features,
        [
            "--repo",
            str(repo),
            "get",
            "BTCUSDT.BINANCE",
            "ETHUSDT.BINANCE",
            "--json",
            "--feature",
            "close",
            "--feature",
            "trade_count",
        ],
    )
    assert again.exit_code == 0, again.output
    assert {r["instrument_id"]: r for r in json.loads(again.output)} == got

    ends = offline["event_timestamp"].unique().sort()
    entities = pl.DataFrame(
        {
            "instrument_id": ["BTCUSDT.BINANCE"] * ends.len(),
            "event_timestamp": ends.dt.offset_by("30s"),
        }
    )
    ent_file = tmp_path / "entities.parquet"
    entities.write_parquet(ent_file)
    out = tmp_path / "train.parquet"
    res = runner.invoke(
        features,
        [
            "--repo",
            str(repo),
            "history",
            "--entities",
            str(ent_file),
            "--out",
            str(out),
            "--feature",
            "close",
        ],
    )
    assert res.exit_code == 0, res.output
    frame = pl.read_parquet(out).sort("event_timestamp")
    assert frame.height == entities.height
    btc = offline.filter(pl.col("instrument_id") == "BTCUSDT.BINANCE").sort("event_timestamp")
    expected = dict(
        zip(
            btc["event_timestamp"].dt.offset_by("30s").to_list(),
            btc["close"].to_list(),
            strict=True,
        )
    )
    for ts, close in zip(frame["event_timestamp"].to_list(), frame["close"].to_list(), strict=True):
        exp = expected.get(ts)
        assert (close is None or close != close) if exp is None else close == exp


def test_get_without_repo_config_fails_with_hint(tmp_path: Path) -> None:
    res = CliRunner().invoke(features, ["--repo", str(tmp_path), "get", "X"])
    assert res.exit_code != 0
    assert "hint" in res.output
