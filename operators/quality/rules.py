"""Per-record quality rules: cheap plain-Python checks that run in the hot path.

Each stage has one rule object with ``check(record) -> reason | None``. ``None`` means the
record passes; a reason is a stable upper-case code (the same vocabulary as the normalize
stage) that the flow puts on a :class:`~schemas.canonical.DeadLetter` to ``dlq.<stage>``.

Rules never raise on bad input: anything unexpected is a reason code. Stateful rules
(monotonic sequence numbers, event-time ordering) only advance their state on records that
pass, so one bad record cannot poison the checks of the good ones after it.

Statistical expectations (null rates, distributions, ratios) are *not* here: they belong to
the Great Expectations suites in ``quality/suites`` validated per batch off the hot path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Mapping
from decimal import Decimal
from typing import Any, Protocol

import msgspec

from schemas.canonical import (
    BookDelta,
    BookLevel,
    Fill,
    Order,
    OrderEvent,
    Position,
    Quote,
    TradeTick,
)
from schemas.common import OrderStatus, OrderType, TimeInForce
from schemas.features import AccountWindow, Bar
from schemas.transport import Message


class Reason:
    """Dead-letter reason codes of the quality rules (stable: dashboards key on them)."""

    EMPTY_PAYLOAD = "EMPTY_PAYLOAD"
    OVERSIZED = "OVERSIZED"
    INVALID_JSON = "INVALID_JSON"
    SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
    MISSING_FIELD = "MISSING_FIELD"
    MISSING_ID = "MISSING_ID"
    UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"
    NON_FINITE = "NON_FINITE"
    INVALID_PRICE = "INVALID_PRICE"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    MISSING_PRICE = "MISSING_PRICE"
    CROSSED_QUOTE = "CROSSED_QUOTE"
    LOCKED_QUOTE = "LOCKED_QUOTE"
    INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
    TIMESTAMP_IN_FUTURE = "TIMESTAMP_IN_FUTURE"
    INVALID_SEQUENCE = "INVALID_SEQUENCE"
    OUT_OF_ORDER = "OUT_OF_ORDER"
    QUANTITY_MISMATCH = "QUANTITY_MISMATCH"
    OVERFILL = "OVERFILL"
    CUM_QTY_DECREASED = "CUM_QTY_DECREASED"
    EVENT_AFTER_TERMINAL = "EVENT_AFTER_TERMINAL"
    MISSING_EXPIRE_TIME = "MISSING_EXPIRE_TIME"
    INVALID_WINDOW = "INVALID_WINDOW"
    INCONSISTENT_OHLC = "INCONSISTENT_OHLC"


class RulesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Thresholds of the per-record rules; defaults suit the Binance and Coinbase feeds."""

    #: Raw payloads above this many bytes are refused (a venue message is a few KB).
    max_payload_bytes: int = 1 << 20
    #: How far ``ts_event`` may run ahead of ``ts_recv`` (venue clock skew), ns.
    max_clock_skew_ns: int = 2_000_000_000
    #: A quote with bid == ask: refused unless the venue is known to lock.
    allow_locked_quotes: bool = False
    #: How many orders the order-event rule remembers (oldest forgotten first).
    max_tracked_orders: int = 200_000
    #: Refuse ticks whose trade id / update id goes backwards per instrument. Off where a
    #: sequencer already owns ordering: normalize passes a late tick on as real data and
    #: reports it on ``md.gaps.*``, so its ticks tap must not dead-letter it as well.
    check_order: bool = True
    #: Check every price level of a book delta (positive finite price, non-negative
    #: finite size). Off where the producer already refused any bad level, as normalize's
    #: ``TickDecoder`` does: a depth update carries ~30 levels, and re-checking their
    #: Decimals costs more than the rest of the ticks rule (docs/quality.md, Measurements).
    check_book_levels: bool = True


class Rule(Protocol):
    stage: str

    def check(self, record: Any) -> str | None: ...


_TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.REJECTED,
        OrderStatus.DENIED,
        OrderStatus.EXPIRED,
    }
)


def _bad_positive(value: Decimal, invalid: str) -> str | None:
    """NON_FINITE for NaN/Inf, ``invalid`` for <= 0, else None."""
    if not value.is_finite():
        return Reason.NON_FINITE
    if value <= 0:
        return invalid
    return None


def _bad_non_negative(value: Decimal, invalid: str) -> str | None:
    if not value.is_finite():
        return Reason.NON_FINITE
    if value < 0:
        return invalid
    return None


def _bad_timestamps(ts_event: int, ts_recv: int, skew: int) -> str | None:
    if ts_event <= 0 or ts_recv <= 0:
        return Reason.INVALID_TIMESTAMP
    if ts_event - ts_recv > skew:
        return Reason.TIMESTAMP_IN_FUTURE
    return None


_OPENERS = (b"{", b"[")
_ZERO = Decimal(0)
_INF = Decimal("Infinity")


class _RawRule:
    """Raw venue messages: size and the cheapest possible JSON sniff, seq order per subject.

    ``check`` tries the one shape nearly every message has (starts with ``{`` or ``[``,
    in size, stamped) in a few C-level operations; anything else takes the slow path,
    which gives the exact reason. Both paths agree on every input.
    """

    stage = "raw"

    def __init__(self, config: RulesConfig) -> None:
        self._max = config.max_payload_bytes
        self._last_seq: dict[str, int] = {}

    def check(self, record: Message) -> str | None:
        data = record.data
        if data[:1] in _OPENERS and len(data) <= self._max and record.ts_recv > 0:
            if record.seq is None:
                return None
            return self._seq(record)
        return self._slow(record)

    def _seq(self, record: Message) -> str | None:
        seq = record.seq
        if seq is not None:
            last = self._last_seq.get(record.subject)
            if last is not None and seq <= last:
                return Reason.OUT_OF_ORDER
            self._last_seq[record.subject] = seq
        return None

    def _slow(self, record: Message) -> str | None:
        data = record.data
        if not data or not data.strip():
            return Reason.EMPTY_PAYLOAD
        if len(data) > self._max:
            return Reason.OVERSIZED
        if data.lstrip()[:1] not in _OPENERS:
            return Reason.INVALID_JSON
        if record.ts_recv <= 0:
            return Reason.INVALID_TIMESTAMP
        return self._seq(record)


