"""A simulated venue: matches our orders against the live canonical ticks of one instrument.

The venue never sees a real order book, only the public top of book (:class:`Quote`) and
the public prints (:class:`TradeTick`). The rules below are chosen to be conservative (a
simulation that fills too easily flatters every strategy) and deterministic (the same
ticks and commands in the same order give byte-identical fills, so a replay reproduces a
session exactly).

Time
    Event time only; the venue never reads a clock. Inputs are taken in the order given
    (one instrument's ticks and commands merged in arrival order), and every input moves
    event time forward to its own timestamp. A command (submit, cancel, replace)
    arriving at ``ts`` takes effect at ``ts + latency_ns``. It sees every tick with
    ``ts_event <= ts + latency_ns`` and none after. A command whose effective time is
    already behind the tick stream takes effect at once against the current book: the
    venue cannot go back in time. With no ticks flowing, :meth:`SimulatedVenue.advance`
    moves event time forward (a flow calls it from a timer or on every order).

Taking liquidity (market orders, marketable limits, anything that crosses on arrival)
    Fills at the opposite best price, up to the displayed size, as TAKER. Size we take is
    consumed: a second order before the next quote cannot take the same displayed size.
    Only one level is visible, so nothing walks the book within a quote.

Market order remainder (``VenueConfig.market_remainder``)
    ``CANCEL`` (default): the unfilled remainder is canceled at once with reason
    ``MARKET_REMAINDER`` (IOC-like), because the depth behind the top level is unknown.
    ``REST``: the remainder stays working and takes the opposite best of each later quote.

Resting limit orders (MAKER, filled at their own limit price, never better)
    * a quote crosses them: a buy at ``L`` fills when ``ask <= L`` (a sell when
      ``bid >= L``), up to the displayed opposite size;
    * a trade prints *through* them: a buy at ``L`` fills when a trade prints strictly below
      ``L`` (a sell strictly above), up to the trade size. A print *at* ``L`` does not fill:
      the queue ahead of us at ``L`` is unknown, so only a print beyond our price proves
      that our level was cleared. The aggressor side is ignored for the same reason.
    Our orders fill in price then time priority; a replace that changes the price or raises
    the quantity loses time priority.

Time in force
    IOC takes what it can and cancels the rest (``IOC_REMAINDER``). FOK fills completely
    against the displayed size on arrival or is canceled whole (``FOK_UNFILLABLE``). DAY
    expires at the end of the UTC day it became active in. GTD expires at ``expire_time``
    (exclusive: live strictly before it). Expiry is reported with ``ts_event`` equal to
    the expiry time.

Cancel and replace
    Both take effect after the latency, so a fill can beat them (a late cancel then
    cancels only what is left). A replace's quantity is the new *total*; at or below the
    filled quantity it amends the order down to what has filled, leaving nothing working
    (FIX 4.4 Appendix D). A replace into a marketable price takes liquidity at once.

Fees
    ``quantity * price * bps / 10_000`` in the quote currency, maker or taker rate, rounded
    half-even to ``fee_quantum``. Negative bps are rebates.
"""

from __future__ import annotations

import enum
import heapq
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import TYPE_CHECKING, Annotated

import msgspec

from schemas.canonical import Fill, Order, Quote, TradeTick
from schemas.common import Liquidity, OrderType, Side, TimeInForce

if TYPE_CHECKING:
    from schemas.orders import ExecutionReport

NANOS_PER_DAY = 86_400 * 1_000_000_000
_BPS = Decimal(10_000)
_ZERO = Decimal(0)
#: Wide enough that a fee never rounds before its one documented quantize.
_CTX = Context(prec=60, rounding=ROUND_HALF_EVEN)


class RemainderRule(enum.StrEnum):
    """What happens to the part of a market order the top of book could not fill."""

    CANCEL = "CANCEL"
    REST = "REST"


class VenueConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Fees and latency of one simulated venue; builds a :class:`SimulatedVenue` per instrument."""

    maker_fee_bps: Decimal = Decimal(0)
    taker_fee_bps: Decimal = Decimal(0)
    latency_ns: Annotated[int, msgspec.Meta(ge=0)] = 0
    market_remainder: RemainderRule = RemainderRule.CANCEL
    fee_quantum: Decimal = Decimal("0.00000001")

    def build(self, instrument_id: str, fee_currency: str) -> SimulatedVenue:
        return SimulatedVenue(self, instrument_id, fee_currency)


class VenueFileConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``trade2026/config/venue.toml``: one :class:`VenueConfig` per venue name."""

    version: str
    venues: dict[str, VenueConfig]


def load_venue_config(path: str | None = None) -> VenueFileConfig:
    """Read the venue file; unknown keys are an error so a typo never silently means zero fees."""
    from pathlib import Path

    file = (
        Path(path)
        if path
        else Path(__file__).resolve().parent.parent / "trade2026" / "config" / "venue.toml"
    )
    try:
        return msgspec.toml.decode(file.read_bytes(), type=VenueFileConfig)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"venue config: {file} not found; hint: pass the path to venue.toml"
        ) from None
    except msgspec.ValidationError as exc:
        raise ValueError(
            f"venue config {file}: {exc}; hint: fees are decimal strings in bps, latency_ns >= 0"
        ) from exc


class VenueEvent(msgspec.Struct, frozen=True, tag_field="kind", tag="venue_event"):
    """A venue-side change to an order other than a fill (fills are :class:`Fill`).

    ``event`` is past tense: ``ACCEPTED``, ``REJECTED``, ``CANCELED``, ``EXPIRED``,
    ``REPLACED``, ``CANCEL_REJECTED`` or ``REPLACE_REJECTED``. ``cum_qty``/``leaves_qty``
    are as the venue sees them right after the event, so the order state machine can
    cross-check its own view. ``price``/``quantity`` carry the order's terms after a replace.
    """

    event: str
    exec_id: str
    order_id: str
    client_order_id: str
    account_id: str
    instrument_id: str
    cum_qty: Decimal
    leaves_qty: Decimal
    ts_event: int
    reason: str | None = None
    detail: str | None = None
    price: Decimal | None = None
    quantity: Decimal | None = None


VenueOutput = Fill | VenueEvent


# --- state ---------------------------------------------------------------------------------


class _Submit(msgspec.Struct, tag="submit"):
    order_id: str
    order: Order


class _Cancel(msgspec.Struct, tag="cancel"):
    order_id: str


class _Replace(msgspec.Struct, tag="replace"):
    order_id: str
    quantity: Decimal | None
    price: Decimal | None


class _Inbound(msgspec.Struct, array_like=True):
    effective_ns: int
    seq: int
    command: _Submit | _Cancel | _Replace

    def __lt__(self, other: _Inbound) -> bool:
        return (self.effective_ns, self.seq) < (other.effective_ns, other.seq)


class WorkingOrder(msgspec.Struct):
    order_id: str
    order: Order
    price: Decimal | None
    quantity: Decimal
    cum_qty: Decimal
    priority: int
    expire_ns: int | None

    @property
    def leaves(self) -> Decimal:
        return self.quantity - self.cum_qty


class VenueState(msgspec.Struct):
    """Everything the venue knows: snapshot with :meth:`SimulatedVenue.snapshot`."""

    now_ns: int = 0
    bid: Decimal | None = None
    ask: Decimal | None = None
    bid_available: Decimal = _ZERO
    ask_available: Decimal = _ZERO
    exec_seq: int = 0
    event_seq: int = 0
    command_seq: int = 0
    working: dict[str, WorkingOrder] = msgspec.field(default_factory=dict)
    inbound: list[_Inbound] = msgspec.field(default_factory=list)
    known_order_ids: set[str] = msgspec.field(default_factory=set)
    ignored_ticks: int = 0


def _is_positive(value: Decimal | None) -> bool:
    return value is not None and value.is_finite() and value > 0


