"""The wire contract: msgspec Structs for raw venue messages and canonical records.

Everything that crosses a process boundary is one of these Structs, so the
contract is defined once and the JSON Schema in ``docs/contract.md`` is exported
from the same code (``trade2026 schema``).
"""

from schemas.canonical import (
    BookDelta,
    BookLevel,
    DataGap,
    DeadLetter,
    Fill,
    Order,
    OrderEvent,
    Position,
    Quote,
    Tick,
    TradeTick,
)
from schemas.common import Liquidity, OrderStatus, OrderType, Side, TimeInForce

__all__ = [
    "BookDelta",
    "BookLevel",
    "DataGap",
    "DeadLetter",
    "Fill",
    "Liquidity",
    "Order",
    "OrderEvent",
    "OrderStatus",
    "OrderType",
    "Position",
    "Quote",
    "Side",
    "Tick",
    "TimeInForce",
    "TradeTick",
]