class _TickRule:
    """Trades, quotes and book deltas: known instrument, positive prices, non-crossed quotes,
    update ids and trade ids that never go backwards per instrument.

    Why two paths: this runs on every tick, so ``check`` first tries the answer for a
    good tick, inline, as one chained comparison per record type (a Decimal NaN raises on
    ordering, which also means "not the fast path"); only a record that fails it goes
    through the explicit checks (``_trade`` etc.), which name the reason. The fast paths
    accept exactly what the explicit checks accept (``tests/operators/quality/
    test_rules.py`` runs every reason with the fast path warmed up and not).
    """

    stage = "ticks"

    def __init__(self, config: RulesConfig, instruments: Container[str]) -> None:
        self._known = instruments
        self._ok_ids: set[str] = set()  # ids found known: a set lookup, not a method call
        self._skew = config.max_clock_skew_ns
        self._allow_locked = config.allow_locked_quotes
        self._order = config.check_order
        self._levels = config.check_book_levels
        self._last_trade: dict[str, int] = {}
        self._last_quote: dict[str, int] = {}
        self._last_book: dict[str, int] = {}

    def check(self, record: Any) -> str | None:
        cls = type(record)
        try:
            if cls is Quote:
                if (
                    record.instrument_id in self._ok_ids
                    and _ZERO < record.bid_price < record.ask_price < _INF
                    and _ZERO <= record.bid_size < _INF
                    and _ZERO <= record.ask_size < _INF
                    and record.ts_event > 0
                    and record.ts_recv > 0
                    and record.ts_event - record.ts_recv <= self._skew
                    and record.update_id >= 0
                ):
                    return self._quote_order(record) if self._order else None
            elif cls is TradeTick:
                if (
                    record.instrument_id in self._ok_ids
                    and _ZERO < record.price < _INF
                    and _ZERO < record.size < _INF
                    and record.ts_event > 0
                    and record.ts_recv > 0
                    and record.ts_event - record.ts_recv <= self._skew
                    and record.trade_id != ""
                ):
                    return self._trade_order(record) if self._order else None
            elif (
                cls is BookDelta
                and record.instrument_id in self._ok_ids
                and record.ts_event > 0
                and record.ts_recv > 0
                and record.ts_event - record.ts_recv <= self._skew
                and 0 <= record.first_update_id <= record.last_update_id
                and (not self._levels or (_levels_ok(record.bids) and _levels_ok(record.asks)))
            ):
                return self._book_order(record) if self._order else None
        except ArithmeticError:  # NaN: decimal refuses to order it; the slow path names it
            pass
        if isinstance(record, Quote):
            return self._quote(record)
        if isinstance(record, TradeTick):
            return self._trade(record)
        if isinstance(record, BookDelta):
            return self._book(record)
        return Reason.SCHEMA_MISMATCH

    def _known_id(self, instrument_id: str) -> bool:
        if instrument_id in self._ok_ids:
            return True
        if instrument_id in self._known:
            self._ok_ids.add(instrument_id)
            return True
        return False

    # -- trades ---------------------------------------------------------------------------
    def _trade(self, t: TradeTick) -> str | None:
        if not self._known_id(t.instrument_id):
            return Reason.UNKNOWN_INSTRUMENT
        bad = (
            _bad_positive(t.price, Reason.INVALID_PRICE)
            or _bad_positive(t.size, Reason.INVALID_QUANTITY)
            or _bad_timestamps(t.ts_event, t.ts_recv, self._skew)
        )
        if bad:
            return bad
        if not t.trade_id:
            return Reason.MISSING_ID
        return self._trade_order(t) if self._order else None

    def _trade_order(self, t: TradeTick) -> str | None:
        # venues with numeric ids issue them in increasing order
        if t.trade_id.isdigit():
            tid = int(t.trade_id)
            last = self._last_trade.get(t.instrument_id)
            if last is not None and tid <= last:
                return Reason.OUT_OF_ORDER
            self._last_trade[t.instrument_id] = tid
        return None

    # -- quotes ---------------------------------------------------------------------------
    def _quote(self, q: Quote) -> str | None:
        if not self._known_id(q.instrument_id):
            return Reason.UNKNOWN_INSTRUMENT
        bad = (
            _bad_positive(q.bid_price, Reason.INVALID_PRICE)
            or _bad_positive(q.ask_price, Reason.INVALID_PRICE)
            or _bad_non_negative(q.bid_size, Reason.INVALID_QUANTITY)
            or _bad_non_negative(q.ask_size, Reason.INVALID_QUANTITY)
            or _bad_timestamps(q.ts_event, q.ts_recv, self._skew)
        )
        if bad:
            return bad
        if q.bid_price > q.ask_price:
            return Reason.CROSSED_QUOTE
        if q.bid_price == q.ask_price and not self._allow_locked:
            return Reason.LOCKED_QUOTE
        if q.update_id < 0:
            return Reason.INVALID_SEQUENCE
        return self._quote_order(q) if self._order else None

    def _quote_order(self, q: Quote) -> str | None:
        if q.update_id:  # 0: the venue sends none
            last = self._last_quote.get(q.instrument_id)
            if last is not None and q.update_id < last:
                return Reason.OUT_OF_ORDER
            self._last_quote[q.instrument_id] = q.update_id
        return None

    # -- book deltas ----------------------------------------------------------------------
    def _book(self, d: BookDelta) -> str | None:
        if not self._known_id(d.instrument_id):
            return Reason.UNKNOWN_INSTRUMENT
        bad = _bad_timestamps(d.ts_event, d.ts_recv, self._skew)
        if bad:
            return bad
        if d.first_update_id < 0 or d.last_update_id < d.first_update_id:
            return Reason.INVALID_SEQUENCE
        if self._levels:
            for side in (d.bids, d.asks):
                for level in side:
                    bad = _bad_positive(level.price, Reason.INVALID_PRICE) or _bad_non_negative(
                        level.size, Reason.INVALID_QUANTITY
                    )
                    if bad:
                        return bad
        return self._book_order(d) if self._order else None

    def _book_order(self, d: BookDelta) -> str | None:
        last = self._last_book.get(d.instrument_id)
        if not d.is_snapshot and last is not None and d.first_update_id <= last:
            return Reason.OUT_OF_ORDER
        self._last_book[d.instrument_id] = d.last_update_id
        return None


