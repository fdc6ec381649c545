"""The versioned instruments config: which venue symbols we trade and their trading rules.

One file (``trade2026/config/instruments.toml`` by default, ``TRADE2026_INSTRUMENTS`` to
override) maps venue symbols to instrument ids and carries the exchange filters that
pre-trade risk enforces. It is versioned so every risk decision can name the rules it used.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import msgspec

from schemas.common import Market

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "trade2026" / "config" / "instruments.toml"


class Instrument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    instrument_id: str  # e.g. BTCUSDT.BINANCE, BTCUSDT-PERP.BINANCE, BTC-USD.COINBASE
    venue: str  # BINANCE, COINBASE
    market: Market
    symbol: str  # the venue's own symbol, upper case
    base: str
    quote: str
    tick_size: Decimal
    lot_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    halted: bool = False


class InstrumentsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: str
    instruments: list[Instrument]


class InstrumentRegistry:
    """Lookups by instrument id and by (venue, market, venue symbol)."""

    def __init__(self, config: InstrumentsConfig) -> None:
        self.version = config.version
        self._by_id: dict[str, Instrument] = {}
        self._by_symbol: dict[tuple[str, Market, str], Instrument] = {}
        for inst in config.instruments:
            if inst.instrument_id in self._by_id:
                raise ValueError(
                    f"instruments config {config.version}: duplicate id {inst.instrument_id!r}; "
                    "hint: each instrument_id must appear once"
                )
            self._by_id[inst.instrument_id] = inst
            self._by_symbol[(inst.venue, inst.market, inst.symbol.upper())] = inst

    def get(self, instrument_id: str) -> Instrument | None:
        return self._by_id.get(instrument_id)

    def by_symbol(self, venue: str, market: Market, symbol: str) -> Instrument | None:
        return self._by_symbol.get((venue, market, symbol.upper()))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, instrument_id: object) -> bool:
        return instrument_id in self._by_id


def load_instruments(path: str | Path | None = None) -> InstrumentRegistry:
    """Load and validate the instruments file; unknown fields are an error, not ignored."""
    path = Path(path or os.environ.get("TRADE2026_INSTRUMENTS") or DEFAULT_PATH)
    try:
        config = msgspec.toml.decode(path.read_bytes(), type=InstrumentsConfig)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"instruments config not found at {path}; hint: set TRADE2026_INSTRUMENTS"
        ) from None
    except msgspec.ValidationError as exc:
        raise ValueError(f"instruments config {path}: {exc}; hint: see docs/contract.md") from exc
    return InstrumentRegistry(config)
