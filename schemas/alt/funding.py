"""Perpetual-futures funding rates, as published by a venue every funding interval."""

from __future__ import annotations

import msgspec

from schemas.common import Nanos, Price


class FundingRate(msgspec.Struct, frozen=True):
    """One funding print. ``funding_rate`` is a fraction per interval (0.0001 = 1 bp).

    Unknown fields are allowed on purpose: they become new optional columns.
    """

    venue: str
    instrument_id: str
    funding_rate: Price
    funding_time: Nanos
    ts_event: Nanos
    mark_price: Price | None = None