def _levels_ok(levels: list[BookLevel]) -> bool:
    """Every level has a positive finite price and a non-negative finite size."""
    try:
        for level in levels:
            if not (_ZERO < level.price < _INF and _ZERO <= level.size < _INF):
                return False
    except ArithmeticError:
        return False
    return True


class _OrderRule:
    stage = "orders"

    def __init__(self, config: RulesConfig, instruments: Container[str]) -> None:
        self._known = instruments

    def check(self, record: Any) -> str | None:
        if not isinstance(record, Order):
            return Reason.SCHEMA_MISMATCH
        o = record
        if not o.client_order_id or not o.account_id:
            return Reason.MISSING_ID
        if o.instrument_id not in self._known:
            return Reason.UNKNOWN_INSTRUMENT
        bad = _bad_positive(o.quantity, Reason.INVALID_QUANTITY)
        if bad:
            return bad
        if o.price is None:
            if o.order_type == OrderType.LIMIT:
                return Reason.MISSING_PRICE
        else:
            bad = _bad_positive(o.price, Reason.INVALID_PRICE)
            if bad:
                return bad
        if o.ts_submit < 0:
            return Reason.INVALID_TIMESTAMP
        if o.time_in_force == TimeInForce.GTD:
            if o.expire_time is None:
                return Reason.MISSING_EXPIRE_TIME
            if o.ts_submit and o.expire_time <= o.ts_submit:
                return Reason.INVALID_TIMESTAMP
        return None


