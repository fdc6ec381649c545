"""Pre-trade risk: every command gets a recorded decision, a denial is a reason, never a raise.

Layout. :class:`RiskEngine` is what a flow holds: the limits in force, the instruments,
the shared market view (reference prices for the fat-finger band and the staleness
check), the global kill switch, and one :class:`AccountRisk` per account. An
``AccountRisk`` holds only its account's state (open orders, positions, rate windows,
the day's P&L, its kill switch), so a flow keyed by account can keep one per key and
hand them the same :class:`RiskContext`.

Time. "Now" is always the command's own ``ts_submit``; market data is dated by its
``ts_recv``, the same (our) clock, since venue clocks drift. Nothing here reads a clock,
so a replay decides exactly as the live run did.

Denial codes (stable, upper case; checked in this order, first failure wins):

=================================  =========================================================
``GLOBAL_KILL_SWITCH``             trading halted for everyone
``UNKNOWN_ACCOUNT``                account not declared in the limits (when required)
``ACCOUNT_KILL_SWITCH``            this account is halted
``MISSING_CLIENT_ORDER_ID``        empty client order id
``DUPLICATE_CLIENT_ORDER_ID``      the id was used before on this account (any outcome)
``INVALID_QUANTITY``               zero, negative, NaN or infinite quantity
``MISSING_PRICE``                  a limit order without a price
``INVALID_PRICE``                  zero, negative, NaN or infinite price
``INVALID_EXPIRE_TIME``            GTD without an expiry, or one not after the order's ts
``UNKNOWN_INSTRUMENT``             not in the instruments config
``INSTRUMENT_HALTED``              the instrument is halted in the instruments config
``QUANTITY_BELOW_MIN``             below the instrument's min_qty
``QUANTITY_ABOVE_MAX``             above the instrument's max_qty
``QUANTITY_OFF_LOT``               not a multiple of the lot size
``PRICE_OFF_TICK``                 not a multiple of the tick size
``MARKET_DATA_STALE``              market order with no reference price, or an old one
``PRICE_OUTSIDE_BAND``             limit price too far from the reference (fat finger)
``NOTIONAL_BELOW_MIN``             under the instrument's min_notional
``QUANTITY_EXCEEDS_MAX_PER_ORDER`` over the account's max_order_qty
``NOTIONAL_EXCEEDS_MAX_PER_ORDER`` over the account's max_order_notional
``MAX_OPEN_ORDERS_EXCEEDED``       the account already has max_open_orders open
``ORDER_RATE_EXCEEDED``            too many orders/replaces in the sliding window
``CANCEL_RATE_EXCEEDED``           too many cancels in the sliding window
``REDUCE_ONLY``                    daily loss limit hit and the order would not reduce
``POSITION_LIMIT_EXCEEDED``        worst-case position over max_position_qty
``GROSS_EXPOSURE_EXCEEDED``        worst-case gross exposure over max_gross_exposure
``UNKNOWN_ORDER``                  replace for an order risk does not know as open
``INVALID_NUMBER``                 arithmetic on the input failed (absurd magnitudes)
=================================  =========================================================

Conventions worth knowing. A market order's notional uses the reference price. The price
band is skipped for a limit order when there is no fresh reference (it cannot be judged;
market orders are refused instead). Cancels pass kill switches and reduce-only, since
cancelling only ever lowers risk; they are subject to their own rate limit only.
Rate windows count approved commands (what reaches the venue). Daily P&L is the change in
the account's realized + unrealized P&L (as sent by the portfolio flow in
:class:`~schemas.canonical.Position`, realized taken as net of fees) since the first
event of the current UTC day; reduce-only lasts until the next UTC day.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

import msgspec

from operators.orders import BoundedLog
from operators.risk_config import AccountLimits, RiskLimits
from schemas.canonical import Order, OrderEvent, Position, Quote, TradeTick
from schemas.common import OrderStatus, OrderType, Side, TimeInForce
from schemas.instruments import InstrumentRegistry
from schemas.orders import (
    APPROVED,
    AlertRaised,
    CancelOrder,
    ControlAction,
    ControlCommand,
    ControlScope,
    ReplaceOrder,
    RiskAction,
    RiskDecision,
)

NANOS_PER_DAY = 86_400 * 1_000_000_000
#: Client order ids an account remembers for duplicate detection (the newest ones).
DEFAULT_MAX_SEEN_IDS = 262_144
_pack = msgspec.msgpack.Encoder().encode
_ZERO = Decimal(0)
_BPS = Decimal(10_000)
_TWO = Decimal(2)
_TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.REJECTED,
        OrderStatus.DENIED,
        OrderStatus.EXPIRED,
    }
)


class _Denied(Exception):
    """Carries a denial out of a nested check; caught in the same call, never raised out."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class MarketView:
    """Reference prices per instrument: the last trade or the mid, whichever is newer.

    Shared by every account of a worker. It is told about ticks by the flow; ages are
    measured against the order's own timestamp, never the wall clock.
    """

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: dict[str, tuple[Decimal, int]] = {}

    def on_trade(self, instrument_id: str, price: Decimal, ts: int) -> None:
        if price.is_finite() and price > 0:
            self._update(instrument_id, price, ts)

    def on_quote(self, instrument_id: str, bid: Decimal, ask: Decimal, ts: int) -> None:
        if bid.is_finite() and ask.is_finite() and bid > 0 and ask >= bid:
            self._update(instrument_id, (bid + ask) / _TWO, ts)

    def on_tick(self, tick: TradeTick | Quote) -> None:
        # Staleness is judged on our receive clock, the clock that stamps orders too:
        # venue clocks drift (the sample Binance capture runs ~1.3 s ahead of ours) and
        # spot quotes carry no venue time at all.
        if isinstance(tick, TradeTick):
            self.on_trade(tick.instrument_id, tick.price, tick.ts_recv)
        else:
            self.on_quote(tick.instrument_id, tick.bid_price, tick.ask_price, tick.ts_recv)

    def _update(self, instrument_id: str, price: Decimal, ts: int) -> None:
        prev = self._refs.get(instrument_id)
        if prev is None or ts >= prev[1]:  # out-of-order ticks never move time back
            self._refs[instrument_id] = (price, ts)

    def reference(self, instrument_id: str) -> tuple[Decimal, int] | None:
        return self._refs.get(instrument_id)

    def snapshot(self) -> dict[str, tuple[Decimal, int]]:
        return dict(self._refs)

    def restore(self, refs: dict[str, tuple[Decimal, int]]) -> None:
        self._refs = dict(refs)


