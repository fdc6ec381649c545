"""The order state machine: one :class:`OrderManager` per account, FIX 4.4 Appendix D rules.

Inputs are our own commands (after risk has decided on them), the venue's
:class:`~schemas.orders.ExecutionReport`\\ s, and event time for expiry. Every change
yields an :class:`~schemas.canonical.OrderEvent` for ``orders.events.<account>``; things
a person should see yield an :class:`~schemas.orders.AlertRaised`. Nothing here raises
on bad input: an input that cannot apply is reported and the state is left untouched.

States and who moves them::

    PENDING_NEW --NEW--> ACCEPTED --TRADE--> PARTIALLY_FILLED --TRADE--> FILLED
        |  \\--REJECTED--> REJECTED        (risk denial: DENIED, never sent)
        |                   any live --CANCELED--> CANCELED, --EXPIRED/time--> EXPIRED
    cancel request: PENDING_NEW/ACCEPTED/PARTIALLY_FILLED -> PENDING_CANCEL
    replace request: ACCEPTED/PARTIALLY_FILLED -> PENDING_REPLACE
    CANCEL_REJECTED / REPLACE_REJECTED restore the state held before the request.

Decisions where FIX leaves a choice (each is tested):

* Pending states take precedence over partial fills (FIX OrdStatus precedence:
  Pending Cancel 12, Pending Replace 11, Partially Filled 4), so a fill while a
  cancel/replace is pending keeps the pending status and updates cum/leaves (B.1.b,
  C.1.b); FILLED outranks both pending states, so a fill that completes the order
  ends it FILLED and the later cancel/replace reject leaves it FILLED (B.1.c).
* A replace to a quantity at or below the filled quantity amends the order quantity
  to the filled quantity and the order becomes FILLED when the venue confirms the
  replace (C.3.b and C.3.c). It is not rejected.
* A replace of a FILLED order is refused (``ORDER_NOT_OPEN``): FIX C.1.c allows a
  venue to reopen a filled order by increasing its quantity, but our venues do not,
  so the request never leaves. A replace while another request is pending is refused
  (``REQUEST_PENDING``): we do not chain replaces (FIX D.2).
* A fill after CANCELED or EXPIRED (the cancel and the execution crossed at the
  venue) is applied, because the venue did execute it: cum qty and avg price move,
  status stays terminal, leaves stay 0, and a ``LATE_FILL`` alert is raised. Any
  other input to a terminal order is reported as ``INVALID_TRANSITION`` and not
  applied. CANCELED/EXPIRED reports for an order already CANCELED/EXPIRED are quiet
  confirmations (our local expiry and the venue's can both arrive).
* A fill that would take cum qty past the order quantity is an ``OVERFILL`` alert and
  is not applied. A duplicate execution id is ignored (idempotent replay).
* Expiry is local and driven by event time (:meth:`OrderManager.on_time`): GTD at
  ``expire_time``, DAY at the next UTC midnight after ``ts_submit``.

Average price is exact: ``sum(px * qty) / cum`` in :class:`~decimal.Decimal` with the
default 28-digit context (only the final division can round).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Generic, TypeVar

import msgspec

from schemas.canonical import Order, OrderEvent
from schemas.common import OrderStatus, OrderType, Side, TimeInForce
from schemas.orders import (
    AlertRaised,
    CancelOrder,
    ExecType,
    ExecutionReport,
    ReplaceOrder,
    RiskDecision,
)

NANOS_PER_DAY = 86_400 * 1_000_000_000
_ZERO = Decimal(0)
#: avg_px keeps at most 18 fractional digits (the stores' decimal(38, 18)).
_AVG_PX_EXPONENT = -18
_AVG_PX_QUANTUM = Decimal(1).scaleb(_AVG_PX_EXPONENT)
#: Wide enough that neither the division nor the quantize rounds anything else.
_AVG_CTX = Context(prec=60, rounding=ROUND_HALF_EVEN)

S = OrderStatus
TERMINAL = frozenset({S.FILLED, S.CANCELED, S.REJECTED, S.DENIED, S.EXPIRED})
#: Terminal states a late fill may still land on (the venue executed it).
LATE_FILL_STATES = frozenset({S.CANCELED, S.EXPIRED})
_CANCELABLE = frozenset({S.PENDING_NEW, S.ACCEPTED, S.PARTIALLY_FILLED})
_REPLACEABLE = frozenset({S.ACCEPTED, S.PARTIALLY_FILLED})
_PENDING = frozenset({S.PENDING_CANCEL, S.PENDING_REPLACE})
_FILLABLE = frozenset({S.PENDING_NEW, S.ACCEPTED, S.PARTIALLY_FILLED, *_PENDING})

Output = OrderEvent | AlertRaised
T = TypeVar("T")

#: How many terminal orders an :class:`OrderManager` keeps (the most recently closed):
#: enough for a late fill after a cancel, a crossed cancel reject or a redelivered report
#: to find its order; older ones leave the hot state (and every snapshot). A count, not
#: a time: event times of commands and venue reports come from different clocks.
DEFAULT_MAX_TERMINAL = 20_000

_msgpack = msgspec.msgpack.Encoder()
_pack = _msgpack.encode


class BoundedLog(Generic[T]):
    """An append-only FIFO of at most ``max_items`` items whose snapshot re-encodes only the tail.

    Why: dedupe memories (seen ids, answered requests, the router's order index) are
    written on every order but read rarely, and Bytewax snapshots the state each epoch.
    Items are kept in chunks of ``chunk`` items; a full chunk is encoded once (msgpack)
    and its bytes are reused by every later snapshot, so a snapshot costs the encoding
    of the open chunk plus a copy of the sealed bytes. When the log exceeds
    ``max_items``, whole oldest chunks are dropped and returned to the caller (who
    forgets them in its look-up structures): the log then holds between
    ``max_items - chunk`` and ``max_items`` of the newest items.
    """

    def __init__(self, max_items: int, chunk: int = 4096) -> None:
        if max_items < chunk:
            chunk = max(1, max_items)
        self.max_items = max_items
        self._chunk = chunk
        self._sealed: deque[tuple[list[T], msgspec.Raw]] = deque()
        self._n_sealed = 0
        self._tail: list[T] = []

    def __len__(self) -> int:
        return self._n_sealed + len(self._tail)

    def __iter__(self) -> Iterator[T]:
        for items, _raw in self._sealed:
            yield from items
        yield from self._tail

    def append(self, item: T) -> list[T]:
        """Add ``item``; returns the items dropped to stay within the bound (usually none)."""
        tail = self._tail
        tail.append(item)
        if len(tail) < self._chunk:
            return []
        self._sealed.append((tail, msgspec.Raw(_pack(tail))))
        self._n_sealed += len(tail)
        self._tail = []
        dropped: list[T] = []
        while self._sealed and len(self) > self.max_items:
            old, _raw = self._sealed.popleft()
            self._n_sealed -= len(old)
            dropped.extend(old)
        return dropped

    def snapshot(self) -> list[msgspec.Raw]:
        """The chunks, as embeddable msgpack; decodes as ``list[list[T]]``."""
        out = [raw for _items, raw in self._sealed]
        out.append(msgspec.Raw(_pack(self._tail)))
        return out

    def extend_restored(self, chunks: list[list[T]]) -> list[T]:
        """Refill from a decoded snapshot; returns what the bound drops (if it shrank)."""
        dropped: list[T] = []
        for chunk in chunks:
            for item in chunk:
                dropped.extend(self.append(item))
        return dropped


class OrderRecord(msgspec.Struct, gc=False, array_like=True, omit_defaults=True):
    """One order's full state. Mutable, owned by its :class:`OrderManager`.

    ``array_like``/``omit_defaults``: the record is only ever encoded for snapshots, and
    positional fields without the defaults halve its size (and a snapshot's copy cost).

    ``gc=False``: every field is a scalar, so a record can never be part of a reference
    cycle, and tens of thousands of open orders tracked by the cyclic GC made each full
    collection of the orders flow a 100 ms stall (benchmarks/orders.py).
    """

    order_id: str
    client_order_id: str
    account_id: str
    instrument_id: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    price: Decimal | None
    time_in_force: TimeInForce
    expire_time: int | None
    ts_submit: int
    status: OrderStatus
    cum_qty: Decimal = _ZERO
    #: sum(px * qty) over applied fills; avg price = notional / cum_qty.
    notional: Decimal = _ZERO
    fees: Decimal = _ZERO
    venue_order_id: str | None = None
    #: The state to restore when a pending cancel/replace is rejected; it also
    #: follows acks and fills that arrive while the request is pending.
    prior: OrderStatus | None = None
    pending_qty: Decimal | None = None
    pending_price: Decimal | None = None
    expires_at: int | None = None
    seq: int = 0
    #: Order in which the order became terminal (its manager's counter), for retention.
    closed_seq: int | None = None

    @property
    def leaves_qty(self) -> Decimal:
        if self.status in TERMINAL:
            return _ZERO
        return self.quantity - self.cum_qty

    @property
    def avg_px(self) -> Decimal | None:
        """Exact when the quotient has at most 18 fractional digits, else rounded half-even.

        Prices are stored as decimal(38, 18) (QuestDB and Delta): an unrounded quotient
        such as (100.00 + 2 x 100.01) / 3 would not fit and its event would be
        dead-lettered. The average is a report; cum_qty and notional stay exact.
        """
        if not self.cum_qty:
            return None
        avg = _AVG_CTX.divide(self.notional, self.cum_qty)
        exponent = avg.as_tuple().exponent
        if isinstance(exponent, int) and exponent < _AVG_PX_EXPONENT:
            avg = avg.quantize(_AVG_PX_QUANTUM, context=_AVG_CTX)
        return avg


class _Entry(msgspec.Struct, array_like=True):
    """One order in a snapshot: its record and the execution ids applied to it."""

    record: OrderRecord
    exec_ids: list[str]


class _ManagerSnapshot(msgspec.Struct):
    """An :class:`OrderManager` snapshot: each entry a cached, msgpack-encoded _Entry."""

    account_id: str
    orders: list[msgspec.Raw]


_entry_decoder = msgspec.msgpack.Decoder(_Entry)


def _expiry(order: Order) -> int | None:
    if order.time_in_force is TimeInForce.GTD:
        return order.expire_time
    if order.time_in_force is TimeInForce.DAY:
        return (order.ts_submit // NANOS_PER_DAY + 1) * NANOS_PER_DAY
    return None


class OrderManager:
    """All orders of one account. Keyed state for a flow keyed by account.

    Snapshots are incremental: each order's snapshot entry (record plus applied exec ids)
    is cached as msgpack bytes and re-encoded only when the order changed since the last
    snapshot (``_dirty``), so a snapshot costs the changed orders plus a copy of the
    cached bytes, not an encoding of every open order.

    What grows is bounded by ``max_terminal``: once more orders than that are terminal,
    the one closed longest ago is dropped (with its exec ids).
    After that a report for it is ``UNMATCHED_EXECUTION_REPORT`` (alerted, never applied,
    so a duplicate exec id cannot double-fill it), a cancel/replace is ``UNKNOWN_ORDER``,
    and reuse of its client order id is refused by risk's own memory of ids
    (:class:`~operators.risk.AccountRisk`), not here. Open orders are never dropped.
    """

    def __init__(self, account_id: str, max_terminal: int = DEFAULT_MAX_TERMINAL) -> None:
        self.account_id = account_id
        self.max_terminal = max_terminal
        self.orders: dict[str, OrderRecord] = {}
        self._by_venue_id: dict[str, str] = {}
        self._seen_exec: set[str] = set()
        #: client order id -> the exec keys applied to it (dropped with the order).
        self._execs: dict[str, list[str]] = {}
        self._expiries: list[tuple[int, str]] = []
        #: (closed_seq, client order id) of terminal orders, oldest first, for retention.
        self._retire: deque[tuple[int, str]] = deque()
        self._closed = 0
        #: client order id -> cached snapshot entry; ids changed since the last snapshot.
        self._raw: dict[str, msgspec.Raw] = {}
        self._dirty: set[str] = set()
        #: Execution reports dropped as duplicates (for stage accounting).
        self.duplicates = 0

    # ------------------------------------------------------------------ helpers
    def get(self, client_order_id: str) -> OrderRecord | None:
        return self.orders.get(client_order_id)

    def _event(
        self,
        o: OrderRecord,
        event: str,
        ts: int,
        *,
        last_qty: Decimal | None = None,
        last_px: Decimal | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> OrderEvent:
        o.seq += 1
        self._dirty.add(o.client_order_id)
        if o.closed_seq is None and o.status in TERMINAL:
            self._closed += 1
            o.closed_seq = self._closed
            self._retire.append((self._closed, o.client_order_id))
            if len(self._retire) > self.max_terminal:
                self._retire_oldest()
        return OrderEvent(
            event=event,
            status=o.status,
            order_id=o.order_id,
            client_order_id=o.client_order_id,
            account_id=o.account_id,
            instrument_id=o.instrument_id,
            side=o.side,
            quantity=o.quantity,
            cum_qty=o.cum_qty,
            leaves_qty=o.leaves_qty,
            avg_px=o.avg_px,
            ts_event=ts,
            last_qty=last_qty,
            last_px=last_px,
            reason=reason,
            detail=detail,
            seq=o.seq,
            price=o.price,
            venue_order_id=o.venue_order_id,
        )

    def _alert(
        self,
        alert: str,
        detail: str,
        cid: str | None,
        ts: int,
        *,
        applied: bool = False,
        exec_id: str | None = None,
    ) -> AlertRaised:
        return AlertRaised(
            alert=alert,
            detail=detail,
            account_id=self.account_id,
            client_order_id=cid,
            ts_event=ts,
            applied=applied,
            exec_id=exec_id,
        )

    # ------------------------------------------------------------------ commands
    def on_submit(self, order: Order, decision: RiskDecision) -> list[Output]:
        """Record a new order with risk's decision: PENDING_NEW, or DENIED (terminal)."""
        cid = order.client_order_id
        ts = order.ts_submit
        if cid in self.orders:
            # Risk denies duplicates; never let one overwrite the live order's record.
            return [
                self._alert(
                    "DUPLICATE_CLIENT_ORDER_ID",
                    f"submit for existing client_order_id {cid!r} ignored "
                    f"(risk said {decision.reason}); hint: client order ids are single-use",
                    cid,
                    ts,
                )
            ]
        rec = OrderRecord(
            order_id=f"{self.account_id}:{cid}",
            client_order_id=cid,
            account_id=self.account_id,
            instrument_id=order.instrument_id,
            side=order.side,
            order_type=order.order_type,
            quantity=order.quantity,
            price=order.price,
            time_in_force=order.time_in_force,
            expire_time=order.expire_time,
            ts_submit=ts,
            status=S.PENDING_NEW if decision.approved else S.DENIED,
        )
        self.orders[cid] = rec
        if not decision.approved:
            return [self._event(rec, "DENIED", ts, reason=decision.reason, detail=decision.detail)]
        rec.expires_at = _expiry(order)
        if rec.expires_at is not None:
            heapq.heappush(self._expiries, (rec.expires_at, cid))
        return [self._event(rec, "SUBMITTED", ts)]

    def on_cancel(self, cmd: CancelOrder, decision: RiskDecision | None = None) -> list[Output]:
        """Our cancel request: PENDING_CANCEL, remembering the state to restore on reject."""
        ts = cmd.ts_submit
        rec = self.orders.get(cmd.client_order_id)
        if rec is None:  # FIX B.1.f
            return [
                self._alert(
                    "UNKNOWN_ORDER",
                    f"cancel for unknown order {cmd.client_order_id!r}; hint: check the "
                    "client_order_id and account",
                    cmd.client_order_id,
                    ts,
                )
            ]
        if decision is not None and not decision.approved:
            return [
                self._event(
                    rec, "CANCEL_REJECTED", ts, reason=decision.reason, detail=decision.detail
                )
            ]
        if rec.status not in _CANCELABLE:
            reason = "REQUEST_PENDING" if rec.status in _PENDING else "ORDER_NOT_OPEN"
            return [
                self._event(
                    rec,
                    "CANCEL_REJECTED",
                    ts,
                    reason=reason,
                    detail=f"cannot cancel an order in {rec.status}",
                )
            ]
        rec.prior = rec.status
        rec.status = S.PENDING_CANCEL
        return [self._event(rec, "CANCEL_REQUESTED", ts)]

    def on_replace(self, cmd: ReplaceOrder, decision: RiskDecision | None = None) -> list[Output]:
        """Our replace request: PENDING_REPLACE with the requested quantity/price held aside."""
        ts = cmd.ts_submit
        rec = self.orders.get(cmd.client_order_id)
        if rec is None:
            return [
                self._alert(
                    "UNKNOWN_ORDER",
                    f"replace for unknown order {cmd.client_order_id!r}; hint: check the "
                    "client_order_id and account",
                    cmd.client_order_id,
                    ts,
                )
            ]
        if decision is not None and not decision.approved:
            return [
                self._event(
                    rec, "REPLACE_REJECTED", ts, reason=decision.reason, detail=decision.detail
                )
            ]
        if cmd.quantity is None and cmd.price is None:
            return [
                self._event(
                    rec,
                    "REPLACE_REJECTED",
                    ts,
                    reason="NOTHING_TO_REPLACE",
                    detail="a replace needs a new quantity or price",
                )
            ]
        bad = [
            v for v in (cmd.quantity, cmd.price) if v is not None and (not v.is_finite() or v <= 0)
        ]
        if bad:
            return [
                self._event(
                    rec,
                    "REPLACE_REJECTED",
                    ts,
                    reason="INVALID_NUMBER",
                    detail=f"quantity/price must be finite and > 0, got {bad[0]}",
                )
            ]
        if rec.status not in _REPLACEABLE:
            if rec.status in _PENDING:
                reason = "REQUEST_PENDING"
            elif rec.status is S.PENDING_NEW:
                reason = "ORDER_NOT_ACKNOWLEDGED"
            else:
                reason = "ORDER_NOT_OPEN"
            return [
                self._event(
                    rec,
                    "REPLACE_REJECTED",
                    ts,
                    reason=reason,
                    detail=f"cannot replace an order in {rec.status}",
                )
            ]
        rec.prior = rec.status
        rec.status = S.PENDING_REPLACE
        rec.pending_qty = cmd.quantity
        rec.pending_price = cmd.price
        return [self._event(rec, "REPLACE_REQUESTED", ts)]

    # ------------------------------------------------------------------ time
    def on_time(self, now: int) -> list[Output]:
        """Expire DAY/GTD orders whose expiry is at or before ``now`` (event time)."""
        out: list[Output] = []
        while self._expiries and self._expiries[0][0] <= now:
            at, cid = heapq.heappop(self._expiries)
            rec = self.orders.get(cid)
            # Entries are removed lazily, so one may be left by an earlier order that used
            # this client id and was retired: it acts only for the order it was made for.
            if rec is None or rec.status in TERMINAL or rec.expires_at != at:
                continue
            rec.status = S.EXPIRED
            rec.prior = None
            out.append(self._event(rec, "EXPIRED", at, detail=f"{rec.time_in_force} expiry"))
        return out

    def _retire_oldest(self) -> None:
        """Forget the order closed longest ago (no output: nothing anyone sees changes)."""
        at, cid = self._retire.popleft()
        rec = self.orders.get(cid)
        if rec is None or rec.closed_seq != at:
            return
        cid = rec.client_order_id
        del self.orders[cid]
        if rec.venue_order_id is not None and self._by_venue_id.get(rec.venue_order_id) == cid:
            del self._by_venue_id[rec.venue_order_id]
        for key in self._execs.pop(cid, ()):
            self._seen_exec.discard(key)
        self._dirty.add(cid)

    # ------------------------------------------------------------------ venue
    def find(self, rep: ExecutionReport) -> OrderRecord | None:
        if rep.venue_order_id is not None:
            cid = self._by_venue_id.get(rep.venue_order_id)
            if cid is not None:
                return self.orders.get(cid)
        if rep.client_order_id is not None:
            return self.orders.get(rep.client_order_id)
        return None

    def on_execution_report(self, rep: ExecutionReport) -> list[Output]:
        """Apply one venue report; duplicates by (venue, exec_id) are ignored."""
        ts = rep.ts_event
        key = f"{rep.venue}\x1f{rep.exec_id}"
        if key in self._seen_exec:
            self.duplicates += 1
            return []
        rec = self.find(rep)
        if rec is None:
            return [
                self._alert(
                    "UNMATCHED_EXECUTION_REPORT",
                    f"no order for venue_order_id={rep.venue_order_id!r} "
                    f"client_order_id={rep.client_order_id!r}; hint: was it sent from another "
                    "account or before a restart without state?",
                    rep.client_order_id,
                    ts,
                    exec_id=rep.exec_id,
                )
            ]
        self._seen_exec.add(key)
        cid = rec.client_order_id
        execs = self._execs.get(cid)
        if execs is None:
            execs = self._execs[cid] = []
        execs.append(key)
        self._dirty.add(cid)
        if rep.instrument_id is not None and rep.instrument_id != rec.instrument_id:
            return [
                self._alert(
                    "INVALID_EXECUTION_REPORT",
                    f"report for {rep.instrument_id} on an order for {rec.instrument_id}",
                    cid,
                    ts,
                    exec_id=rep.exec_id,
                )
            ]
        if rep.side is not None and rep.side is not rec.side:
            return [
                self._alert(
                    "INVALID_EXECUTION_REPORT",
                    f"report side {rep.side} on a {rec.side} order",
                    cid,
                    ts,
                    exec_id=rep.exec_id,
                )
            ]
        if rep.venue_order_id is not None and rec.venue_order_id is None:
            rec.venue_order_id = rep.venue_order_id
            self._by_venue_id[rep.venue_order_id] = cid
        handler = _HANDLERS[rep.exec_type]
        return handler(self, rec, rep)

    def _invalid(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        return [
            self._alert(
                "INVALID_TRANSITION",
                f"{rep.exec_type} report on an order in {rec.status}: not applied",
                rec.client_order_id,
                rep.ts_event,
                exec_id=rep.exec_id,
            )
        ]

    def _on_new(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        if rec.status is S.PENDING_NEW:
            rec.status = S.ACCEPTED
            return [self._event(rec, "ACCEPTED", rep.ts_event)]
        if rec.status in _PENDING and rec.prior is S.PENDING_NEW:
            # B.1.e: the ack and our cancel crossed; the pending status keeps precedence.
            rec.prior = S.ACCEPTED
            return [self._event(rec, "ACCEPTED", rep.ts_event)]
        return self._invalid(rec, rep)

    def _on_trade(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        ts = rep.ts_event
        qty, px = rep.last_qty, rep.last_px
        if (
            qty is None
            or px is None
            or not qty.is_finite()
            or not px.is_finite()
            or qty <= 0
            or px <= 0
        ):
            return [
                self._alert(
                    "INVALID_EXECUTION_REPORT",
                    f"TRADE needs finite last_qty > 0 and last_px > 0, got {qty} @ {px}",
                    rec.client_order_id,
                    ts,
                    exec_id=rep.exec_id,
                )
            ]
        late = rec.status in LATE_FILL_STATES
        if not late and rec.status not in _FILLABLE and rec.status is not S.FILLED:
            return self._invalid(rec, rep)
        if rec.cum_qty + qty > rec.quantity:
            return [
                self._alert(
                    "OVERFILL",
                    f"fill {qty} @ {px} would take cum {rec.cum_qty} past order "
                    f"quantity {rec.quantity}: not applied",
                    rec.client_order_id,
                    ts,
                    exec_id=rep.exec_id,
                )
            ]
        rec.cum_qty += qty
        rec.notional += qty * px
        if rep.fee is not None and rep.fee.is_finite():
            rec.fees += rep.fee
        if late:
            return [
                self._event(rec, "LATE_FILLED", ts, last_qty=qty, last_px=px),
                self._alert(
                    "LATE_FILL",
                    f"fill {qty} @ {px} after the order was {rec.status}: applied, "
                    "the venue executed it",
                    rec.client_order_id,
                    ts,
                    applied=True,
                    exec_id=rep.exec_id,
                ),
            ]
        done = rec.cum_qty == rec.quantity
        if done:
            rec.status = S.FILLED  # FILLED outranks the pending states
            rec.prior = None
            rec.pending_qty = rec.pending_price = None
        elif rec.status in _PENDING:
            rec.prior = S.PARTIALLY_FILLED
        else:
            rec.status = S.PARTIALLY_FILLED
        return [
            self._event(rec, "FILLED" if done else "PARTIALLY_FILLED", ts, last_qty=qty, last_px=px)
        ]

    def _on_canceled(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        if rec.status in LATE_FILL_STATES:
            return []  # our expiry and the venue's cancel/expiry crossed: a confirmation
        if rec.status in TERMINAL:
            return self._invalid(rec, rep)
        rec.status = S.CANCELED
        rec.prior = None
        rec.pending_qty = rec.pending_price = None
        return [self._event(rec, "CANCELED", rep.ts_event, reason=rep.reason)]

    def _on_expired(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        if rec.status in LATE_FILL_STATES:
            return []
        if rec.status in TERMINAL:
            return self._invalid(rec, rep)
        rec.status = S.EXPIRED
        rec.prior = None
        rec.pending_qty = rec.pending_price = None
        return [self._event(rec, "EXPIRED", rep.ts_event, reason=rep.reason)]

    def _on_rejected(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        if rec.status is S.PENDING_NEW or (
            rec.status is S.PENDING_CANCEL and rec.prior is S.PENDING_NEW
        ):
            rec.status = S.REJECTED
            rec.prior = None
            return [self._event(rec, "REJECTED", rep.ts_event, reason=rep.reason or "VENUE")]
        return self._invalid(rec, rep)

    def _on_replaced(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        if rec.status is not S.PENDING_REPLACE:
            return self._invalid(rec, rep)
        new_qty = rep.order_qty if rep.order_qty is not None else rec.pending_qty
        new_px = rep.price if rep.price is not None else rec.pending_price
        if new_qty is not None and (not new_qty.is_finite() or new_qty <= 0):
            return [
                self._alert(
                    "INVALID_EXECUTION_REPORT",
                    f"REPLACED with order_qty {new_qty}",
                    rec.client_order_id,
                    rep.ts_event,
                    exec_id=rep.exec_id,
                )
            ]
        if new_px is not None:
            rec.price = new_px
        detail = None
        if new_qty is not None:
            if new_qty <= rec.cum_qty:  # C.3.b / C.3.c: amended to cum qty, FILLED
                detail = f"requested quantity {new_qty} <= filled {rec.cum_qty}: amended to cum"
                new_qty = rec.cum_qty
            rec.quantity = new_qty
        if rec.cum_qty == rec.quantity:
            rec.status = S.FILLED
        else:
            rec.status = S.PARTIALLY_FILLED if rec.cum_qty else S.ACCEPTED
        rec.prior = None
        rec.pending_qty = rec.pending_price = None
        return [self._event(rec, "REPLACED", rep.ts_event, detail=detail)]

    def _on_request_rejected(
        self, rec: OrderRecord, rep: ExecutionReport, pending: OrderStatus, event: str
    ) -> list[Output]:
        if rec.status is pending:
            assert rec.prior is not None
            rec.status = rec.prior
            rec.prior = None
            rec.pending_qty = rec.pending_price = None
            return [self._event(rec, event, rep.ts_event, reason=rep.reason)]
        if rec.status in TERMINAL:
            # B.1.c: the order completed (or was killed) before the request was dealt with;
            # the reject is expected and changes nothing.
            return [self._event(rec, event, rep.ts_event, reason=rep.reason)]
        return self._invalid(rec, rep)

    def _on_cancel_rejected(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        return self._on_request_rejected(rec, rep, S.PENDING_CANCEL, "CANCEL_REJECTED")

    def _on_replace_rejected(self, rec: OrderRecord, rep: ExecutionReport) -> list[Output]:
        return self._on_request_rejected(rec, rep, S.PENDING_REPLACE, "REPLACE_REJECTED")

    # ------------------------------------------------------------------ state
    def snapshot(self) -> bytes:
        """Re-encode the orders changed since the last snapshot; reuse the rest's bytes.

        The result is a new ``bytes`` (immutable, as Bytewax requires); the cached
        entries it is built from are never mutated, only replaced.
        """
        raw, orders, execs = self._raw, self.orders, self._execs
        for cid in self._dirty:
            rec = orders.get(cid)
            if rec is None:
                raw.pop(cid, None)
            else:
                raw[cid] = msgspec.Raw(_pack(_Entry(rec, execs.get(cid, []))))
        self._dirty.clear()
        return _pack(_ManagerSnapshot(self.account_id, list(raw.values())))

    @classmethod
    def restore(cls, data: bytes, max_terminal: int = DEFAULT_MAX_TERMINAL) -> OrderManager:
        st = msgspec.msgpack.decode(data, type=_ManagerSnapshot)
        mgr = cls(st.account_id, max_terminal)
        closed: list[tuple[int, str]] = []
        decode = _entry_decoder.decode
        for raw in st.orders:
            entry = decode(raw)
            rec = entry.record
            cid = rec.client_order_id
            mgr.orders[cid] = rec
            if rec.venue_order_id is not None:
                mgr._by_venue_id[rec.venue_order_id] = cid
            if rec.expires_at is not None and rec.status not in TERMINAL:
                heapq.heappush(mgr._expiries, (rec.expires_at, cid))
            if rec.closed_seq is not None:
                closed.append((rec.closed_seq, cid))
            if entry.exec_ids:
                mgr._execs[cid] = entry.exec_ids
                mgr._seen_exec.update(entry.exec_ids)
            mgr._raw[cid] = raw  # the restored bytes are the cache: nothing to re-encode
        closed.sort()
        mgr._retire.extend(closed)
        mgr._closed = closed[-1][0] if closed else 0
        while len(mgr._retire) > mgr.max_terminal:
            mgr._retire_oldest()
        return mgr


_HANDLERS = {
    ExecType.NEW: OrderManager._on_new,
    ExecType.TRADE: OrderManager._on_trade,
    ExecType.CANCELED: OrderManager._on_canceled,
    ExecType.EXPIRED: OrderManager._on_expired,
    ExecType.REJECTED: OrderManager._on_rejected,
    ExecType.REPLACED: OrderManager._on_replaced,
    ExecType.CANCEL_REJECTED: OrderManager._on_cancel_rejected,
    ExecType.REPLACE_REJECTED: OrderManager._on_replace_rejected,
}