#: Events stamped with the venue's clock: the ``ts_event`` of the venue's execution report
#: (``operators/orders.py``). An order lives at one venue, so these times are comparable
#: with each other, and with nothing else. Other events: see :class:`_OrderEventRule`.
_VENUE_CLOCK = frozenset(
    {"ACCEPTED", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REPLACED", "REJECTED"}
)
#: A cancel or replace refused; on a finished order it repeats the finished state.
_REFUSALS = frozenset({"CANCEL_REJECTED", "REPLACE_REJECTED"})
#: A fill the venue executed after the order was canceled or expired (the two crossed).
_LATE_FILL = "LATE_FILLED"
_LATE_FILL_STATES = frozenset({OrderStatus.CANCELED, OrderStatus.EXPIRED})


class _OrderState:
    __slots__ = ("cum_qty", "leaves_qty", "seq", "status", "terminal", "venue_ts")

    def __init__(self, e: OrderEvent) -> None:
        self.seq = e.seq
        self.cum_qty = e.cum_qty
        self.leaves_qty = e.leaves_qty
        self.status = e.status
        self.terminal = e.status in _TERMINAL
        self.venue_ts = e.ts_event if e.event in _VENUE_CLOCK else 0


class _OrderEventRule:
    """Order events: consistent quantities, and per order a sequence and cumulative quantity
    that never go backwards, and nothing after a terminal state but a late fill or a refused
    cancel/replace.

    Order: ``seq`` (the order manager numbers each order's events) is the order check.
    ``ts_event`` comes from several clocks: request-side events (SUBMITTED, DENIED,
    CANCEL_REQUESTED, REPLACE_REQUESTED) carry the requester's ``ts_submit`` (its own clock,
    or the stream's store time when unstamped); venue reports (:data:`_VENUE_CLOCK`) the
    venue's; CANCEL_REJECTED/REPLACE_REJECTED and EXPIRED either (refused or expired by
    us, or by the venue). A cancel stamped by the client can legitimately precede the
    venue's ACCEPTED, so event time is compared only between venue reports of one order.
    LATE_FILLED is not compared either: it crossed the cancel or expiry before it.

    After a terminal state: LATE_FILLED on a CANCELED/EXPIRED order that stays so with more
    filled and nothing left; CANCEL_REJECTED/REPLACE_REJECTED that change neither status,
    cum_qty nor leaves_qty (a cancel racing a fill). Anything else is EVENT_AFTER_TERMINAL.
    """

    stage = "order_events"

    def __init__(self, config: RulesConfig, instruments: Container[str]) -> None:
        self._known = instruments
        self._max = config.max_tracked_orders
        self._orders: OrderedDict[str, _OrderState] = OrderedDict()

    def check(self, record: Any) -> str | None:
        if not isinstance(record, OrderEvent):
            return Reason.SCHEMA_MISMATCH
        e = record
        if not e.order_id or not e.account_id or not e.event:
            return Reason.MISSING_ID
        if e.instrument_id not in self._known:
            return Reason.UNKNOWN_INSTRUMENT
        bad = (
            _bad_non_negative(e.quantity, Reason.INVALID_QUANTITY)
            or _bad_non_negative(e.cum_qty, Reason.INVALID_QUANTITY)
            or _bad_non_negative(e.leaves_qty, Reason.INVALID_QUANTITY)
        )
        if bad:
            return bad
        for px in (e.avg_px, e.last_px):
            if px is not None:
                bad = _bad_positive(px, Reason.INVALID_PRICE)
                if bad:
                    return bad
        if e.last_qty is not None:
            bad = _bad_positive(e.last_qty, Reason.INVALID_QUANTITY)
            if bad:
                return bad
        if e.cum_qty > e.quantity:
            return Reason.OVERFILL
        if e.cum_qty + e.leaves_qty > e.quantity:
            return Reason.QUANTITY_MISMATCH
        if e.status == OrderStatus.FILLED and (e.leaves_qty != 0 or e.cum_qty != e.quantity):
            return Reason.QUANTITY_MISMATCH
        if e.ts_event <= 0:
            return Reason.INVALID_TIMESTAMP
        state = self._orders.get(e.order_id)
        if state is None:
            self._orders[e.order_id] = _OrderState(e)
            if len(self._orders) > self._max:
                self._orders.popitem(last=False)
            return None
        if e.seq and e.seq <= state.seq:
            return Reason.OUT_OF_ORDER
        venue = e.event in _VENUE_CLOCK
        if state.terminal:
            bad = _after_terminal(e, state)
            if bad:
                return bad
        else:
            if e.cum_qty < state.cum_qty:
                return Reason.CUM_QTY_DECREASED
            if venue and e.ts_event < state.venue_ts:
                return Reason.OUT_OF_ORDER
        if e.seq:
            state.seq = e.seq
        if venue:
            state.venue_ts = e.ts_event
        state.cum_qty, state.leaves_qty, state.status = e.cum_qty, e.leaves_qty, e.status
        state.terminal = e.status in _TERMINAL
        self._orders.move_to_end(e.order_id)
        return None


def _after_terminal(e: OrderEvent, state: _OrderState) -> str | None:
    """None for the two events a finished order may still have, else the reason."""
    if e.event in _REFUSALS:
        if e.cum_qty < state.cum_qty:
            return Reason.CUM_QTY_DECREASED
        if (
            e.status == state.status
            and e.cum_qty == state.cum_qty
            and e.leaves_qty == state.leaves_qty
        ):
            return None
    elif e.event == _LATE_FILL and state.status in _LATE_FILL_STATES:
        if e.cum_qty < state.cum_qty:
            return Reason.CUM_QTY_DECREASED
        if e.status == state.status and e.cum_qty > state.cum_qty and e.leaves_qty == 0:
            return None
    return Reason.EVENT_AFTER_TERMINAL


class _FillRule:
    stage = "fills"

    def __init__(self, config: RulesConfig, instruments: Container[str]) -> None:
        self._known = instruments

    def check(self, record: Any) -> str | None:
        if not isinstance(record, Fill):
            return Reason.SCHEMA_MISMATCH
        f = record
        if not f.exec_id or not f.order_id or not f.account_id:
            return Reason.MISSING_ID
        if f.instrument_id not in self._known:
            return Reason.UNKNOWN_INSTRUMENT
        bad = _bad_positive(f.quantity, Reason.INVALID_QUANTITY) or _bad_positive(
            f.price, Reason.INVALID_PRICE
        )
        if bad:
            return bad
        if not f.fee.is_finite():  # fees may be negative: maker rebates
            return Reason.NON_FINITE
        if not f.fee_currency:
            return Reason.MISSING_FIELD
        if f.ts_event <= 0:
            return Reason.INVALID_TIMESTAMP
        return None


class _PositionRule:
    stage = "positions"

    def __init__(self, config: RulesConfig, instruments: Container[str]) -> None:
        self._known = instruments
        self._last_ts: dict[tuple[str, str], int] = {}

    def check(self, record: Any) -> str | None:
        if not isinstance(record, Position):
            return Reason.SCHEMA_MISMATCH
        p = record
        if not p.account_id:
            return Reason.MISSING_ID
        if p.instrument_id not in self._known:
            return Reason.UNKNOWN_INSTRUMENT
        for value in (p.quantity, p.realized_pnl, p.unrealized_pnl, p.fees):
            if not value.is_finite():
                return Reason.NON_FINITE
        for px in (p.avg_open_price, p.mark_price):
            if px is not None:
                bad = _bad_positive(px, Reason.INVALID_PRICE)
                if bad:
                    return bad
        if p.quantity != 0 and p.avg_open_price is None:
            return Reason.MISSING_PRICE
        if p.ts_event <= 0:
            return Reason.INVALID_TIMESTAMP
        key = (p.account_id, p.instrument_id)
        last = self._last_ts.get(key)
        if last is not None and p.ts_event < last:
            return Reason.OUT_OF_ORDER
        self._last_ts[key] = p.ts_event
        return None


def _finite_number(value: object) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, Decimal):
        return value.is_finite()
    return True  # strings and the rest are not numbers: nothing to say