class RiskContext:
    """What every account's checks share: limits in force, instruments, market, global halt."""

    def __init__(
        self,
        limits: RiskLimits,
        instruments: InstrumentRegistry,
        market: MarketView | None = None,
    ) -> None:
        self.instruments = instruments
        self.market = market if market is not None else MarketView()
        self.global_halted = False
        self.global_halt_reason = ""
        self.limits = limits
        self._per_account: dict[str, AccountLimits] = {}

    def set_limits(self, limits: RiskLimits) -> None:
        self.limits = limits
        self._per_account.clear()

    def limits_for(self, account_id: str) -> AccountLimits:
        lim = self._per_account.get(account_id)
        if lim is None:
            lim = self.limits.for_account(account_id)
            self._per_account[account_id] = lim
        return lim


class _OpenOrder(msgspec.Struct, gc=False, array_like=True):
    """An open order's worst-case exposure; scalars only, so kept out of the cyclic GC."""

    instrument_id: str
    side: Side
    leaves: Decimal
    price: Decimal  # for the notional: limit price, or the reference for market orders
    cum: Decimal = _ZERO


class _PositionState(msgspec.Struct):
    quantity: Decimal
    mark: Decimal | None
    pnl: Decimal


class _AccountState(msgspec.Struct):
    """The serialisable part of :class:`AccountRisk`, for snapshots.

    Written with the big parts as cached msgpack (``msgspec.Raw``): the id memory as
    :class:`~operators.orders.BoundedLog` chunks, each open order as its own entry, so
    a snapshot re-encodes only what changed since the previous one.
    """

    account_id: str
    seen_client_order_ids: list[msgspec.Raw]  # chunks: list[list[str]]
    open_orders: dict[str, msgspec.Raw]  # values: _OpenOrder
    positions: dict[str, _PositionState]
    order_times: list[int]
    cancel_times: list[int]
    day: int | None
    day_base_pnl: Decimal
    reduce_only: bool
    halted: bool
    halt_reason: str


