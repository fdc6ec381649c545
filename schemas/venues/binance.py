"""Binance spot and USD-M futures websocket payloads.

One Struct per stream kind serves both markets: futures add a few fields
(``T`` transaction time, ``pu`` previous update id, ``X`` trade type) that spot
leaves out, so those are optional. Field names are Binance's single letters so
msgspec decodes the venue's bytes with no renaming pass.
"""

from __future__ import annotations

import msgspec

from schemas.common import Price, Quantity


class BinanceTrade(msgspec.Struct, frozen=True):
    """``<symbol>@trade``: ``m`` true means the buyer was the maker (a sell aggressor)."""

    e: str
    E: int  # event time, ms
    s: str
    t: int  # trade id
    p: Price
    q: Quantity
    T: int  # trade time, ms
    m: bool
    M: bool | None = None  # spot only; undocumented "ignore" flag
    X: str | None = None  # futures: MARKET, INSURANCE_FUND, ...


class BinanceBookTicker(msgspec.Struct, frozen=True):
    """``<symbol>@bookTicker``. Spot carries no event time; futures add ``E``/``T``."""

    u: int
    s: str
    b: Price
    B: Quantity
    a: Price
    A: Quantity
    e: str | None = None
    E: int | None = None
    T: int | None = None


class BinanceDepthUpdate(msgspec.Struct, frozen=True):
    """``<symbol>@depth[@100ms]``: level changes for update ids ``U..u``; size 0 deletes."""

    e: str
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[Price, Quantity]]
    a: list[tuple[Price, Quantity]]
    T: int | None = None  # futures transaction time
    pu: int | None = None  # futures: the previous event's ``u``


class BinanceDepthSnapshot(msgspec.Struct, frozen=True):
    """REST ``/depth`` response. It names no symbol: the carrier (subject) must."""

    lastUpdateId: int
    bids: list[tuple[Price, Quantity]]
    asks: list[tuple[Price, Quantity]]
    E: int | None = None
    T: int | None = None


class BinanceEnvelope(msgspec.Struct, frozen=True):
    """The combined-stream wrapper. ``data`` stays raw until ``stream`` says its type."""

    stream: str
    data: msgspec.Raw
