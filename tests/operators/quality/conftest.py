"""Real sample data for the quality tests: canonical ticks built from the recorded Binance files.

Built here independently of ``operators/normalize`` so the quality tests do not depend on
its conventions: trades stamp ``ts_event`` with Binance's trade time, spot bookTicker has
no event time so quotes use the receive time.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest

from schemas.canonical import Quote, TradeTick
from schemas.common import Aggressor

DATA = Path(__file__).resolve().parents[3] / "data" / "binance"
BTC = DATA / "spot_btcusdt_20240808.gz"
ETH = DATA / "spot_ethusdt_20240808.gz"


def load_ticks(path: Path, limit: int | None = None) -> list[TradeTick | Quote]:
    out: list[TradeTick | Quote] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            recv, _, body = line.partition(" ")
            msg = json.loads(body)
            stream, data = msg.get("stream", ""), msg.get("data", {})
            iid = f"{data.get('s', '')}.BINANCE"
            if stream.endswith("@trade"):
                out.append(
                    TradeTick(
                        instrument_id=iid,
                        price=Decimal(data["p"]),
                        size=Decimal(data["q"]),
                        aggressor=Aggressor.SELL if data["m"] else Aggressor.BUY,
                        trade_id=str(data["t"]),
                        ts_event=data["T"] * 1_000_000,
                        ts_recv=int(recv),
                    )
                )
            elif stream.endswith("@bookTicker"):
                out.append(
                    Quote(
                        instrument_id=iid,
                        bid_price=Decimal(data["b"]),
                        bid_size=Decimal(data["B"]),
                        ask_price=Decimal(data["a"]),
                        ask_size=Decimal(data["A"]),
                        update_id=data["u"],
                        ts_event=int(recv),
                        ts_recv=int(recv),
                    )
                )
            if limit is not None and len(out) >= limit:
                break
    return out


@pytest.fixture(scope="session")
def btc_ticks() -> list[TradeTick | Quote]:
    if not BTC.exists():
        pytest.skip(f"recorded Binance sample {BTC} is missing (it ships with the repo)")
    return load_ticks(BTC)


@pytest.fixture(scope="session")
def eth_ticks() -> list[TradeTick | Quote]:
    if not ETH.exists():
        pytest.skip(f"recorded Binance sample {ETH} is missing (it ships with the repo)")
    return load_ticks(ETH)
