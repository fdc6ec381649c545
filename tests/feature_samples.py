"""Canonical ticks built straight from the recorded Binance sample, for the feature tests.

Deliberately independent of ``operators.normalize``: it reads the raw lines with the
stdlib ``json`` module (prices parsed as ``Decimal`` from the venue strings) so the
feature tests do not depend on, or share bugs with, the normaliser.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

from schemas.canonical import Quote, TradeTick
from schemas.common import NANOS_PER_MILLI, Aggressor

DATA = Path(__file__).resolve().parent.parent / "data" / "binance"
BTC = DATA / "spot_btcusdt_20240808.gz"
ETH = DATA / "spot_ethusdt_20240808.gz"


def read_ticks(path: Path, limit: int | None = None) -> list[TradeTick | Quote]:
    """Trades and quotes in file (receive) order. Quotes use ts_recv as event time."""
    out: list[TradeTick | Quote] = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            recv_s, _, payload = line.partition(" ")
            msg = json.loads(payload)
            stream = msg.get("stream", "")
            data = msg.get("data", {})
            recv = int(recv_s)
            if stream.endswith("@trade"):
                out.append(
                    TradeTick(
                        instrument_id=f"{data['s']}.BINANCE",
                        price=Decimal(data["p"]),
                        size=Decimal(data["q"]),
                        aggressor=Aggressor.SELL if data["m"] else Aggressor.BUY,
                        trade_id=str(data["t"]),
                        ts_event=data["T"] * NANOS_PER_MILLI,
                        ts_recv=recv,
                    )
                )
            elif stream.endswith("@bookTicker"):
                out.append(
                    Quote(
                        instrument_id=f"{data['s']}.BINANCE",
                        bid_price=Decimal(data["b"]),
                        bid_size=Decimal(data["B"]),
                        ask_price=Decimal(data["a"]),
                        ask_size=Decimal(data["A"]),
                        update_id=data["u"],
                        ts_event=recv,
                        ts_recv=recv,
                    )
                )
            if limit is not None and len(out) >= limit:
                break
    return out


def merged_ticks(limit_per_file: int | None = None) -> list[TradeTick | Quote]:
    """Both instruments interleaved by receive time, as a live feed would deliver them."""
    ticks = read_ticks(BTC, limit_per_file) + read_ticks(ETH, limit_per_file)
    ticks.sort(key=lambda t: t.ts_recv)  # stable: same-ns lines keep file order
    return ticks