class _AltRule:
    """Alternative data has no canonical Struct yet: records are mappings with a non-empty
    ``source`` and an integer ``ts_event``; an ``instrument_id``, if given, must be known;
    numbers must be finite; event time never goes backwards per (source, instrument)."""

    stage = "alt"

    def __init__(self, config: RulesConfig, instruments: Container[str]) -> None:
        self._known = instruments
        self._last_ts: dict[tuple[str, str], int] = {}

    def check(self, record: Any) -> str | None:
        if not isinstance(record, Mapping):
            return Reason.SCHEMA_MISMATCH
        source = record.get("source")
        ts = record.get("ts_event")
        if not isinstance(source, str) or not source:
            return Reason.MISSING_FIELD
        if not isinstance(ts, int) or isinstance(ts, bool):
            return Reason.MISSING_FIELD if ts is None else Reason.SCHEMA_MISMATCH
        if ts <= 0:
            return Reason.INVALID_TIMESTAMP
        inst = record.get("instrument_id")
        if inst is not None and inst not in self._known:
            return Reason.UNKNOWN_INSTRUMENT
        for value in record.values():
            if not _finite_number(value):
                return Reason.NON_FINITE
        key = (source, inst or "")
        last = self._last_ts.get(key)
        if last is not None and ts < last:
            return Reason.OUT_OF_ORDER
        self._last_ts[key] = ts
        return None


