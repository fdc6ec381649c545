"""Feature sink and Feast store, for real: SQLite/Redis online, DuckDB offline over Parquet."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.features import FeatureOutputs, build_flow
from operators.features import MINUTE_NS, SECOND_NS
from schemas.canonical import Quote, TradeTick
from schemas.features import Bar
from sinks.features import FeatureStoreSink, data_dir, push_online, store_rows, write_offline
from tests.feature_samples import merged_ticks

REPO_SRC = Path(__file__).resolve().parents[2] / "feature_repo"


def make_repo(tmp: Path, yaml: str = "feature_store.yaml", project: str | None = None) -> Path:
    repo = tmp / "repo"
    shutil.copytree(REPO_SRC, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    if project:
        cfg = repo / yaml
        cfg.write_text(cfg.read_text().replace("project: trade2026", f"project: {project}"))
    return repo


def apply(repo: Path, yaml: str = "feature_store.yaml"):
    from feast import FeatureStore

    from sinks.features import ensure_offline
    from trade2026.commands.features import load_definitions

    ensure_offline(data_dir(repo))
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=repo / yaml)
    store.apply(load_definitions(repo))
    return store


@pytest.fixture(autouse=True)
def _no_data_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADE2026_FEATURE_DATA", raising=False)


@pytest.fixture(scope="module")
def ticks() -> list[TradeTick | Quote]:
    return merged_ticks()


def trades_frame(ticks: list[TradeTick | Quote]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            (t.instrument_id, t.ts_event, i, str(t.price), str(t.size))
            for i, t in enumerate(ticks)
            if isinstance(t, TradeTick)
        ],
        schema=["instrument_id", "ts", "arrival", "p", "q"],
        orient="row",
    ).with_columns(pl.col("p").cast(pl.Decimal(38, 8)), pl.col("q").cast(pl.Decimal(38, 8)))


def latest_window_reference(ticks: list[TradeTick | Quote], width: int) -> dict[str, dict]:
    """Per instrument, the last window any tick fell in, with its trades' close/volume/count."""
    last_start = {}
    for t in ticks:
        s = t.ts_event - t.ts_event % width
        last_start[t.instrument_id] = max(s, last_start.get(t.instrument_id, 0))
    trades = trades_frame(ticks).sort(["instrument_id", "ts", "arrival"])
    out = {}
    for inst, start in last_start.items():
        w = trades.filter(
            (pl.col("instrument_id") == inst)
            & (pl.col("ts") >= start)
            & (pl.col("ts") < start + width)
        )
        out[inst] = {
            "close": float(w["p"][-1]) if w.height else None,
            "volume": float(w["q"].sum()) if w.height else 0.0,
            "trade_count": w.height,
        }
    return out