class AccountRisk:
    """One account's pre-trade state and checks.

    It tracks its open orders itself from its own approvals (so two orders sent
    back-to-back both count before any venue answer) and corrects them from the order
    state machine's :class:`~schemas.canonical.OrderEvent`\\ s via :meth:`on_order_event`.
    """

    def __init__(
        self, account_id: str, ctx: RiskContext, max_seen_ids: int = DEFAULT_MAX_SEEN_IDS
    ) -> None:
        self.account_id = account_id
        self.ctx = ctx
        # Duplicate detection remembers the newest ``max_seen_ids`` ids (a BoundedLog,
        # so memory and snapshots stay bounded) plus every open order's id, whatever its
        # age. A closed order's id older than that can be reused; the order state machine
        # still refuses it while it retains the original (see OrderManager).
        self._seen: set[str] = set()
        self._seen_log: BoundedLog[str] = BoundedLog(max_seen_ids)
        self._open: dict[str, _OpenOrder] = {}
        # Snapshot cache: each open order's msgpack, and the ids changed since the last.
        self._open_raw: dict[str, msgspec.Raw] = {}
        self._open_dirty: set[str] = set()
        # instrument -> [open buy leaves, open sell leaves]
        self._open_by_inst: dict[str, list[Decimal]] = {}
        self._open_notional = _ZERO
        self._positions: dict[str, _PositionState] = {}
        self._gross_positions = _ZERO
        self._pnl_total = _ZERO
        self._order_times: deque[int] = deque()
        self._cancel_times: deque[int] = deque()
        self._day: int | None = None
        self._day_base = _ZERO
        self.reduce_only = False
        self.halted = False
        self.halt_reason = ""

    # ------------------------------------------------------------------ decisions
    def _decide(
        self,
        cid: str,
        action: RiskAction,
        reason: str,
        detail: str,
        ts: int,
        request_id: str = "",
    ) -> RiskDecision:
        return RiskDecision(
            account_id=self.account_id,
            client_order_id=cid,
            action=action,
            approved=reason == APPROVED,
            reason=reason,
            detail=detail,
            limits_version=self.ctx.limits.version,
            instruments_version=self.ctx.instruments.version,
            ts_event=ts,
            request_id=request_id,
        )

    def _gate(self, lim: AccountLimits) -> None:
        """Kill switches and account admission, common to submits and replaces."""
        ctx = self.ctx
        if ctx.global_halted:
            raise _Denied(
                "GLOBAL_KILL_SWITCH", f"trading halted globally: {ctx.global_halt_reason}"
            )
        limits = ctx.limits
        if limits.require_declared_accounts and not limits.is_declared(self.account_id):
            raise _Denied(
                "UNKNOWN_ACCOUNT",
                f"account {self.account_id!r} is not declared in risk limits {limits.version}",
            )
        if self.halted:
            raise _Denied("ACCOUNT_KILL_SWITCH", f"account halted: {self.halt_reason}")

    def check_submit(self, order: Order) -> RiskDecision:
        """Decide on a new order; on approval the order counts as open at once."""
        ts = order.ts_submit
        cid = order.client_order_id
        # An id is spent by any decision, so risk and the order state machine (which
        # records denied orders too) always agree on which ids are duplicates.
        duplicate = cid in self._seen or cid in self._open
        if cid and not duplicate:
            self._remember(cid)
        try:
            lim = self.ctx.limits_for(self.account_id)
            self._gate(lim)
            if not cid:
                raise _Denied("MISSING_CLIENT_ORDER_ID", "client_order_id is empty")
            if duplicate:
                raise _Denied("DUPLICATE_CLIENT_ORDER_ID", f"client_order_id {cid!r} already used")
            self._roll_day(ts)
            qty = order.quantity
            if not qty.is_finite() or qty <= 0:
                raise _Denied("INVALID_QUANTITY", f"quantity {qty} must be finite and > 0")
            price = order.price
            if order.order_type is OrderType.LIMIT and price is None:
                raise _Denied("MISSING_PRICE", "a LIMIT order needs a price")
            if price is not None and (not price.is_finite() or price <= 0):
                raise _Denied("INVALID_PRICE", f"price {price} must be finite and > 0")
            if order.time_in_force is TimeInForce.GTD and (
                order.expire_time is None or order.expire_time <= ts
            ):
                raise _Denied(
                    "INVALID_EXPIRE_TIME",
                    f"GTD needs expire_time after ts_submit {ts}, got {order.expire_time}",
                )
            notional_px = self._check_instrument(
                order.instrument_id, qty, price, order.order_type, ts, lim
            )
            notional = qty * notional_px
            self._check_order_size(qty, notional, lim)
            if lim.max_open_orders is not None and len(self._open) >= lim.max_open_orders:
                raise _Denied(
                    "MAX_OPEN_ORDERS_EXCEEDED",
                    f"{len(self._open)} open orders, max {lim.max_open_orders}",
                )
            self._check_rate(
                self._order_times,
                lim.max_orders_per_window,
                lim,
                ts,
                "ORDER_RATE_EXCEEDED",
                "orders",
            )
            buy_add = qty if order.side is Side.BUY else _ZERO
            sell_add = qty if order.side is Side.SELL else _ZERO
            self._check_exposure(order.instrument_id, buy_add, sell_add, notional, lim)
        except _Denied as d:
            return self._decide(cid, RiskAction.SUBMIT, d.reason, d.detail, ts)
        except ArithmeticError as exc:
            return self._decide(
                cid,
                RiskAction.SUBMIT,
                "INVALID_NUMBER",
                f"arithmetic on the order failed: {exc!r}",
                ts,
            )
        self._order_times.append(ts)
        self._add_open(cid, _OpenOrder(order.instrument_id, order.side, qty, notional_px))
        return self._decide(cid, RiskAction.SUBMIT, APPROVED, "", ts)

    def check_cancel(self, cmd: CancelOrder) -> RiskDecision:
        """Cancels only lower risk: only the cancel rate limit applies."""
        ts = cmd.ts_submit
        lim = self.ctx.limits_for(self.account_id)
        try:
            self._check_rate(
                self._cancel_times,
                lim.max_cancels_per_window,
                lim,
                ts,
                "CANCEL_RATE_EXCEEDED",
                "cancels",
            )
        except _Denied as d:
            return self._decide(
                cmd.client_order_id, RiskAction.CANCEL, d.reason, d.detail, ts, cmd.request_id
            )
        self._cancel_times.append(ts)
        return self._decide(
            cmd.client_order_id, RiskAction.CANCEL, APPROVED, "", ts, cmd.request_id
        )

    def check_replace(self, cmd: ReplaceOrder) -> RiskDecision:
        """A replace is checked as the order it would become, against worst-case growth."""
        ts = cmd.ts_submit
        cid = cmd.client_order_id
        try:
            lim = self.ctx.limits_for(self.account_id)
            self._gate(lim)
            self._roll_day(ts)
            cur = self._open.get(cid)
            if cur is None:
                raise _Denied("UNKNOWN_ORDER", f"no open order {cid!r} to replace")
            qty = cmd.quantity
            if qty is not None and (not qty.is_finite() or qty <= 0):
                raise _Denied("INVALID_QUANTITY", f"quantity {qty} must be finite and > 0")
            price = cmd.price
            if price is not None and (not price.is_finite() or price <= 0):
                raise _Denied("INVALID_PRICE", f"price {price} must be finite and > 0")
            new_total = qty if qty is not None else cur.cum + cur.leaves
            new_px = price if price is not None else cur.price
            # Tick and band apply to a new price only; an unchanged price was checked on entry.
            self._check_instrument(
                cur.instrument_id,
                new_total,
                new_px,
                OrderType.LIMIT,
                ts,
                lim,
                price_checked=price is not None,
            )
            notional = new_total * new_px
            self._check_order_size(new_total, notional, lim)
            self._check_rate(
                self._order_times,
                lim.max_orders_per_window,
                lim,
                ts,
                "ORDER_RATE_EXCEEDED",
                "orders",
            )
            new_leaves = max(new_total - cur.cum, _ZERO)
            grow = max(new_leaves - cur.leaves, _ZERO)
            buy_add = grow if cur.side is Side.BUY else _ZERO
            sell_add = grow if cur.side is Side.SELL else _ZERO
            extra_notional = max(new_leaves * new_px - cur.leaves * cur.price, _ZERO)
            self._check_exposure(cur.instrument_id, buy_add, sell_add, extra_notional, lim)
        except _Denied as d:
            return self._decide(cid, RiskAction.REPLACE, d.reason, d.detail, ts, cmd.request_id)
        except ArithmeticError as exc:
            return self._decide(
                cid,
                RiskAction.REPLACE,
                "INVALID_NUMBER",
                f"arithmetic on the replace failed: {exc!r}",
                ts,
                cmd.request_id,
            )
        self._order_times.append(ts)
        # Until the venue confirms, the worst case is the larger of old and new.
        if new_leaves > cur.leaves or new_px > cur.price:
            upd = _OpenOrder(
                cur.instrument_id,
                cur.side,
                max(new_leaves, cur.leaves),
                max(new_px, cur.price),
                cur.cum,
            )
            self._remove_open(cid)
            self._add_open(cid, upd)
        return self._decide(cid, RiskAction.REPLACE, APPROVED, "", ts, cmd.request_id)

    # ------------------------------------------------------------------ checks
    def _check_instrument(
        self,
        instrument_id: str,
        qty: Decimal,
        price: Decimal | None,
        order_type: OrderType,
        ts: int,
        lim: AccountLimits,
        price_checked: bool = True,
    ) -> Decimal:
        """Exchange filters, staleness and the fat-finger band; returns the notional price."""
        inst = self.ctx.instruments.get(instrument_id)
        if inst is None:
            raise _Denied(
                "UNKNOWN_INSTRUMENT",
                f"{instrument_id!r} is not in instruments {self.ctx.instruments.version}",
            )
        if inst.halted:
            raise _Denied("INSTRUMENT_HALTED", f"{instrument_id} is halted")
        if qty < inst.min_qty:
            raise _Denied("QUANTITY_BELOW_MIN", f"quantity {qty} < min_qty {inst.min_qty}")
        if qty > inst.max_qty:
            raise _Denied("QUANTITY_ABOVE_MAX", f"quantity {qty} > max_qty {inst.max_qty}")
        if qty % inst.lot_size:
            raise _Denied(
                "QUANTITY_OFF_LOT", f"quantity {qty} is not a multiple of lot_size {inst.lot_size}"
            )
        if price is not None and price_checked and price % inst.tick_size:
            raise _Denied(
                "PRICE_OFF_TICK", f"price {price} is not a multiple of tick_size {inst.tick_size}"
            )
        ref = self.ctx.market.reference(instrument_id)
        max_age = lim.max_market_data_age_ns
        fresh = ref is not None and (max_age is None or ts - ref[1] <= max_age)
        if order_type is OrderType.MARKET:
            if ref is None or not fresh:
                age = "none" if ref is None else f"{ts - ref[1]} ns old"
                raise _Denied(
                    "MARKET_DATA_STALE",
                    f"market order refused: market data {age}, max age {max_age} ns",
                )
            px = ref[0]
        else:
            assert price is not None  # MISSING_PRICE was checked by the caller
            px = price
            band = lim.price_band_bps
            if band is not None and ref is not None and fresh and price_checked:
                ref_px = ref[0]
                if abs(price - ref_px) * _BPS > band * ref_px:
                    raise _Denied(
                        "PRICE_OUTSIDE_BAND",
                        f"price {price} is more than {band} bps from reference {ref_px}",
                    )
        if qty * px < inst.min_notional:
            raise _Denied(
                "NOTIONAL_BELOW_MIN", f"notional {qty * px} < min_notional {inst.min_notional}"
            )
        return px

    @staticmethod
    def _check_order_size(qty: Decimal, notional: Decimal, lim: AccountLimits) -> None:
        if lim.max_order_qty is not None and qty > lim.max_order_qty:
            raise _Denied(
                "QUANTITY_EXCEEDS_MAX_PER_ORDER",
                f"quantity {qty} > max_order_qty {lim.max_order_qty}",
            )
        if lim.max_order_notional is not None and notional > lim.max_order_notional:
            raise _Denied(
                "NOTIONAL_EXCEEDS_MAX_PER_ORDER",
                f"notional {notional} > max_order_notional {lim.max_order_notional}",
            )

    @staticmethod
    def _check_rate(
        times: deque[int], limit: int | None, lim: AccountLimits, ts: int, reason: str, what: str
    ) -> None:
        window = lim.rate_window_ns
        if limit is None or window is None:
            return
        cutoff = ts - window
        while times and times[0] <= cutoff:
            times.popleft()
        if len(times) >= limit:
            raise _Denied(reason, f"{len(times)} {what} in the last {window} ns, max {limit}")

    def _check_exposure(
        self,
        instrument_id: str,
        buy_add: Decimal,
        sell_add: Decimal,
        notional_add: Decimal,
        lim: AccountLimits,
    ) -> None:
        pos = self._positions.get(instrument_id)
        qty = pos.quantity if pos is not None else _ZERO
        open_bs = self._open_by_inst.get(instrument_id)
        open_buy, open_sell = (open_bs[0], open_bs[1]) if open_bs is not None else (_ZERO, _ZERO)
        if self.reduce_only:
            # Reduces only if, even with every open order on that side filled, the
            # position moves toward zero without crossing it.
            if buy_add:
                ok = qty < 0 and qty + open_buy + buy_add <= 0
            else:
                ok = qty > 0 and qty - open_sell - sell_add >= 0
            if not ok:
                raise _Denied(
                    "REDUCE_ONLY",
                    f"daily loss limit {lim.daily_loss_limit} hit: "
                    f"account is reduce-only and position is {qty}",
                )
        max_pos = lim.max_position_qty
        if lim.max_position_qty_by_instrument:
            max_pos = lim.max_position_qty_by_instrument.get(instrument_id, max_pos)
        if max_pos is not None:
            long_worst = qty + open_buy + buy_add
            short_worst = qty - open_sell - sell_add
            worst = max(long_worst, -short_worst)
            if worst > max_pos:
                raise _Denied(
                    "POSITION_LIMIT_EXCEEDED",
                    f"worst-case position {worst} (position {qty}, open buys {open_buy}, open "
                    f"sells {open_sell}, this order {buy_add or sell_add}) > {max_pos}",
                )
        if lim.max_gross_exposure is not None:
            gross = self._gross_positions + self._open_notional + notional_add
            if gross > lim.max_gross_exposure:
                raise _Denied(
                    "GROSS_EXPOSURE_EXCEEDED",
                    f"worst-case gross exposure {gross} (positions {self._gross_positions}, "
                    f"open orders {self._open_notional}, this order {notional_add}) > "
                    f"{lim.max_gross_exposure}",
                )

    def _remember(self, cid: str) -> None:
        self._seen.add(cid)
        for old in self._seen_log.append(cid):
            self._seen.discard(old)

    # ------------------------------------------------------------------ open orders
    def _add_open(self, cid: str, o: _OpenOrder) -> None:
        self._open[cid] = o
        self._open_dirty.add(cid)
        bs = self._open_by_inst.get(o.instrument_id)
        if bs is None:
            bs = self._open_by_inst[o.instrument_id] = [_ZERO, _ZERO]
        bs[0 if o.side is Side.BUY else 1] += o.leaves
        self._open_notional += o.leaves * o.price

    def _remove_open(self, cid: str) -> _OpenOrder | None:
        o = self._open.pop(cid, None)
        if o is not None:
            self._open_dirty.add(cid)
            bs = self._open_by_inst[o.instrument_id]
            bs[0 if o.side is Side.BUY else 1] -= o.leaves
            self._open_notional -= o.leaves * o.price
        return o

    def on_order_event(self, ev: OrderEvent) -> None:
        """Follow the order state machine: leaves shrink on fills, terminal orders close."""
        cid = ev.client_order_id
        cur = self._open.get(cid)
        if cur is None:
            return
        if ev.status in _TERMINAL or ev.leaves_qty <= 0:
            self._remove_open(cid)
            return
        if ev.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE):
            # Worst case until the venue answers: keep the larger of what we had.
            leaves = max(ev.leaves_qty, cur.leaves)
        else:
            leaves = ev.leaves_qty
        px = (
            ev.price
            if ev.price is not None and ev.status not in (OrderStatus.PENDING_REPLACE,)
            else cur.price
        )
        if leaves == cur.leaves and px == cur.price:
            # Exposure unchanged (the usual case: the PENDING_NEW echo of a submit); skip
            # re-summing the per-instrument and notional totals on the order path.
            if cur.cum != ev.cum_qty:
                cur.cum = ev.cum_qty
                self._open_dirty.add(cid)
            return
        self._remove_open(cid)
        self._add_open(cid, _OpenOrder(cur.instrument_id, cur.side, leaves, px, ev.cum_qty))

    # ------------------------------------------------------------------ positions, P&L
    def _roll_day(self, ts: int) -> None:
        day = ts // NANOS_PER_DAY
        if self._day is None or day > self._day:
            self._day = day
            self._day_base = self._pnl_total
            self.reduce_only = False

    @property
    def daily_pnl(self) -> Decimal:
        return self._pnl_total - self._day_base

    def on_position(self, pos: Position) -> AlertRaised | None:
        """Take the portfolio flow's latest position; engage reduce-only on the loss limit."""
        self._roll_day(pos.ts_event)
        mark = pos.mark_price if pos.mark_price is not None else pos.avg_open_price
        if mark is None:
            ref = self.ctx.market.reference(pos.instrument_id)
            mark = ref[0] if ref is not None else None
        pnl = pos.realized_pnl + pos.unrealized_pnl
        new = _PositionState(pos.quantity, mark, pnl)
        old = self._positions.get(pos.instrument_id)
        if old is not None:
            self._gross_positions -= _exposure(old)
            self._pnl_total -= old.pnl
        self._positions[pos.instrument_id] = new
        self._gross_positions += _exposure(new)
        self._pnl_total += pnl
        lim = self.ctx.limits_for(self.account_id)
        if (
            not self.reduce_only
            and lim.daily_loss_limit is not None
            and self.daily_pnl <= -lim.daily_loss_limit
        ):
            self.reduce_only = True
            return AlertRaised(
                alert="REDUCE_ONLY_ENGAGED",
                detail=f"daily P&L {self.daily_pnl} <= -{lim.daily_loss_limit}: account is "
                f"reduce-only until the next UTC day",
                account_id=self.account_id,
                client_order_id=None,
                ts_event=pos.ts_event,
                applied=True,
            )
        return None

    def on_control(self, cmd: ControlCommand) -> None:
        if cmd.scope is ControlScope.ACCOUNT:
            self.halted = cmd.action is ControlAction.HALT
            self.halt_reason = cmd.reason if self.halted else ""

    # ------------------------------------------------------------------ state
    @property
    def open_order_count(self) -> int:
        return len(self._open)

    def snapshot(self) -> bytes:
        """Re-encode only the open orders changed since the last snapshot."""
        raw, open_ = self._open_raw, self._open
        for cid in self._open_dirty:
            o = open_.get(cid)
            if o is None:
                raw.pop(cid, None)
            else:
                raw[cid] = msgspec.Raw(_pack(o))
        self._open_dirty.clear()
        state = _AccountState(
            account_id=self.account_id,
            seen_client_order_ids=self._seen_log.snapshot(),
            open_orders=dict(raw),
            positions=dict(self._positions),
            order_times=list(self._order_times),
            cancel_times=list(self._cancel_times),
            day=self._day,
            day_base_pnl=self._day_base,
            reduce_only=self.reduce_only,
            halted=self.halted,
            halt_reason=self.halt_reason,
        )
        return _pack(state)

    @classmethod
    def restore(
        cls, data: bytes, ctx: RiskContext, max_seen_ids: int = DEFAULT_MAX_SEEN_IDS
    ) -> AccountRisk:
        st = msgspec.msgpack.decode(data, type=_AccountState)
        acct = cls(st.account_id, ctx, max_seen_ids)
        for chunk in st.seen_client_order_ids:
            for cid in _ids_decoder.decode(chunk):
                acct._remember(cid)
        decode = _open_decoder.decode
        for cid, raw in st.open_orders.items():
            acct._add_open(cid, decode(raw))
            acct._open_raw[cid] = raw
        acct._open_dirty.clear()  # the restored bytes are the cache
        for inst, p in st.positions.items():
            acct._positions[inst] = p
            acct._gross_positions += _exposure(p)
            acct._pnl_total += p.pnl
        acct._order_times = deque(st.order_times)
        acct._cancel_times = deque(st.cancel_times)
        acct._day = st.day
        acct._day_base = st.day_base_pnl
        acct.reduce_only = st.reduce_only
        acct.halted = st.halted
        acct.halt_reason = st.halt_reason
        return acct


