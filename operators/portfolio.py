"""Netted positions and P&L per account and instrument, marked to market from ticks.

Accounting (average cost, netting):
    Each position keeps its signed quantity and its signed *cost basis* (the sum of
    ``side * qty * price`` of the fills that opened what is still open). Adding to a
    position adds to the basis; reducing it removes the closed share of the basis and
    realizes ``proceeds - basis removed``; a fill larger than the position first closes it
    completely, then opens the rest at the fill price (flip through zero).

Exactness:
    Everything is :class:`~decimal.Decimal`. The one division is the basis removed by a
    *partial* reduce (``basis * closed / open``), rounded half-even to
    ``PortfolioConfig.pnl_quantum`` (1e-18 by default; sums and products run at 60 digits
    and never round). The remaining basis absorbs the rounding,
    so ``realized - basis`` always equals the cash flows exactly and a position closed to
    zero has a basis of exactly zero. ``avg_open_price`` is ``basis / qty`` rounded to
    ``price_quantum``: it is for display and is never used in P&L.

Fees:
    Kept apart in ``fees`` (in the quote currency; a negative fee is a rebate) and never
    folded into ``realized_pnl``: ``net P&L = realized + unrealized - fees``. Fees are
    assumed to be charged in the instrument's quote currency.

Mark:
    ``MID`` (default): the mid of the last usable quote, falling back to the last trade
    before any quote arrives. ``LAST``: the last trade price, falling back to the mid.
    Unrealized P&L is ``qty * mark - basis``, zero while there is no mark.

Snapshots:
    Every ``snapshot_interval_ns`` of event time. Before an event at ``ts`` is applied, if
    ``ts`` has crossed one or more interval boundaries since the last snapshot, one set of
    snapshots is emitted stamped with the latest boundary crossed: the state as it stood at
    that boundary (nothing changed in skipped intervals, so one set is enough).
"""

from __future__ import annotations

import enum
from collections import deque
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Annotated

import msgspec

from schemas.canonical import Fill, Position, Quote, TradeTick
from schemas.common import Side

_ZERO = Decimal(0)
_TWO = Decimal(2)
#: Wide enough that sums and products of venue decimals never round; only the one
#: documented division is rounded, and explicitly.
_CTX = Context(prec=60, rounding=ROUND_HALF_EVEN)


class MarkSource(enum.StrEnum):
    MID = "MID"
    LAST = "LAST"


class PortfolioConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    account_id: str
    snapshot_interval_ns: Annotated[int, msgspec.Meta(gt=0)] = 1_000_000_000
    mark: MarkSource = MarkSource.MID
    pnl_quantum: Decimal = Decimal("1E-18")
    price_quantum: Decimal = Decimal("1E-12")
    #: How many recent exec ids are remembered to drop redelivered fills.
    dedup_window: Annotated[int, msgspec.Meta(gt=0)] = 100_000

    def build(self) -> Portfolio:
        return Portfolio(self)


class AccountPnl(msgspec.Struct, frozen=True, tag_field="kind", tag="account_pnl"):
    """Account totals across instruments, published on ``pnl.<account>``."""

    account_id: str
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    fees: Decimal
    net_pnl: Decimal
    gross_exposure: Decimal
    open_positions: int
    ts_event: int


class FillRejected(msgspec.Struct, frozen=True, tag_field="kind", tag="fill_rejected"):
    """A fill the portfolio refused or dropped; the flow dead-letters or counts it."""

    exec_id: str
    reason: str
    detail: str


class PositionState(msgspec.Struct):
    account_id: str
    instrument_id: str
    quantity: Decimal = _ZERO
    cost_basis: Decimal = _ZERO
    realized_pnl: Decimal = _ZERO
    fees: Decimal = _ZERO
    last_trade: Decimal | None = None
    mid: Decimal | None = None
    ts_event: int = 0


