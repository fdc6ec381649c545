"""Shared vocabulary: enums and the exact numeric types used across the contract.

Prices and quantities are :class:`decimal.Decimal` and travel as JSON strings,
so a venue's decimal text never passes through a binary float on its way into
positions or P&L. Timestamps are integer nanoseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Annotated

import msgspec

#: Integer nanoseconds since the Unix epoch, UTC.
Nanos = Annotated[int, msgspec.Meta(ge=0, description="integer nanoseconds since the epoch, UTC")]
#: An exact decimal price, encoded as a JSON string.
Price = Annotated[Decimal, msgspec.Meta(description="exact decimal price, JSON string")]
#: An exact decimal quantity, encoded as a JSON string.
Quantity = Annotated[Decimal, msgspec.Meta(description="exact decimal quantity, JSON string")]

NANOS_PER_MILLI = 1_000_000
NANOS_PER_SECOND = 1_000_000_000


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class Aggressor(enum.StrEnum):
    """Which side took liquidity in a public trade."""

    BUY = "BUY"
    SELL = "SELL"
    UNKNOWN = "UNKNOWN"


class OrderType(enum.StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"


class TimeInForce(enum.StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    DAY = "DAY"
    GTD = "GTD"


class OrderStatus(enum.StrEnum):
    """The order states of FIX 4.4 Appendix D that the order path uses."""

    PENDING_NEW = "PENDING_NEW"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    PENDING_REPLACE = "PENDING_REPLACE"
    REJECTED = "REJECTED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"


class Liquidity(enum.StrEnum):
    MAKER = "MAKER"
    TAKER = "TAKER"


class Market(enum.StrEnum):
    """Which product line of a venue a symbol trades on."""

    SPOT = "SPOT"
    USDM = "USDM"  # Binance USD-M futures (perpetuals)