_ids_decoder = msgspec.msgpack.Decoder(list[str])
_open_decoder = msgspec.msgpack.Decoder(_OpenOrder)


def _exposure(p: _PositionState) -> Decimal:
    return abs(p.quantity) * p.mark if p.mark is not None else _ZERO


class _EngineState(msgspec.Struct):
    global_halted: bool
    global_halt_reason: str
    market: dict[str, tuple[Decimal, int]]
    accounts: list[bytes]


class RiskEngine:
    """All accounts of one worker plus what they share; the flow's single entry point."""

    def __init__(
        self,
        limits: RiskLimits,
        instruments: InstrumentRegistry,
        market: MarketView | None = None,
    ) -> None:
        self.ctx = RiskContext(limits, instruments, market)
        self._accounts: dict[str, AccountRisk] = {}

    def account(self, account_id: str) -> AccountRisk:
        acct = self._accounts.get(account_id)
        if acct is None:
            acct = self._accounts[account_id] = AccountRisk(account_id, self.ctx)
        return acct

    def check_submit(self, order: Order) -> RiskDecision:
        return self.account(order.account_id).check_submit(order)

    def check_cancel(self, cmd: CancelOrder) -> RiskDecision:
        return self.account(cmd.account_id).check_cancel(cmd)

    def check_replace(self, cmd: ReplaceOrder) -> RiskDecision:
        return self.account(cmd.account_id).check_replace(cmd)

    def on_order_event(self, ev: OrderEvent) -> None:
        self.account(ev.account_id).on_order_event(ev)

    def on_position(self, pos: Position) -> AlertRaised | None:
        return self.account(pos.account_id).on_position(pos)

    def on_tick(self, tick: TradeTick | Quote) -> None:
        self.ctx.market.on_tick(tick)

    def on_control(self, cmd: ControlCommand) -> None:
        if cmd.scope is ControlScope.GLOBAL:
            self.ctx.global_halted = cmd.action is ControlAction.HALT
            self.ctx.global_halt_reason = cmd.reason if self.ctx.global_halted else ""
        elif cmd.account_id:
            self.account(cmd.account_id).on_control(cmd)

    def set_limits(self, limits: RiskLimits) -> None:
        """Swap the limits in force (from :class:`~operators.risk_config.RiskConfigWatcher`)."""
        self.ctx.set_limits(limits)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            _EngineState(
                global_halted=self.ctx.global_halted,
                global_halt_reason=self.ctx.global_halt_reason,
                market=self.ctx.market.snapshot(),
                accounts=[a.snapshot() for a in self._accounts.values()],
            )
        )

    @classmethod
    def restore(
        cls, data: bytes, limits: RiskLimits, instruments: InstrumentRegistry
    ) -> RiskEngine:
        st = msgspec.msgpack.decode(data, type=_EngineState)
        eng = cls(limits, instruments)
        eng.ctx.global_halted = st.global_halted
        eng.ctx.global_halt_reason = st.global_halt_reason
        eng.ctx.market.restore(st.market)
        for blob in st.accounts:
            acct = AccountRisk.restore(blob, eng.ctx)
            eng._accounts[acct.account_id] = acct
        return eng
