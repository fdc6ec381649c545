"""What the HTTP gateway accepts and answers, and how a request becomes a ``SubmitOrder``.

The request bodies are msgspec Structs, decoded straight from the raw bytes: msgspec
reads a JSON number such as ``0.1`` into ``Decimal("0.1")`` from its text, so an order
typed into ``curl`` reaches risk with no binary-float drift. The same Structs produce
the OpenAPI schema, so the documented shape is the parsed shape.

The gateway is lenient where the seed platform's clients were (``"side": "buy"``,
``"order_type": "limit"``, a bare venue symbol, no account, no client order id) and
strict everywhere else (unknown fields, wrong types). Values (a zero quantity, a price
off the tick) are left to pre-trade risk, which denies them with a recorded reason.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated

import msgspec

from schemas.canonical import OrderEvent
from schemas.common import Market, OrderType, Side, TimeInForce
from schemas.instruments import InstrumentRegistry
from schemas.orders import CancelOrder, RiskDecision, SubmitOrder

__all__ = [
    "ApiKey",
    "ApiKeyConfig",
    "CancelRequest",
    "ErrorBody",
    "GatewayConfig",
    "Health",
    "OrderRequest",
    "OrderState",
    "Principal",
    "RequestRejected",
    "build_cancel",
    "build_submit",
]

#: Account ids and client order ids end up in NATS subjects and URL paths: keep them to
#: one safe token (no ``.``, ``*``, ``>`` or whitespace, which would change the subject).
_ID_PATTERN = r"^[A-Za-z0-9_\-:]{1,64}$"
Ident = Annotated[str, msgspec.Meta(pattern=_ID_PATTERN, description="1-64 of A-Z a-z 0-9 _ - :")]
#: Accounts follow the orders flow's rule (one subject token, no ``:``).
AccountId = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="1-64 of A-Z a-z 0-9 _ -")
]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Number = Annotated[
    Decimal,
    msgspec.Meta(
        description=(
            "exact decimal: a JSON number (read from its text, never via a float) "
            "or a decimal string"
        ),
        extra_json_schema={"examples": ["0.001", "45000.10"]},
    ),
]


class OrderRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /orders``: the seed platform's body plus optional Trade2026 fields.

    ``symbol`` is a bare venue symbol (``BTCUSDT``, looked up on ``venue``/``market``,
    defaulting to the gateway's default venue, spot) or a full instrument id
    (``BTCUSDT.BINANCE``). ``order_type`` defaults to LIMIT when a price is given and
    MARKET otherwise. ``side``, ``order_type`` and ``time_in_force`` are case-insensitive.
    """

    side: Annotated[str, msgspec.Meta(description="buy or sell, any case")]
    quantity: Number
    symbol: Symbol | None = None
    instrument_id: Symbol | None = None
    price: Number | None = None
    order_type: Annotated[str, msgspec.Meta(description="LIMIT or MARKET, any case")] | None = None
    time_in_force: Annotated[str, msgspec.Meta(description="GTC IOC FOK DAY GTD")] = "GTC"
    expire_time: Annotated[int, msgspec.Meta(ge=0, description="ns since epoch, GTD")] | None = None
    client_order_id: Ident | None = None
    account: AccountId | None = None
    account_id: AccountId | None = None
    venue: Symbol | None = None
    market: Market | None = None


class CancelRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Optional body of ``DELETE /orders/{id}``: only needed to name the account."""

    account: AccountId | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """Every non-2xx answer that is not a risk decision. Never echoes secrets or bodies."""

    error: str  # stable upper-case code
    detail: str
    hint: str = ""
    client_order_id: str | None = None


class OrderState(msgspec.Struct, frozen=True):
    """``GET /orders/{id}``: the latest known state of one order.

    ``event`` is the newest ``OrderEvent`` seen on ``orders.events.<account>``;
    ``decision`` is the risk decision when this gateway submitted the order. ``status``
    is the event's status, else ``DENIED`` or ``PENDING_NEW`` from the decision.
    """

    account_id: str
    client_order_id: str
    status: str
    event: OrderEvent | None = None
    decision: RiskDecision | None = None


class Health(msgspec.Struct, frozen=True):
    status: str  # ok | degraded
    nats: str  # connected | disconnected
    default_account: str
    default_venue: str
    instruments_version: str
    orders_tracked: int
    positions_tracked: int
    auth: bool


class ApiKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One API key: only its SHA-256 is configured, so a leaked config leaks no key."""

    name: str
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    accounts: tuple[AccountId, ...]


class ApiKeyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``X-API-Key`` header -> the accounts the key may trade and read.

    Loaded from TOML (``[[keys]] name = "desk-a"  sha256 = "..."  accounts = ["alice"]``);
    ``sha256`` is ``hashlib.sha256(key.encode()).hexdigest()``.
    """

    keys: tuple[ApiKey, ...]
    header: str = "X-API-Key"

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).hexdigest()
        found: ApiKey | None = None
        for key in self.keys:  # compare every key in constant time, no early exit
            if hmac.compare_digest(digest, key.sha256):
                found = key
        return None if found is None else Principal(found.name, found.accounts)


class Principal(msgspec.Struct, frozen=True):
    """Who is calling. ``accounts=None`` means any account (auth is off)."""

    name: str
    accounts: tuple[str, ...] | None

    def may(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts


ANONYMOUS = Principal("anonymous", None)


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    default_account: AccountId = "default"
    default_venue: str = "BINANCE"
    default_market: Market = Market.SPOT
    #: How long to wait for the orders flow's decision before answering 504.
    request_timeout_s: float = 2.0
    max_body_bytes: int = 64 * 1024
    #: Orders kept in the in-memory order view (oldest dropped first).
    max_orders_tracked: int = 100_000
    api_keys: ApiKeyConfig | None = None
    instruments_path: str | None = None


class RequestRejected(Exception):
    """A request the gateway refuses before it reaches risk: an HTTP status and a code."""

    def __init__(self, status: int, error: str, detail: str, hint: str = "") -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.body = ErrorBody(error, detail, hint)


def _enum(cls: type[Side] | type[OrderType] | type[TimeInForce], raw: str, field: str) -> str:
    value = raw.strip().upper()
    if value not in cls.__members__:
        allowed = ", ".join(m.lower() for m in cls.__members__)
        raise RequestRejected(
            400,
            "INVALID_FIELD",
            f"gateway: `{field}` must be one of {allowed}",
            "values are case-insensitive",
        )
    return value


def resolve_account(requested: str | None, principal: Principal, default_account: str) -> str:
    """The account an order belongs to: asked for, else the default, else the key's first."""
    if requested is not None:
        if not principal.may(requested):
            raise RequestRejected(
                403,
                "ACCOUNT_NOT_ALLOWED",
                f"gateway: this API key may not act for account {requested!r}",
                "use a key issued for that account",
            )
        return requested
    if principal.may(default_account) or not principal.accounts:
        return default_account
    return principal.accounts[0]


def _instrument_id(req: OrderRequest, registry: InstrumentRegistry, config: GatewayConfig) -> str:
    if req.instrument_id is not None:
        return req.instrument_id
    if req.symbol is None:
        raise RequestRejected(
            400,
            "MISSING_FIELD",
            "gateway: an order needs `symbol` (e.g. BTCUSDT) or `instrument_id`",
            'add "symbol": "BTCUSDT"',
        )
    if "." in req.symbol:  # already an instrument id; risk judges whether it is known
        return req.symbol
    venue = (req.venue or config.default_venue).upper()
    market = req.market or config.default_market
    inst = registry.by_symbol(venue, market, req.symbol)
    if inst is None:
        raise RequestRejected(
            400,
            "UNKNOWN_SYMBOL",
            f"gateway: no {market} instrument {req.symbol.upper()!r} on {venue} "
            f"in instruments config {registry.version}",
            "pass a symbol listed in the instruments config, or a full instrument_id",
        )
    return inst.instrument_id


def build_submit(
    req: OrderRequest,
    *,
    principal: Principal,
    registry: InstrumentRegistry,
    config: GatewayConfig,
    new_id: Callable[[], str],
    now_ns: int,
) -> SubmitOrder:
    """Fill in the gateway's defaults; raise :class:`RequestRejected` on a malformed request."""
    if req.account is not None and req.account_id is not None and req.account != req.account_id:
        raise RequestRejected(
            400, "CONFLICTING_FIELDS", "gateway: `account` and `account_id` differ", "send one"
        )
    account = resolve_account(req.account or req.account_id, principal, config.default_account)
    side = _enum(Side, req.side, "side")
    if req.order_type is None:
        order_type = OrderType.LIMIT if req.price is not None else OrderType.MARKET
    else:
        order_type = OrderType(_enum(OrderType, req.order_type, "order_type"))
    tif = _enum(TimeInForce, req.time_in_force, "time_in_force")
    return SubmitOrder(
        client_order_id=req.client_order_id or new_id(),
        account_id=account,
        instrument_id=_instrument_id(req, registry, config),
        side=Side(side),
        order_type=order_type,
        quantity=req.quantity,
        price=req.price,
        time_in_force=TimeInForce(tif),
        expire_time=req.expire_time,
        ts_submit=now_ns,
    )


def build_cancel(
    client_order_id: str, account: str, *, request_id: str, now_ns: int
) -> CancelOrder:
    return CancelOrder(
        account_id=account, client_order_id=client_order_id, request_id=request_id, ts_submit=now_ns
    )


def check_ident(value: str, what: str, account: bool = False) -> str:
    """Validate an id taken from a URL path or query string (same rule as in bodies)."""
    try:
        return msgspec.convert(value, AccountId if account else Ident)
    except msgspec.ValidationError:
        raise RequestRejected(
            400,
            "INVALID_FIELD",
            f"gateway: {what} must be 1-64 characters of A-Z a-z 0-9 _ -"
            + ("" if account else " :"),
            "ids name NATS subjects, so dots and wildcards are not allowed",
        ) from None