def test_flow_into_store_online_equals_latest_window_and_pit_history(tmp_path: Path, ticks) -> None:
    repo = make_repo(tmp_path)
    store = apply(repo)
    dead: list = []
    late: list = []
    outputs = FeatureOutputs(
        bars=FeatureStoreSink(repo), late=TestingSink(late), dead_letters=TestingSink(dead)
    )
    run_main(build_flow(TestingSource(ticks, batch_size=2000), outputs))

    # offline data (read independently with polars) holds every window once
    offline = pl.read_parquet(data_dir(repo) / "offline" / "instrument_bars_1m" / "*.parquet")
    assert offline.select("instrument_id", "event_timestamp").is_duplicated().sum() == 0
    ref_close = (
        trades_frame(ticks)
        .sort(["instrument_id", "ts", "arrival"])
        .with_columns(
            ((pl.col("ts") - pl.col("ts") % MINUTE_NS + MINUTE_NS) // 1000).alias("end_us")
        )
        .group_by(["instrument_id", "end_us"])
        .agg(
            pl.col("p").last().cast(pl.Float64).alias("close_ref"),
            pl.col("q").sum().cast(pl.Float64).alias("vol_ref"),
        )
    )
    joined = ref_close.join(
        offline.with_columns(pl.col("event_timestamp").dt.epoch("us").alias("end_us")),
        on=["instrument_id", "end_us"],
        how="left",
    )
    assert joined["close"].to_list() == joined["close_ref"].to_list()
    assert joined["volume"].to_list() == joined["vol_ref"].to_list()

    # online: pushed by the sink, equal to the latest window per instrument
    for view, width in [("instrument_bars_1m", MINUTE_NS), ("instrument_bars_1s", SECOND_NS)]:
        expected = latest_window_reference(ticks, width)
        insts = sorted(expected)
        got = store.get_online_features(
            features=[f"{view}:close", f"{view}:volume", f"{view}:trade_count"],
            entity_rows=[{"instrument_id": i} for i in insts],
        ).to_dict()
        for k, inst in enumerate(insts):
            e = expected[inst]
            assert got["trade_count"][k] == e["trade_count"]
            assert got["volume"][k] == pytest.approx(e["volume"], rel=1e-15)
            assert got["close"][k] == e["close"]

    # point-in-time history vs an independent as-of join over the offline files
    fv_ttl = timedelta(seconds=1 * 60 * 120)  # instrument_bars_1m TTL: 2 h
    ends = offline["event_timestamp"].dt.epoch("ns").unique().sort().to_list()
    rows = []
    for inst in ("BTCUSDT.BINANCE", "ETHUSDT.BINANCE", "NOPE.BINANCE"):
        for e in ends:
            rows.append((inst, e))  # exactly at a window end: that window is visible
            rows.append((inst, e + 123_456_000))  # mid-window: still the previous one
            rows.append((inst, e - 1_000))  # just before the end: not yet visible
        rows.append((inst, ends[0] - 3_600 * SECOND_NS))  # before any data
        rows.append((inst, ends[-1] + 3 * 3_600 * SECOND_NS))  # beyond the TTL
    entity_df = pd.DataFrame(rows, columns=["instrument_id", "ts"])
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["ts"], unit="ns", utc=True)
    entity_df = entity_df.drop(columns="ts")
    hist = store.get_historical_features(
        entity_df=entity_df, features=["instrument_bars_1m:close", "instrument_bars_1m:trade_count"]
    ).to_df()
    assert len(hist) == len(entity_df), "no dropped rows"

    left = (
        pl.from_pandas(entity_df)
        .with_columns(pl.col("event_timestamp").dt.cast_time_unit("us"))
        .sort("event_timestamp")
    )
    right = offline.select("instrument_id", "event_timestamp", "close", "trade_count").sort(
        "event_timestamp"
    )
    expected_pit = left.join_asof(
        right.rename({"event_timestamp": "feature_ts"}),
        left_on="event_timestamp",
        right_on="feature_ts",
        by="instrument_id",
        strategy="backward",
        tolerance=fv_ttl,
    )
    got_pit = pl.from_pandas(hist).with_columns(pl.col("event_timestamp").dt.cast_time_unit("us"))
    cmp = expected_pit.join(got_pit, on=["instrument_id", "event_timestamp"], suffix="_feast")
    assert cmp.height == len(entity_df)
    exp_close = [None if v is None else v for v in cmp["close"].to_list()]
    got_close = [None if v != v else v for v in cmp["close_feast"].to_list()]  # NaN -> None
    assert got_close == exp_close
    assert sum(v is not None for v in exp_close) > len(ends)  # the join did find data