class PositionKeeper:
    """One netted position; pure arithmetic with no dedup, validation or snapshot timing."""

    def __init__(self, state: PositionState, config: PortfolioConfig) -> None:
        self.s = state
        self._pnl_q = config.pnl_quantum
        self._px_q = config.price_quantum
        self._mark_source = config.mark

    def apply_fill(
        self, side: Side, qty: Decimal, price: Decimal, fee: Decimal, ts: int
    ) -> Decimal:
        """Apply one fill; returns the P&L it realized (fees excluded)."""
        with localcontext(_CTX):
            return self._apply(side, qty, price, fee, ts)

    def _apply(self, side: Side, qty: Decimal, price: Decimal, fee: Decimal, ts: int) -> Decimal:
        s = self.s
        signed = qty if side is Side.BUY else -qty
        s.fees += fee
        s.ts_event = max(s.ts_event, ts)
        realized = _ZERO
        if s.quantity == 0 or (s.quantity > 0) == (signed > 0):
            s.quantity += signed
            s.cost_basis += signed * price
            return realized
        open_abs = abs(s.quantity)
        closed = min(qty, open_abs)
        if closed == open_abs:
            removed = s.cost_basis
        else:
            removed = (s.cost_basis * closed / open_abs).quantize(self._pnl_q)
        # closing a long sells: proceeds +closed*price; closing a short buys: -closed*price
        proceeds = closed * price if s.quantity > 0 else -closed * price
        realized = proceeds - removed
        s.realized_pnl += realized
        s.cost_basis -= removed
        s.quantity += signed
        opened = qty - closed
        if opened > 0:  # flipped through zero: the rest opens a new position at this price
            s.cost_basis = (opened if side is Side.BUY else -opened) * price
        return realized

    def mark(self) -> Decimal | None:
        s = self.s
        if self._mark_source is MarkSource.MID:
            return s.mid if s.mid is not None else s.last_trade
        return s.last_trade if s.last_trade is not None else s.mid

    def unrealized(self) -> Decimal:
        m = self.mark()
        if m is None or self.s.quantity == 0:
            return _ZERO
        with localcontext(_CTX):
            return self.s.quantity * m - self.s.cost_basis

    def avg_open_price(self) -> Decimal | None:
        s = self.s
        if s.quantity == 0:
            return None
        with localcontext(_CTX):
            return (s.cost_basis / s.quantity).quantize(self._px_q)

    def to_position(self, ts: int) -> Position:
        s = self.s
        return Position(
            account_id=s.account_id,
            instrument_id=s.instrument_id,
            quantity=s.quantity,
            avg_open_price=self.avg_open_price(),
            realized_pnl=s.realized_pnl,
            unrealized_pnl=self.unrealized(),
            mark_price=self.mark(),
            fees=s.fees,
            ts_event=ts,
        )


class PortfolioState(msgspec.Struct):
    account_id: str
    positions: dict[str, PositionState] = msgspec.field(default_factory=dict)
    seen_exec_ids: list[str] = msgspec.field(default_factory=list)
    last_snapshot_boundary: int = -1
    now_ns: int = 0