class SimulatedVenue:
    """The matching engine of one instrument; all inputs in event-time order per instrument."""

    def __init__(
        self,
        config: VenueConfig,
        instrument_id: str,
        fee_currency: str,
        state: VenueState | None = None,
    ) -> None:
        self.config = config
        self.instrument_id = instrument_id
        self.fee_currency = fee_currency
        self._s = state if state is not None else VenueState()

    # --- snapshot ---------------------------------------------------------------------------

    def snapshot(self) -> VenueState:
        """A deep copy, so the caller can keep it while the venue moves on."""
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._s), type=VenueState)

    @classmethod
    def restore(
        cls, config: VenueConfig, instrument_id: str, fee_currency: str, state: VenueState
    ) -> SimulatedVenue:
        copy = msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=VenueState)
        heapq.heapify(copy.inbound)
        return cls(config, instrument_id, fee_currency, copy)

    @property
    def now_ns(self) -> int:
        return self._s.now_ns

    def working_orders(self) -> list[WorkingOrder]:
        return sorted(self._s.working.values(), key=lambda w: w.priority)

    # --- commands ---------------------------------------------------------------------------

    def submit(self, order: Order, order_id: str, ts: int) -> list[VenueOutput]:
        """Send ``order`` (an ``Order`` or a subclass like ``SubmitOrder``) at event time ``ts``."""
        if type(order) is not Order:  # keep state decodable: store the plain contract type
            order = Order(**{name: getattr(order, name) for name in Order.__struct_fields__})
        return self._enqueue(ts, _Submit(order_id, order))

    def cancel(self, order_id: str, ts: int) -> list[VenueOutput]:
        return self._enqueue(ts, _Cancel(order_id))

    def replace(
        self, order_id: str, ts: int, quantity: Decimal | None = None, price: Decimal | None = None
    ) -> list[VenueOutput]:
        """Change the total quantity and/or the limit price; ``None`` keeps the current value."""
        return self._enqueue(ts, _Replace(order_id, quantity, price))

    def advance(self, ts: int) -> list[VenueOutput]:
        """Declare event time ``ts`` reached with no further ticks before it."""
        out: list[VenueOutput] = []
        self._run_inbound(ts, inclusive=True, out=out)
        self._expire(ts, out)
        self._s.now_ns = max(self._s.now_ns, ts)
        return out

    # --- market data ------------------------------------------------------------------------

    def on_tick(self, tick: Quote | TradeTick) -> list[VenueOutput]:
        """Apply one tick; a tick for another instrument or with unusable prices is ignored."""
        unusable = isinstance(tick, TradeTick) and not (
            _is_positive(tick.price) and _is_positive(tick.size)
        )
        if tick.instrument_id != self.instrument_id or unusable:
            self._s.ignored_ticks += 1
            return []
        t = tick.ts_event
        out: list[VenueOutput] = []
        self._run_inbound(t, inclusive=False, out=out)
        self._expire(t, out)
        if isinstance(tick, Quote):
            self._apply_quote(tick, out)
        else:
            self._apply_trade(tick, out)
        self._s.now_ns = max(self._s.now_ns, t)
        self._run_inbound(self._s.now_ns, inclusive=True, out=out)
        return out

    # --- internals --------------------------------------------------------------------------

    def _enqueue(self, ts: int, command: _Submit | _Cancel | _Replace) -> list[VenueOutput]:
        s = self._s
        s.command_seq += 1
        heapq.heappush(s.inbound, _Inbound(ts + self.config.latency_ns, s.command_seq, command))
        return self.advance(ts)

    def _run_inbound(self, t: int, *, inclusive: bool, out: list[VenueOutput]) -> None:
        s = self._s
        while s.inbound and (
            s.inbound[0].effective_ns <= t if inclusive else s.inbound[0].effective_ns < t
        ):
            item = heapq.heappop(s.inbound)
            # a command never takes effect before event time already reached
            at = max(item.effective_ns, s.now_ns)
            self._expire(at, out)
            cmd = item.command
            if isinstance(cmd, _Submit):
                self._activate(cmd, at, out)
            elif isinstance(cmd, _Cancel):
                self._do_cancel(cmd, at, out)
            else:
                self._do_replace(cmd, at, out)

    def _event(
        self,
        event: str,
        w: WorkingOrder,
        ts: int,
        reason: str | None = None,
        detail: str | None = None,
    ) -> VenueEvent:
        return VenueEvent(
            event=event,
            exec_id=self._next_event_id(),
            order_id=w.order_id,
            client_order_id=w.order.client_order_id,
            account_id=w.order.account_id,
            instrument_id=self.instrument_id,
            cum_qty=w.cum_qty,
            leaves_qty=max(w.leaves, _ZERO)
            if event not in {"CANCELED", "EXPIRED", "REJECTED"}
            else _ZERO,
            ts_event=ts,
            reason=reason,
            detail=detail,
            price=w.price if event == "REPLACED" else None,
            quantity=w.quantity if event == "REPLACED" else None,
        )

    def _reject_reason(self, order: Order, order_id: str, at: int) -> tuple[str, str] | None:
        if order.instrument_id != self.instrument_id:
            return "UNKNOWN_INSTRUMENT", f"this venue matches {self.instrument_id}"
        if order_id in self._s.known_order_ids:
            return "DUPLICATE_ORDER_ID", f"order id {order_id} was already used"
        if not _is_positive(order.quantity):
            return "INVALID_QUANTITY", f"quantity {order.quantity} must be finite and > 0"
        if order.order_type is OrderType.LIMIT and not _is_positive(order.price):
            return "INVALID_PRICE", f"limit price {order.price} must be finite and > 0"
        if order.time_in_force is TimeInForce.GTD:
            if order.expire_time is None:
                return "MISSING_EXPIRE_TIME", "GTD needs expire_time"
            if order.expire_time <= at:
                return "EXPIRE_TIME_PASSED", f"expire_time {order.expire_time} <= {at}"
        if order.order_type is OrderType.MARKET:
            book = self._s.ask if order.side is Side.BUY else self._s.bid
            if book is None:
                return "NO_MARKET_DATA", "no opposite quote seen yet for a market order"
        return None

    def _activate(self, cmd: _Submit, at: int, out: list[VenueOutput]) -> None:
        order = cmd.order
        s = self._s
        rejected = self._reject_reason(order, cmd.order_id, at)
        if rejected is not None:
            out.append(
                VenueEvent(
                    event="REJECTED",
                    exec_id=self._next_event_id(),
                    order_id=cmd.order_id,
                    client_order_id=order.client_order_id,
                    account_id=order.account_id,
                    instrument_id=order.instrument_id,
                    cum_qty=_ZERO,
                    leaves_qty=_ZERO,
                    ts_event=at,
                    reason=rejected[0],
                    detail=rejected[1],
                )
            )
            return
        s.known_order_ids.add(cmd.order_id)
        tif = order.time_in_force
        expire: int | None = None
        if tif is TimeInForce.DAY:
            expire = (at // NANOS_PER_DAY + 1) * NANOS_PER_DAY
        elif tif is TimeInForce.GTD:
            expire = order.expire_time
        s.command_seq += 1
        w = WorkingOrder(
            order_id=cmd.order_id,
            order=order,
            price=order.price if order.order_type is OrderType.LIMIT else None,
            quantity=order.quantity,
            cum_qty=_ZERO,
            priority=s.command_seq,
            expire_ns=expire,
        )
        out.append(self._event("ACCEPTED", w, at))
        if tif is TimeInForce.FOK:
            if self._available(w) >= w.quantity:
                self._take(w, at, out)
            else:
                out.append(
                    self._event("CANCELED", w, at, "FOK_UNFILLABLE", "displayed size too small")
                )
            return
        self._take(w, at, out)
        if w.leaves <= 0:
            return
        if tif is TimeInForce.IOC:
            out.append(self._event("CANCELED", w, at, "IOC_REMAINDER"))
        elif w.price is None and self.config.market_remainder is RemainderRule.CANCEL:
            out.append(self._event("CANCELED", w, at, "MARKET_REMAINDER", "no displayed size left"))
        else:
            s.working[w.order_id] = w

    def _available(self, w: WorkingOrder) -> Decimal:
        """Displayed opposite size this order could take right now (zero if not marketable)."""
        s = self._s
        if w.order.side is Side.BUY:
            px, avail = s.ask, s.ask_available
            ok = px is not None and (w.price is None or px <= w.price)
        else:
            px, avail = s.bid, s.bid_available
            ok = px is not None and (w.price is None or px >= w.price)
        return avail if ok else _ZERO

    def _take(self, w: WorkingOrder, ts: int, out: list[VenueOutput]) -> None:
        qty = min(w.leaves, self._available(w))
        if qty <= 0:
            return
        s = self._s
        if w.order.side is Side.BUY:
            assert s.ask is not None
            px = s.ask
            s.ask_available -= qty
        else:
            assert s.bid is not None
            px = s.bid
            s.bid_available -= qty
        out.append(self._fill(w, qty, px, Liquidity.TAKER, ts))

    def _fill(self, w: WorkingOrder, qty: Decimal, px: Decimal, liq: Liquidity, ts: int) -> Fill:
        s = self._s
        s.exec_seq += 1
        w.cum_qty += qty
        bps = self.config.maker_fee_bps if liq is Liquidity.MAKER else self.config.taker_fee_bps
        with localcontext(_CTX):
            fee = (qty * px * bps / _BPS).quantize(self.config.fee_quantum)
        return Fill(
            exec_id=f"{self.instrument_id}-{s.exec_seq}",
            order_id=w.order_id,
            client_order_id=w.order.client_order_id,
            account_id=w.order.account_id,
            instrument_id=self.instrument_id,
            side=w.order.side,
            quantity=qty,
            price=px,
            fee=fee,
            fee_currency=self.fee_currency,
            liquidity=liq,
            ts_event=ts,
        )

    def _expire(self, t: int, out: list[VenueOutput]) -> None:
        s = self._s
        due = [w for w in s.working.values() if w.expire_ns is not None and w.expire_ns <= t]
        for w in sorted(due, key=lambda w: (w.expire_ns or 0, w.priority)):
            del s.working[w.order_id]
            out.append(self._event("EXPIRED", w, w.expire_ns or t))

    def _do_cancel(self, cmd: _Cancel, at: int, out: list[VenueOutput]) -> None:
        w = self._s.working.pop(cmd.order_id, None)
        if w is None:
            out.append(self._unknown("CANCEL_REJECTED", cmd.order_id, at))
            return
        out.append(self._event("CANCELED", w, at))

    def _next_event_id(self) -> str:
        """Fills are ``<instrument>-<n>``, other reports ``<instrument>-e<n>``: both replayable."""
        self._s.event_seq += 1
        return f"{self.instrument_id}-e{self._s.event_seq}"

    def _unknown(self, event: str, order_id: str, at: int) -> VenueEvent:
        known = order_id in self._s.known_order_ids
        return VenueEvent(
            event=event,
            exec_id=self._next_event_id(),
            order_id=order_id,
            client_order_id="",
            account_id="",
            instrument_id=self.instrument_id,
            cum_qty=_ZERO,
            leaves_qty=_ZERO,
            ts_event=at,
            reason="ORDER_CLOSED" if known else "UNKNOWN_ORDER",
            detail="the order is no longer working" if known else "no such order at this venue",
        )

    def _do_replace(self, cmd: _Replace, at: int, out: list[VenueOutput]) -> None:
        s = self._s
        w = s.working.get(cmd.order_id)
        if w is None:
            out.append(self._unknown("REPLACE_REJECTED", cmd.order_id, at))
            return
        new_qty = w.quantity if cmd.quantity is None else cmd.quantity
        new_px = w.price if cmd.price is None else cmd.price
        problem: tuple[str, str] | None = None
        if not _is_positive(new_qty):
            problem = ("INVALID_QUANTITY", f"quantity {new_qty} must be finite and > 0")
        elif cmd.price is not None and w.price is None:
            problem = ("INVALID_PRICE", "a market order has no price to replace")
        elif new_px is not None and not _is_positive(new_px):
            problem = ("INVALID_PRICE", f"limit price {new_px} must be finite and > 0")
        if problem is not None:
            out.append(self._event("REPLACE_REJECTED", w, at, *problem))
            return
        # FIX 4.4 Appendix D: a quantity at or below the filled quantity amends the order
        # down to what has filled, which leaves it FILLED with nothing working.
        new_qty = max(new_qty, w.cum_qty)
        if new_px != w.price or new_qty > w.quantity:
            s.command_seq += 1
            w.priority = s.command_seq
        w.quantity, w.price = new_qty, new_px
        out.append(self._event("REPLACED", w, at))
        if w.leaves <= 0:  # cut down to exactly the filled quantity: nothing left to work
            del s.working[w.order_id]
            return
        self._take(w, at, out)
        if w.leaves <= 0:
            del s.working[w.order_id]

    def _apply_quote(self, q: Quote, out: list[VenueOutput]) -> None:
        s = self._s
        bid_ok = _is_positive(q.bid_price) and _is_positive(q.bid_size)
        ask_ok = _is_positive(q.ask_price) and _is_positive(q.ask_size)
        s.bid, s.bid_available = (q.bid_price, q.bid_size) if bid_ok else (None, _ZERO)
        s.ask, s.ask_available = (q.ask_price, q.ask_size) if ask_ok else (None, _ZERO)
        if not s.working:
            return
        t = q.ts_event
        for side in (Side.BUY, Side.SELL):
            for w in self._by_priority(side):
                if w.price is None:  # a working market remainder takes again
                    self._take(w, t, out)
                else:
                    qty = min(w.leaves, self._available(w))
                    if qty > 0:
                        if side is Side.BUY:
                            s.ask_available -= qty
                        else:
                            s.bid_available -= qty
                        out.append(self._fill(w, qty, w.price, Liquidity.MAKER, t))
                if w.leaves <= 0:
                    del s.working[w.order_id]

    def _apply_trade(self, trade: TradeTick, out: list[VenueOutput]) -> None:
        s = self._s
        if not s.working:
            return
        for side in (Side.BUY, Side.SELL):
            remaining = trade.size
            for w in self._by_priority(side):
                if remaining <= 0:
                    break
                if w.price is None:
                    continue
                through = trade.price < w.price if side is Side.BUY else trade.price > w.price
                if not through:
                    continue
                qty = min(w.leaves, remaining)
                remaining -= qty
                out.append(self._fill(w, qty, w.price, Liquidity.MAKER, trade.ts_event))
                if w.leaves <= 0:
                    del s.working[w.order_id]

    def _by_priority(self, side: Side) -> list[WorkingOrder]:
        """Market remainders first, then best price, then time: a fixed order for determinism."""
        orders = [w for w in self._s.working.values() if w.order.side is side]
        sign = -1 if side is Side.BUY else 1

        def key(w: WorkingOrder) -> tuple[int, Decimal, int]:
            if w.price is None:
                return (0, _ZERO, w.priority)
            return (1, sign * w.price, w.priority)

        return sorted(orders, key=key)


_EXEC_TYPES = {
    "ACCEPTED": "NEW",
    "REJECTED": "REJECTED",
    "CANCELED": "CANCELED",
    "EXPIRED": "EXPIRED",
    "REPLACED": "REPLACED",
    "CANCEL_REJECTED": "CANCEL_REJECTED",
    "REPLACE_REJECTED": "REPLACE_REJECTED",
}


def to_execution_report(output: VenueOutput, venue: str) -> ExecutionReport:
    """The simulated venue speaks the same ``exec.reports.<venue>`` contract as a real one.

    So the order path cannot tell simulation from production: our ``order_id`` is the
    report's ``venue_order_id``.
    """
    from schemas.orders import ExecType, ExecutionReport

    if isinstance(output, Fill):
        return ExecutionReport(
            venue=venue,
            exec_id=output.exec_id,
            exec_type=ExecType.TRADE,
            ts_event=output.ts_event,
            venue_order_id=output.order_id,
            client_order_id=output.client_order_id,
            account_id=output.account_id,
            instrument_id=output.instrument_id,
            side=output.side,
            last_qty=output.quantity,
            last_px=output.price,
            fee=output.fee,
            fee_currency=output.fee_currency,
            liquidity=output.liquidity,
        )
    return ExecutionReport(
        venue=venue,
        exec_id=output.exec_id,
        exec_type=ExecType(_EXEC_TYPES[output.event]),
        ts_event=output.ts_event,
        venue_order_id=output.order_id,
        client_order_id=output.client_order_id or None,
        account_id=output.account_id or None,
        instrument_id=output.instrument_id,
        order_qty=output.quantity,
        price=output.price,
        cum_qty=output.cum_qty,
        reason=output.reason,
    )
