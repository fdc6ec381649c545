"""Feast objects for Trade2026's windowed features. ``feast apply`` imports this file.

Entities ``instrument`` and ``account``; one feature view per window width, each over
the Parquet files the feature flow writes (``data/offline/<view>/*.parquet``, the
timestamp being the window end) and fed live through a push source of the same name.
Feature names and types come from :mod:`schemas.features` so the store and the flow
cannot drift apart. ``TRADE2026_FEATURE_DATA`` relocates the offline data folder.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int64
from feast.value_type import ValueType

from schemas.features import ACCOUNT_FEATURES, INSTRUMENT_FEATURES, INT_FEATURES

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("TRADE2026_FEATURE_DATA", HERE / "data")).resolve()
OFFLINE = DATA / "offline"

#: view name -> (entity, features, TTL). The TTL bounds how stale a value a
#: point-in-time join may return: a few windows' worth, so a stopped feed reads as missing.
VIEWS: dict[str, tuple[str, tuple[str, ...], timedelta]] = {
    "instrument_bars_1s": ("instrument", INSTRUMENT_FEATURES, timedelta(minutes=5)),
    "instrument_bars_1m": ("instrument", INSTRUMENT_FEATURES, timedelta(hours=2)),
    "account_pnl_1m": ("account", ACCOUNT_FEATURES, timedelta(days=1)),
}

instrument = Entity(
    name="instrument",
    join_keys=["instrument_id"],
    value_type=ValueType.STRING,
    description="A canonical instrument id, e.g. BTCUSDT.BINANCE",
)
account = Entity(
    name="account",
    join_keys=["account_id"],
    value_type=ValueType.STRING,
    description="A trading account id",
)
_ENTITIES = {"instrument": instrument, "account": account}


def _view(name: str, entity: str, features: tuple[str, ...], ttl: timedelta) -> FeatureView:
    batch = FileSource(
        name=f"{name}_offline",
        path=str(OFFLINE / name / "*.parquet"),
        timestamp_field="event_timestamp",
    )
    push = PushSource(name=name, batch_source=batch)
    return FeatureView(
        name=name,
        entities=[_ENTITIES[entity]],
        ttl=ttl,
        schema=[Field(name=f, dtype=Int64 if f in INT_FEATURES else Float64) for f in features],
        online=True,
        source=push,
        tags={"owner": "features", "window": name.rsplit("_", 1)[-1]},
    )


instrument_bars_1s = _view("instrument_bars_1s", *VIEWS["instrument_bars_1s"])
instrument_bars_1m = _view("instrument_bars_1m", *VIEWS["instrument_bars_1m"])
account_pnl_1m = _view("account_pnl_1m", *VIEWS["account_pnl_1m"])