def test_materialize_is_idempotent_and_online_equals_latest(tmp_path: Path, ticks) -> None:
    repo = make_repo(tmp_path)
    store = apply(repo)
    bars: list[Bar] = []
    outputs = FeatureOutputs(
        bars=TestingSink(bars), late=TestingSink([]), dead_letters=TestingSink([])
    )
    run_main(build_flow(TestingSource(ticks, batch_size=2000), outputs))
    rows = store_rows(bars)
    half = len(rows["instrument_bars_1m"]) // 2
    write_offline(data_dir(repo), "instrument_bars_1m", rows["instrument_bars_1m"][:half])
    write_offline(data_dir(repo), "instrument_bars_1m", rows["instrument_bars_1m"][half:])

    def online() -> dict:
        return store.get_online_features(
            features=[
                "instrument_bars_1m:close",
                "instrument_bars_1m:volume",
                "instrument_bars_1m:vwap",
            ],
            entity_rows=[
                {"instrument_id": "BTCUSDT.BINANCE"},
                {"instrument_id": "ETHUSDT.BINANCE"},
            ],
        ).to_dict()

    assert online()["close"] == [None, None]
    start = datetime(2024, 8, 8, 23, 0, tzinfo=UTC)
    end = datetime(2024, 8, 9, 1, 0, tzinfo=UTC)
    store.materialize(start_date=start, end_date=end, feature_views=["instrument_bars_1m"])
    first = online()
    store.materialize(start_date=start, end_date=end, feature_views=["instrument_bars_1m"])
    assert online() == first
    store.materialize_incremental(end_date=end, feature_views=["instrument_bars_1m"])
    assert online() == first
    expected = latest_window_reference(ticks, MINUTE_NS)
    assert first["close"] == [
        expected["BTCUSDT.BINANCE"]["close"],
        expected["ETHUSDT.BINANCE"]["close"],
    ]
    assert first["volume"] == pytest.approx(
        [expected["BTCUSDT.BINANCE"]["volume"], expected["ETHUSDT.BINANCE"]["volume"]], rel=1e-15
    )


def _row(end_s: int, close: str):
    ns = end_s * SECOND_NS
    bar = Bar(
        "X.BINANCE",
        MINUTE_NS,
        ns - MINUTE_NS,
        ns,
        1,
        Decimal(1),
        Decimal(1),
        Decimal(0),
        Decimal(close),
        Decimal(close),
        Decimal(close),
        Decimal(close),
        Decimal(close),
        float(close),
        1.0,
        None,
        0,
        None,
        None,
        None,
        None,
        None,
        None,
    )
    return store_rows([bar])["instrument_bars_1m"]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary on PATH to test the production (Redis) online store")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sqlite_online_is_last_write_wins(tmp_path: Path) -> None:
    store = apply(make_repo(tmp_path))
    push_online(store, "instrument_bars_1m", _row(1_723_161_300, "200"))
    push_online(store, "instrument_bars_1m", _row(1_723_161_240, "100"))  # older, written later
    got = store.get_online_features(["instrument_bars_1m:close"], [{"instrument_id": "X.BINANCE"}])
    assert got.to_dict()["close"] == [100.0]


def test_redis_online_keeps_newer_event_time(tmp_path: Path, redis_url: str) -> None:
    yaml = "feature_store.production.yaml"
    repo = make_repo(tmp_path, yaml, project=f"t26test{uuid.uuid4().hex[:10]}")
    cfg = repo / yaml
    cfg.write_text(cfg.read_text().replace('"127.0.0.1:6379"', f'"{redis_url}"'))
    store = apply(repo, yaml)
    try:
        push_online(store, "instrument_bars_1m", _row(1_723_161_300, "200"))
        push_online(store, "instrument_bars_1m", _row(1_723_161_240, "100"))  # older: ignored
        got = store.get_online_features(
            ["instrument_bars_1m:close"], [{"instrument_id": "X.BINANCE"}]
        )
        assert got.to_dict()["close"] == [200.0]
        push_online(store, "instrument_bars_1m", _row(1_723_161_360, "300"))
        got = store.get_online_features(
            ["instrument_bars_1m:close"], [{"instrument_id": "X.BINANCE"}]
        )
        assert got.to_dict()["close"] == [300.0]
    finally:
        store.teardown()