class Portfolio:
    """All positions of one account; fills and ticks in, positions and totals out.

    Keyed by account in a flow. Ticks for instruments the account never traded are
    remembered (cheaply: one mark per instrument) so a first fill is marked at once.
    """

    def __init__(self, config: PortfolioConfig, state: PortfolioState | None = None) -> None:
        self.config = config
        self._s = state if state is not None else PortfolioState(config.account_id)
        self._keepers = {k: PositionKeeper(v, config) for k, v in self._s.positions.items()}
        self._seen = set(self._s.seen_exec_ids)
        self._seen_order: deque[str] = deque(self._s.seen_exec_ids)

    # --- snapshot ---------------------------------------------------------------------------

    def snapshot(self) -> PortfolioState:
        self._s.seen_exec_ids = list(self._seen_order)
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._s), type=PortfolioState)

    @classmethod
    def restore(cls, config: PortfolioConfig, state: PortfolioState) -> Portfolio:
        copy = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=PortfolioState)
        return cls(config, copy)

    # --- inputs -----------------------------------------------------------------------------

    def on_fill(self, fill: Fill) -> tuple[list[Position | AccountPnl], FillRejected | None]:
        """Apply a fill; returns snapshots that fell due first, and a rejection if refused."""
        due = self.on_time(fill.ts_event)
        problem = self._check(fill)
        if problem is not None:
            return due, FillRejected(fill.exec_id, *problem)
        self._remember(fill.exec_id)
        keeper = self._keeper(fill.instrument_id)
        keeper.apply_fill(fill.side, fill.quantity, fill.price, fill.fee, fill.ts_event)
        return due, None

    def on_tick(self, tick: Quote | TradeTick) -> list[Position | AccountPnl]:
        """Update the mark of the tick's instrument; unusable prices are ignored."""
        due = self.on_time(tick.ts_event)
        if isinstance(tick, Quote):
            if _ok(tick.bid_price) and _ok(tick.ask_price) and tick.bid_price <= tick.ask_price:
                self._keeper(tick.instrument_id).s.mid = (tick.bid_price + tick.ask_price) / _TWO
        elif _ok(tick.price):
            self._keeper(tick.instrument_id).s.last_trade = tick.price
        return due

    def on_time(self, ts: int) -> list[Position | AccountPnl]:
        """Emit snapshots if event time ``ts`` crossed an interval boundary; else nothing."""
        s = self._s
        s.now_ns = max(s.now_ns, ts)
        boundary = ts - ts % self.config.snapshot_interval_ns
        if s.last_snapshot_boundary < 0:
            s.last_snapshot_boundary = boundary  # the first event starts the clock
            return []
        if boundary <= s.last_snapshot_boundary:
            return []
        s.last_snapshot_boundary = boundary
        return [*self.positions(boundary), self.totals(boundary)]

    # --- outputs ----------------------------------------------------------------------------

    def positions(self, ts: int) -> list[Position]:
        """Open positions and those with any P&L or fees, by instrument id."""
        return [
            k.to_position(ts)
            for _, k in sorted(self._keepers.items())
            if k.s.quantity != 0 or k.s.realized_pnl != 0 or k.s.fees != 0
        ]

    def position(self, instrument_id: str) -> Position:
        return self._keeper(instrument_id).to_position(self._s.now_ns)

    def totals(self, ts: int) -> AccountPnl:
        realized = unrealized = fees = gross = _ZERO
        open_positions = 0
        for k in self._keepers.values():
            realized += k.s.realized_pnl
            unrealized += k.unrealized()
            fees += k.s.fees
            m = k.mark()
            if k.s.quantity != 0:
                open_positions += 1
                gross += abs(k.s.quantity * m) if m is not None else abs(k.s.cost_basis)
        return AccountPnl(
            account_id=self._s.account_id,
            realized_pnl=realized,
            unrealized_pnl=unrealized,
            fees=fees,
            net_pnl=realized + unrealized - fees,
            gross_exposure=gross,
            open_positions=open_positions,
            ts_event=ts,
        )

    # --- internals --------------------------------------------------------------------------

    def _keeper(self, instrument_id: str) -> PositionKeeper:
        k = self._keepers.get(instrument_id)
        if k is None:
            state = PositionState(self._s.account_id, instrument_id)
            self._s.positions[instrument_id] = state
            k = self._keepers[instrument_id] = PositionKeeper(state, self.config)
        return k

    def _check(self, fill: Fill) -> tuple[str, str] | None:
        if fill.exec_id in self._seen:
            return "DUPLICATE_EXEC_ID", f"exec id {fill.exec_id} already applied"
        if fill.account_id != self._s.account_id:
            return "WRONG_ACCOUNT", f"fill for {fill.account_id} sent to {self._s.account_id}"
        if not _ok(fill.quantity):
            return "INVALID_QUANTITY", f"quantity {fill.quantity} must be finite and > 0"
        if not _ok(fill.price):
            return "INVALID_PRICE", f"price {fill.price} must be finite and > 0"
        if not fill.fee.is_finite():
            return "INVALID_FEE", f"fee {fill.fee} must be finite"
        return None

    def _remember(self, exec_id: str) -> None:
        self._seen.add(exec_id)
        self._seen_order.append(exec_id)
        if len(self._seen_order) > self.config.dedup_window:
            self._seen.discard(self._seen_order.popleft())


def _ok(value: Decimal) -> bool:
    return value.is_finite() and value > 0
