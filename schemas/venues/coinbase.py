"""Coinbase Exchange websocket ``match`` and ``ticker`` payloads."""

from __future__ import annotations

import msgspec

from schemas.common import Price, Quantity


class CoinbaseMatch(msgspec.Struct, frozen=True, tag_field="type", tag="match"):
    """A trade. ``side`` is the *maker's* side, so the aggressor is the opposite."""

    trade_id: int
    sequence: int
    maker_order_id: str
    taker_order_id: str
    time: str  # RFC 3339 with microseconds
    product_id: str
    size: Quantity
    price: Price
    side: str


class CoinbaseLastMatch(CoinbaseMatch, frozen=True, tag="last_match"):
    """Sent once on subscribe; same shape as ``match``."""


class CoinbaseTicker(msgspec.Struct, frozen=True, tag_field="type", tag="ticker"):
    sequence: int
    product_id: str
    price: Price
    best_bid: Price
    best_ask: Price
    time: str
    best_bid_size: Quantity | None = None
    best_ask_size: Quantity | None = None
    side: str | None = None
    trade_id: int | None = None
    last_size: Quantity | None = None
    open_24h: Price | None = None
    volume_24h: Quantity | None = None
    low_24h: Price | None = None
    high_24h: Price | None = None
    volume_30d: Quantity | None = None


CoinbaseMessage = CoinbaseMatch | CoinbaseLastMatch | CoinbaseTicker
