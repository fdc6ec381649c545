"""Execution quality (TCA): what each fill and each order cost against the market at arrival.

Sign convention: slippage is a *cost*, positive when we did worse than the arrival mid
(a buy above it, a sell below it) and negative when we did better. Fees are not in it;
they are reported beside it.

Arrival mid:
    The mid of the last usable quote of the order's instrument seen when the order arrived
    (``on_order``). An order that arrived before any quote has no arrival mid; its fills
    get ``slippage_bps = None`` and stay out of the slippage aggregates.

Per order:
    ``fill_ratio = filled / quantity`` and ``time_to_first_fill_ns`` (first fill minus
    arrival), reported once when the order is done: filled completely, or closed by
    :meth:`ExecutionQuality.on_order_done` (canceled, expired, rejected).

Windows:
    Event-time tumbling windows of ``window_ns``, implemented here rather than with a
    Bytewax ``EventClock`` (see bytewax issue #578 in issue 3). A fill counts in the window
    of its ``ts_event``, an order in the window of the time it was done. A window closes
    once any input carries an event time at or past its end; a record for a window that has
    already closed is *late*: counted in ``late_records`` and left out. Aggregates are sums,
    so windows of the same scope, key and start from different workers combine with
    :meth:`TcaWindow.merge`. Window-level slippage is notional weighted:
    ``10_000 * sum(side * (px - mid) * qty) / sum(mid * qty)``.

Rounding: bps are rounded half-even to ``bps_quantum``, ratios to ``ratio_quantum``,
averages of prices to ``price_quantum``; the sums behind them stay exact.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Annotated

import msgspec

from schemas.canonical import Fill, Order, Quote, TradeTick
from schemas.common import Side

_ZERO = Decimal(0)
_BPS = Decimal(10_000)
_CTX = Context(prec=60, rounding=ROUND_HALF_EVEN)

INSTRUMENT = "instrument"
ACCOUNT = "account"


class TcaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    window_ns: Annotated[int, msgspec.Meta(gt=0)] = 60_000_000_000
    bps_quantum: Decimal = Decimal("0.0001")
    ratio_quantum: Decimal = Decimal("0.000001")
    price_quantum: Decimal = Decimal("1E-12")

    def build(self) -> ExecutionQuality:
        return ExecutionQuality(self)


class FillQuality(msgspec.Struct, frozen=True, tag_field="kind", tag="fill_quality"):
    exec_id: str
    order_id: str
    account_id: str
    instrument_id: str
    side: Side
    quantity: Decimal
    price: Decimal
    fee: Decimal
    arrival_mid: Decimal | None
    slippage_bps: Decimal | None
    ts_event: int


class OrderQuality(msgspec.Struct, frozen=True, tag_field="kind", tag="order_quality"):
    order_id: str
    account_id: str
    instrument_id: str
    side: Side
    quantity: Decimal
    filled_qty: Decimal
    fill_ratio: Decimal
    avg_px: Decimal | None
    arrival_mid: Decimal | None
    slippage_bps: Decimal | None
    time_to_first_fill_ns: int | None
    ts_arrival: int
    ts_event: int


class TcaWindow(msgspec.Struct, frozen=True, tag_field="kind", tag="tca_window"):
    """Sums over one tumbling window for one instrument or one account."""

    scope: str
    key: str
    window_start: int
    window_end: int
    fills: int = 0
    filled_qty: Decimal = _ZERO
    notional: Decimal = _ZERO
    fees: Decimal = _ZERO
    #: sum of side * (px - arrival_mid) * qty over fills with an arrival mid
    slippage_cost: Decimal = _ZERO
    #: sum of arrival_mid * qty over the same fills
    arrival_notional: Decimal = _ZERO
    orders: int = 0
    ordered_qty: Decimal = _ZERO
    orders_filled_qty: Decimal = _ZERO
    orders_with_fill: int = 0
    time_to_first_fill_ns_sum: int = 0

    def merge(self, other: TcaWindow) -> TcaWindow:
        if (self.scope, self.key, self.window_start) != (
            other.scope,
            other.key,
            other.window_start,
        ):
            raise ValueError(
                f"tca merge: windows {self.scope}/{self.key}/{self.window_start} and "
                f"{other.scope}/{other.key}/{other.window_start} differ; hint: merge same windows"
            )
        with localcontext(_CTX):
            return TcaWindow(
                scope=self.scope,
                key=self.key,
                window_start=self.window_start,
                window_end=self.window_end,
                fills=self.fills + other.fills,
                filled_qty=self.filled_qty + other.filled_qty,
                notional=self.notional + other.notional,
                fees=self.fees + other.fees,
                slippage_cost=self.slippage_cost + other.slippage_cost,
                arrival_notional=self.arrival_notional + other.arrival_notional,
                orders=self.orders + other.orders,
                ordered_qty=self.ordered_qty + other.ordered_qty,
                orders_filled_qty=self.orders_filled_qty + other.orders_filled_qty,
                orders_with_fill=self.orders_with_fill + other.orders_with_fill,
                time_to_first_fill_ns_sum=self.time_to_first_fill_ns_sum
                + other.time_to_first_fill_ns_sum,
            )

    def slippage_bps(self, quantum: Decimal = Decimal("0.0001")) -> Decimal | None:
        if self.arrival_notional == 0:
            return None
        with localcontext(_CTX):
            return (_BPS * self.slippage_cost / self.arrival_notional).quantize(quantum)

    def fill_ratio(self, quantum: Decimal = Decimal("0.000001")) -> Decimal | None:
        if self.ordered_qty == 0:
            return None
        with localcontext(_CTX):
            return (self.orders_filled_qty / self.ordered_qty).quantize(quantum)

    def mean_time_to_first_fill_ns(self) -> int | None:
        if self.orders_with_fill == 0:
            return None
        return self.time_to_first_fill_ns_sum // self.orders_with_fill


class _OrderTrack(msgspec.Struct):
    order_id: str
    account_id: str
    instrument_id: str
    side: Side
    quantity: Decimal
    ts_arrival: int
    arrival_mid: Decimal | None
    filled: Decimal = _ZERO
    notional: Decimal = _ZERO
    first_fill_ns: int | None = None


class TcaState(msgspec.Struct):
    mids: dict[str, Decimal] = msgspec.field(default_factory=dict)
    orders: dict[str, _OrderTrack] = msgspec.field(default_factory=dict)
    windows: dict[str, TcaWindow] = msgspec.field(default_factory=dict)
    watermark: int = 0
    closed_before: int = 0
    late_records: int = 0


TcaOutput = FillQuality | OrderQuality | TcaWindow


def _sign(side: Side) -> int:
    return 1 if side is Side.BUY else -1


class ExecutionQuality:
    """TCA over any number of instruments and accounts: one key in a flow, or one per instrument."""

    def __init__(self, config: TcaConfig, state: TcaState | None = None) -> None:
        self.config = config
        self._s = state if state is not None else TcaState()

    def snapshot(self) -> TcaState:
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._s), type=TcaState)

    @classmethod
    def restore(cls, config: TcaConfig, state: TcaState) -> ExecutionQuality:
        return cls(config, msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=TcaState))

    @property
    def late_records(self) -> int:
        return self._s.late_records

    # --- inputs -----------------------------------------------------------------------------

    def on_tick(self, tick: Quote | TradeTick) -> list[TcaOutput]:
        out = self.advance(tick.ts_event)
        if isinstance(tick, Quote):
            b, a = tick.bid_price, tick.ask_price
            if b.is_finite() and a.is_finite() and 0 < b <= a:
                self._s.mids[tick.instrument_id] = (b + a) / 2
        return out

    def on_order(self, order: Order, order_id: str, ts_arrival: int) -> list[TcaOutput]:
        out = self.advance(ts_arrival)
        if order_id not in self._s.orders and order.quantity.is_finite() and order.quantity > 0:
            self._s.orders[order_id] = _OrderTrack(
                order_id=order_id,
                account_id=order.account_id,
                instrument_id=order.instrument_id,
                side=order.side,
                quantity=order.quantity,
                ts_arrival=ts_arrival,
                arrival_mid=self._s.mids.get(order.instrument_id),
            )
        return out

    def on_fill(self, fill: Fill) -> list[TcaOutput]:
        out = self.advance(fill.ts_event)
        if not (fill.quantity.is_finite() and fill.quantity > 0 and fill.price.is_finite()):
            return out
        track = self._s.orders.get(fill.order_id)
        mid = track.arrival_mid if track is not None else None
        slip_cost: Decimal | None = None
        bps: Decimal | None = None
        with localcontext(_CTX):
            notional = fill.quantity * fill.price
            if mid is not None:
                slip_cost = _sign(fill.side) * (fill.price - mid) * fill.quantity
                bps = (_sign(fill.side) * (fill.price - mid) * _BPS / mid).quantize(
                    self.config.bps_quantum
                )
            out.append(
                FillQuality(
                    exec_id=fill.exec_id,
                    order_id=fill.order_id,
                    account_id=fill.account_id,
                    instrument_id=fill.instrument_id,
                    side=fill.side,
                    quantity=fill.quantity,
                    price=fill.price,
                    fee=fill.fee,
                    arrival_mid=mid,
                    slippage_bps=bps,
                    ts_event=fill.ts_event,
                )
            )
            if self._in_open_window(fill.ts_event):
                arrival_notional = mid * fill.quantity if mid is not None else _ZERO
                for scope, key in ((INSTRUMENT, fill.instrument_id), (ACCOUNT, fill.account_id)):
                    w = self._window(scope, key, fill.ts_event)
                    self._put(
                        msgspec.structs.replace(
                            w,
                            fills=w.fills + 1,
                            filled_qty=w.filled_qty + fill.quantity,
                            notional=w.notional + notional,
                            fees=w.fees + fill.fee,
                            slippage_cost=w.slippage_cost + (slip_cost or _ZERO),
                            arrival_notional=w.arrival_notional + arrival_notional,
                        )
                    )
            if track is not None:
                track.filled += fill.quantity
                track.notional += notional
                if track.first_fill_ns is None:
                    track.first_fill_ns = fill.ts_event
                if track.filled >= track.quantity:
                    out.append(self._close_order(track, fill.ts_event))
        return out

    def on_order_done(self, order_id: str, ts: int) -> list[TcaOutput]:
        """The order ended (canceled, expired, rejected, filled); unknown ids are ignored."""
        out = self.advance(ts)
        track = self._s.orders.get(order_id)
        if track is not None:
            out.append(self._close_order(track, ts))
        return out

    def advance(self, ts: int) -> list[TcaOutput]:
        """Close every window that ends at or before event time ``ts``."""
        s = self._s
        if ts <= s.watermark:
            return []
        s.watermark = ts
        w = self.config.window_ns
        s.closed_before = max(s.closed_before, ts - ts % w)
        return self._pop_windows(lambda win: win.window_end <= ts)

    def flush(self) -> list[TcaOutput]:
        """Close every open window (end of a replay)."""
        return self._pop_windows(lambda win: True)

    # --- internals --------------------------------------------------------------------------

    def _pop_windows(self, due: Callable[[TcaWindow], bool]) -> list[TcaOutput]:
        done = [w for w in self._s.windows.values() if due(w)]
        for w in done:
            del self._s.windows[_wkey(w.scope, w.key, w.window_start)]
        done.sort(key=lambda w: (w.window_start, w.scope, w.key))
        return list[TcaOutput](done)

    def _in_open_window(self, ts: int) -> bool:
        if ts < self._s.closed_before:
            self._s.late_records += 1
            return False
        return True

    def _window(self, scope: str, key: str, ts: int) -> TcaWindow:
        start = ts - ts % self.config.window_ns
        w = self._s.windows.get(_wkey(scope, key, start))
        return w if w is not None else TcaWindow(scope, key, start, start + self.config.window_ns)

    def _put(self, w: TcaWindow) -> None:
        self._s.windows[_wkey(w.scope, w.key, w.window_start)] = w

    def _close_order(self, track: _OrderTrack, ts: int) -> OrderQuality:
        del self._s.orders[track.order_id]
        cfg = self.config
        with localcontext(_CTX):
            avg_px = (
                (track.notional / track.filled).quantize(cfg.price_quantum)
                if track.filled
                else None
            )
            slip: Decimal | None = None
            if track.arrival_mid is not None and track.filled:
                cost = _sign(track.side) * (track.notional - track.arrival_mid * track.filled)
                slip = (_BPS * cost / (track.arrival_mid * track.filled)).quantize(cfg.bps_quantum)
            ttff = None if track.first_fill_ns is None else track.first_fill_ns - track.ts_arrival
            if self._in_open_window(ts):
                for scope, key in ((INSTRUMENT, track.instrument_id), (ACCOUNT, track.account_id)):
                    w = self._window(scope, key, ts)
                    self._put(
                        msgspec.structs.replace(
                            w,
                            orders=w.orders + 1,
                            ordered_qty=w.ordered_qty + track.quantity,
                            orders_filled_qty=w.orders_filled_qty + track.filled,
                            orders_with_fill=w.orders_with_fill + (ttff is not None),
                            time_to_first_fill_ns_sum=w.time_to_first_fill_ns_sum + (ttff or 0),
                        )
                    )
            return OrderQuality(
                order_id=track.order_id,
                account_id=track.account_id,
                instrument_id=track.instrument_id,
                side=track.side,
                quantity=track.quantity,
                filled_qty=track.filled,
                fill_ratio=(track.filled / track.quantity).quantize(cfg.ratio_quantum),
                avg_px=avg_px,
                arrival_mid=track.arrival_mid,
                slippage_bps=slip,
                time_to_first_fill_ns=ttff,
                ts_arrival=track.ts_arrival,
                ts_event=ts,
            )


def _wkey(scope: str, key: str, start: int) -> str:
    return f"{scope}|{key}|{start}"