class _FeatureRule:
    """Feature windows: sane windows, consistent OHLC and volumes, and each
    (instrument, width) window emitted once and in order."""

    stage = "features"

    def __init__(self, config: RulesConfig, instruments: Container[str]) -> None:
        self._known = instruments
        self._last_end: dict[tuple[str, int], int] = {}

    def check(self, record: Any) -> str | None:
        if isinstance(record, Bar):
            return self._bar(record)
        if isinstance(record, AccountWindow):
            return self._window(record.account_id, record.width_ns, record.start_ns, record.end_ns)
        return Reason.SCHEMA_MISMATCH

    def _window(self, key: str, width: int, start: int, end: int) -> str | None:
        if not key:
            return Reason.MISSING_ID
        if width <= 0 or start < 0 or end - start != width:
            return Reason.INVALID_WINDOW
        last = self._last_end.get((key, width))
        if last is not None and end <= last:
            return Reason.OUT_OF_ORDER
        self._last_end[(key, width)] = end
        return None

    def _bar(self, b: Bar) -> str | None:
        if b.instrument_id not in self._known:
            return Reason.UNKNOWN_INSTRUMENT
        if b.trade_count < 0 or b.quote_count < 0:
            return Reason.INVALID_QUANTITY
        for q in (b.volume, b.buy_volume, b.sell_volume, b.notional):
            bad = _bad_non_negative(q, Reason.INVALID_QUANTITY)
            if bad:
                return bad
        if b.buy_volume + b.sell_volume > b.volume:
            return Reason.QUANTITY_MISMATCH
        ohlc = (b.open, b.high, b.low, b.close)
        if b.trade_count:
            if any(px is None for px in ohlc):
                return Reason.MISSING_PRICE
            o, h, lo, c = (px for px in ohlc if px is not None)
            bad = (
                _bad_positive(o, Reason.INVALID_PRICE)
                or _bad_positive(h, Reason.INVALID_PRICE)
                or _bad_positive(lo, Reason.INVALID_PRICE)
                or _bad_positive(c, Reason.INVALID_PRICE)
            )
            if bad:
                return bad
            if not (lo <= o <= h and lo <= c <= h):
                return Reason.INCONSISTENT_OHLC
        if b.spread_min is not None and b.spread_min < 0:
            return Reason.CROSSED_QUOTE
        if b.spread_min is not None and b.spread_max is not None and b.spread_min > b.spread_max:
            return Reason.INCONSISTENT_OHLC
        for x in (b.vwap, b.imbalance, b.realized_vol, b.mid_mean, b.spread_mean):
            if x is not None and not _finite_number(x):
                return Reason.NON_FINITE
        return self._window(b.instrument_id, b.width_ns, b.start_ns, b.end_ns)


_BUILDERS: dict[str, Callable[[RulesConfig, Container[str]], Rule]] = {
    "raw": lambda config, _known: _RawRule(config),
    "ticks": _TickRule,
    "orders": _OrderRule,
    "order_events": _OrderEventRule,
    "fills": _FillRule,
    "positions": _PositionRule,
    "alt": _AltRule,
    "features": _FeatureRule,
}


def build_rule(stage: str, instruments: Container[str], config: RulesConfig | None = None) -> Rule:
    """The per-record rule of ``stage``; ``instruments`` answers ``id in instruments``
    (an :class:`~schemas.instruments.InstrumentRegistry` does)."""
    try:
        builder = _BUILDERS[stage]
    except KeyError:
        raise ValueError(
            f"quality rules: unknown stage {stage!r}; hint: one of {', '.join(_BUILDERS)}"
        ) from None
    return builder(config or RulesConfig(), instruments)


__all__ = ["Reason", "Rule", "RulesConfig", "build_rule"]
