"""Raw venue messages in, canonical ticks out: decoding, validation and sequencing.

Two pieces, because they scale differently:

* :class:`TickDecoder` is stateless. It turns one raw message into a canonical tick
  or a :class:`~schemas.canonical.DeadLetter` and never raises, so it can run on any
  worker before the keyed exchange.
* :class:`TickSequencer` is the per-instrument state: it drops duplicates (by trade
  id and book update id) and reports sequence gaps and out-of-order events as
  :class:`~schemas.canonical.DataGap` records. Its state is explicit and snapshot-able.

Every input ends up as exactly one of: a tick, a dead letter, or a counted duplicate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from decimal import Decimal
from typing import Final

import msgspec

from schemas.canonical import BookDelta, BookLevel, DataGap, DeadLetter, Quote, Tick, TradeTick
from schemas.common import NANOS_PER_MILLI, NANOS_PER_SECOND, Aggressor, Market
from schemas.instruments import Instrument, InstrumentRegistry
from schemas.transport import Message
from schemas.venues.binance import (
    BinanceBookTicker,
    BinanceDepthSnapshot,
    BinanceDepthUpdate,
    BinanceEnvelope,
    BinanceTrade,
)
from schemas.venues.coinbase import CoinbaseMatch, CoinbaseMessage, CoinbaseTicker

STAGE: Final = "normalize"
RAW_SUBJECT_PREFIX: Final = "md.raw."
TICK_SUBJECT_PREFIX: Final = "md.ticks."
GAP_SUBJECT_PREFIX: Final = "md.gaps."
DLQ_SUBJECT: Final = f"dlq.{STAGE}"


class Reason:
    """Dead-letter reason codes of the normalize stage (stable: dashboards key on them)."""

    OVERSIZED = "OVERSIZED"
    INVALID_JSON = "INVALID_JSON"
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
    UNKNOWN_VENUE = "UNKNOWN_VENUE"
    UNKNOWN_STREAM = "UNKNOWN_STREAM"
    UNKNOWN_SYMBOL = "UNKNOWN_SYMBOL"
    NON_FINITE = "NON_FINITE"
    INVALID_PRICE = "INVALID_PRICE"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    CROSSED_QUOTE = "CROSSED_QUOTE"
    INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
    TIMESTAMP_IN_FUTURE = "TIMESTAMP_IN_FUTURE"


class Problem:
    SEQUENCE_GAP = "SEQUENCE_GAP"
    OUT_OF_ORDER = "OUT_OF_ORDER"


class NormalizeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits of the normalize stage.

    ``max_future_ns`` bounds how far a venue's event time may run ahead of our
    receive time. Venue clocks drift (the sample Binance capture runs ~1.3 s ahead
    of the recorder), so the default is generous; anything beyond is a bad clock or
    a corrupt field, not a fast network.
    """

    max_message_bytes: int = 64 * 1024
    max_future_ns: int = 60 * NANOS_PER_SECOND
    #: How many recent ids per stream an instrument remembers to recognise duplicates.
    dedupe_window: int = 4096


BinanceRecord = BinanceTrade | BinanceBookTicker | BinanceDepthUpdate


def _typed_envelope(data_type: type) -> type[msgspec.Struct]:
    return msgspec.defstruct(
        f"Envelope{data_type.__name__}", [("stream", str), ("data", data_type)], frozen=True
    )


class _Invalid(Exception):
    """Internal: a record failed validation. Never escapes :meth:`TickDecoder.decode`."""

    def __init__(self, reason: str, detail: str, instrument_id: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.instrument_id = instrument_id


_ZERO: Final = Decimal(0)

# Feed token (the third subject token, md.raw.<feed>.<symbol>) -> (venue, market).
FEEDS: Final[dict[str, tuple[str, Market]]] = {
    "binance": ("BINANCE", Market.SPOT),
    "binance-usdm": ("BINANCE", Market.USDM),
    "coinbase": ("COINBASE", Market.SPOT),
}


def _price(value: Decimal, field: str, inst: str | None) -> Decimal:
    if not value.is_finite():
        raise _Invalid(Reason.NON_FINITE, f"{field}={value} is not finite", inst)
    if value <= _ZERO:
        raise _Invalid(Reason.INVALID_PRICE, f"{field}={value} must be positive", inst)
    return value


def _size(value: Decimal, field: str, inst: str | None, *, allow_zero: bool) -> Decimal:
    if not value.is_finite():
        raise _Invalid(Reason.NON_FINITE, f"{field}={value} is not finite", inst)
    if value <= _ZERO:
        if value == _ZERO and allow_zero:
            # "0.00000000" would encode as "0E-8"; a plain "0" is kinder to consumers.
            return _ZERO
        bound = "non-negative" if allow_zero else "positive"
        raise _Invalid(Reason.INVALID_QUANTITY, f"{field}={value} must be {bound}", inst)
    return value


def _levels(raw: list[tuple[Decimal, Decimal]], side: str, inst: str | None) -> list[BookLevel]:
    # A zero size removes a level, so it is valid here (unlike a trade quantity).
    return [
        BookLevel(_price(p, f"{side}.price", inst), _size(q, f"{side}.size", inst, allow_zero=True))
        for p, q in raw
    ]


class TickDecoder:
    """Stateless: one raw message -> one canonical tick or one dead letter. Never raises."""

    def __init__(self, instruments: InstrumentRegistry, config: NormalizeConfig | None = None):
        self._instruments = instruments
        self._config = config or NormalizeConfig()
        self._envelope = msgspec.json.Decoder(BinanceEnvelope)
        self._snapshot = msgspec.json.Decoder(BinanceDepthSnapshot)
        kinds: dict[str, type[BinanceRecord]] = {
            "trade": BinanceTrade,
            "bookTicker": BinanceBookTicker,
            "depth": BinanceDepthUpdate,
        }
        self._binance = {k: msgspec.json.Decoder(t) for k, t in kinds.items()}
        # One-pass decoders of the whole envelope, picked by peeking at the stream name:
        # this halves decode cost on the hot path versus envelope-then-data.
        self._binance_fast = {
            k.encode(): msgspec.json.Decoder(_typed_envelope(t)) for k, t in kinds.items()
        }
        self._coinbase = msgspec.json.Decoder(CoinbaseMessage)
        # Venue symbols exactly as sent -> instrument; only known symbols are cached, so
        # garbage cannot grow it.
        self._symbol_cache: dict[tuple[str, Market, str], Instrument] = {}

    def decode(self, msg: Message) -> Tick | DeadLetter:
        try:
            if len(msg.data) > self._config.max_message_bytes:
                raise _Invalid(
                    Reason.OVERSIZED,
                    f"{len(msg.data)} bytes exceeds max_message_bytes="
                    f"{self._config.max_message_bytes}",
                )
            feed, _, subject_symbol = msg.subject[len(RAW_SUBJECT_PREFIX) :].partition(".")
            venue_market = FEEDS.get(feed)
            if venue_market is None:
                raise _Invalid(
                    Reason.UNKNOWN_VENUE,
                    f"feed {feed!r} from subject {msg.subject!r}; known: {sorted(FEEDS)}",
                )
            if feed == "coinbase":
                tick = self._coinbase_tick(msg)
            else:
                tick = self._binance_tick(msg, venue_market[1], subject_symbol)
            self._check_time(tick)
            return tick
        except _Invalid as bad:
            return DeadLetter(
                stage=STAGE,
                reason=bad.reason,
                detail=bad.detail,
                payload=msg.data,
                subject=msg.subject,
                instrument_id=bad.instrument_id,
                ts_recv=msg.ts_recv,
            )
        except Exception as exc:  # a decoder bug must not stop the flow; keep the bytes
            return DeadLetter(
                stage=STAGE,
                reason=Reason.SCHEMA_MISMATCH,
                detail=f"unexpected {type(exc).__name__}: {exc}",
                payload=msg.data,
                subject=msg.subject,
                ts_recv=msg.ts_recv,
            )

    # -- helpers ---------------------------------------------------------------------

    def _instrument(self, venue: str, market: Market, symbol: str) -> Instrument:
        key = (venue, market, symbol)
        inst = self._symbol_cache.get(key)
        if inst is not None:
            return inst
        inst = self._instruments.by_symbol(venue, market, symbol)
        if inst is not None:
            self._symbol_cache[key] = inst
        else:
            raise _Invalid(
                Reason.UNKNOWN_SYMBOL,
                f"{venue} {market.value} symbol {symbol!r} is not in instruments config "
                f"{self._instruments.version}",
            )
        return inst

    def _check_time(self, tick: Tick) -> None:
        if tick.ts_event <= 0:
            raise _Invalid(
                Reason.INVALID_TIMESTAMP, f"ts_event={tick.ts_event}", tick.instrument_id
            )
        ahead = tick.ts_event - tick.ts_recv
        if ahead > self._config.max_future_ns:
            raise _Invalid(
                Reason.TIMESTAMP_IN_FUTURE,
                f"event time is {ahead / NANOS_PER_SECOND:.3f}s ahead of receive time "
                f"(max {self._config.max_future_ns / NANOS_PER_SECOND:.0f}s)",
                tick.instrument_id,
            )

    @staticmethod
    def _shape_error(exc: msgspec.DecodeError, what: str) -> _Invalid:
        text = str(exc)
        if not isinstance(exc, msgspec.ValidationError):
            return _Invalid(Reason.INVALID_JSON, f"{what}: {text}")
        if text.startswith("Expected `object`, got") and "at `$" not in text:
            return _Invalid(Reason.NOT_AN_OBJECT, f"{what}: {text}")
        return _Invalid(Reason.SCHEMA_MISMATCH, f"{what}: {text}")

    # -- Binance ---------------------------------------------------------------------

    def _binance_tick(self, msg: Message, market: Market, subject_symbol: str) -> Tick:
        data = msg.data
        rec = self._binance_fast_path(data)
        if rec is not None:
            return self._binance_record(rec, msg, market)
        slow = self._binance_slow_path(msg, market, subject_symbol)
        if isinstance(slow, BinanceTrade | BinanceBookTicker | BinanceDepthUpdate):
            return self._binance_record(slow, msg, market)
        return slow

    def _binance_fast_path(self, data: bytes) -> BinanceRecord | None:
        """Decode ``{"stream":"<sym>@<kind>...","data":{...}}`` in one pass, or give up.

        Giving up is always safe: the slow path re-decodes and explains any error.
        """
        if not data.startswith(b'{"stream":"'):
            return None
        at = data.find(b"@", 11, 80)
        end = data.find(b'"', at, 100)
        if at < 0 or end < 0:
            return None
        kind = data[at + 1 : end].partition(b"@")[0]
        decoder = self._binance_fast.get(kind)
        if decoder is None:
            return None
        try:
            rec: BinanceRecord = decoder.decode(data).data  # type: ignore[attr-defined]
        except msgspec.DecodeError:
            return None
        return rec

    def _binance_slow_path(
        self, msg: Message, market: Market, subject_symbol: str
    ) -> BinanceRecord | Tick:
        data = msg.data
        try:
            env = self._envelope.decode(data)
        except msgspec.ValidationError as exc:
            # No envelope: a REST depth snapshot is the one envelope-less message we know.
            if b'"lastUpdateId"' in data:
                return self._binance_snapshot(msg, market, subject_symbol)
            raise self._shape_error(exc, "binance envelope") from None
        except msgspec.DecodeError as exc:
            raise self._shape_error(exc, "binance envelope") from None
        _, _, kind = env.stream.partition("@")
        kind = kind.partition("@")[0]
        decoder = self._binance.get(kind)
        if decoder is None:
            raise _Invalid(Reason.UNKNOWN_STREAM, f"stream {env.stream!r} is not supported")
        try:
            rec: BinanceRecord = decoder.decode(env.data)
        except msgspec.DecodeError as exc:
            raise self._shape_error(exc, f"binance {kind}") from None
        return rec

    def _binance_record(self, rec: BinanceRecord, msg: Message, market: Market) -> Tick:
        inst = self._instrument("BINANCE", market, rec.s)
        iid = inst.instrument_id
        if isinstance(rec, BinanceTrade):
            return TradeTick(
                instrument_id=iid,
                price=_price(rec.p, "p", iid),
                size=_size(rec.q, "q", iid, allow_zero=False),
                aggressor=Aggressor.SELL if rec.m else Aggressor.BUY,
                trade_id=str(rec.t),
                ts_event=rec.T * NANOS_PER_MILLI,
                ts_recv=msg.ts_recv,
            )
        if isinstance(rec, BinanceBookTicker):
            bid = _price(rec.b, "b", iid)
            ask = _price(rec.a, "a", iid)
            if bid >= ask:
                raise _Invalid(Reason.CROSSED_QUOTE, f"bid {bid} >= ask {ask}", iid)
            # Spot bookTicker carries no event time: receive time is the best we have.
            ts_event = (rec.T or rec.E or 0) * NANOS_PER_MILLI or msg.ts_recv
            return Quote(
                instrument_id=iid,
                bid_price=bid,
                bid_size=_size(rec.B, "B", iid, allow_zero=False),
                ask_price=ask,
                ask_size=_size(rec.A, "A", iid, allow_zero=False),
                update_id=rec.u,
                ts_event=ts_event,
                ts_recv=msg.ts_recv,
            )
        assert isinstance(rec, BinanceDepthUpdate)
        if rec.u < rec.U:
            raise _Invalid(
                Reason.SCHEMA_MISMATCH, f"first update id U={rec.U} > last u={rec.u}", iid
            )
        return BookDelta(
            instrument_id=iid,
            bids=_levels(rec.b, "b", iid),
            asks=_levels(rec.a, "a", iid),
            first_update_id=rec.U,
            last_update_id=rec.u,
            is_snapshot=False,
            ts_event=(rec.T or rec.E) * NANOS_PER_MILLI,
            ts_recv=msg.ts_recv,
        )

    def _binance_snapshot(self, msg: Message, market: Market, subject_symbol: str) -> Tick:
        try:
            snap = self._snapshot.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise self._shape_error(exc, "binance depth snapshot") from None
        # The REST snapshot names no symbol; the carrier's subject does.
        inst = self._instrument("BINANCE", market, subject_symbol)
        iid = inst.instrument_id
        ts = (snap.T or snap.E or 0) * NANOS_PER_MILLI or msg.ts_recv
        return BookDelta(
            instrument_id=iid,
            bids=_levels(snap.bids, "bids", iid),
            asks=_levels(snap.asks, "asks", iid),
            first_update_id=snap.lastUpdateId,
            last_update_id=snap.lastUpdateId,
            is_snapshot=True,
            ts_event=ts,
            ts_recv=msg.ts_recv,
        )

    # -- Coinbase --------------------------------------------------------------------

    def _coinbase_tick(self, msg: Message) -> Tick:
        try:
            rec = self._coinbase.decode(msg.data)
        except msgspec.ValidationError as exc:
            if "Invalid value" in str(exc) and "$.type" in str(exc):
                raise _Invalid(Reason.UNKNOWN_STREAM, f"coinbase: {exc}") from None
            raise self._shape_error(exc, "coinbase") from None
        except msgspec.DecodeError as exc:
            raise self._shape_error(exc, "coinbase") from None
        inst = self._instrument("COINBASE", Market.SPOT, rec.product_id)
        iid = inst.instrument_id
        ts_event = _rfc3339_ns(rec.time, iid)
        if isinstance(rec, CoinbaseMatch):
            return TradeTick(
                instrument_id=iid,
                price=_price(rec.price, "price", iid),
                size=_size(rec.size, "size", iid, allow_zero=False),
                # Coinbase's side is the maker's: a "sell" maker means a buy aggressor.
                aggressor=Aggressor.BUY if rec.side == "sell" else Aggressor.SELL,
                trade_id=str(rec.trade_id),
                ts_event=ts_event,
                ts_recv=msg.ts_recv,
            )
        assert isinstance(rec, CoinbaseTicker)
        bid = _price(rec.best_bid, "best_bid", iid)
        ask = _price(rec.best_ask, "best_ask", iid)
        if bid >= ask:
            raise _Invalid(Reason.CROSSED_QUOTE, f"bid {bid} >= ask {ask}", iid)
        return Quote(
            instrument_id=iid,
            bid_price=bid,
            bid_size=_size(rec.best_bid_size or _ZERO, "best_bid_size", iid, allow_zero=True),
            ask_price=ask,
            ask_size=_size(rec.best_ask_size or _ZERO, "best_ask_size", iid, allow_zero=True),
            update_id=rec.sequence,
            ts_event=ts_event,
            ts_recv=msg.ts_recv,
        )


def _rfc3339_ns(text: str, inst: str) -> int:
    """Exact ns from Coinbase's ``2024-08-08T23:54:13.123456Z`` (no float round trip)."""
    from datetime import UTC, datetime

    try:
        head, _, frac = text.rstrip("Z").partition(".")
        base = datetime.fromisoformat(head).replace(tzinfo=UTC)
        digits = (frac + "000000000")[:9] if frac else "0"
        return int(base.timestamp()) * NANOS_PER_SECOND + int(digits)
    except ValueError as exc:
        raise _Invalid(Reason.INVALID_TIMESTAMP, f"time={text!r}: {exc}", inst) from None


class _IdWindow:
    """The highest id seen plus a bounded set of recent ids, to tell duplicates apart.

    A deque keeps insertion order for eviction; evicting from the front of a dict
    instead degrades to O(window) per call as deleted slots pile up.
    """

    __slots__ = ("high", "limit", "order", "recent")

    def __init__(self, limit: int, high: int = -1, recent: Iterable[int] = ()) -> None:
        self.limit = limit
        self.high = high
        self.order: deque[int] = deque(recent)
        self.recent: set[int] = set(self.order)

    def add(self, ident: int) -> None:
        if ident in self.recent:
            return
        self.recent.add(ident)
        self.order.append(ident)
        if ident > self.high:
            self.high = ident
        if len(self.order) > self.limit:
            self.recent.discard(self.order.popleft())


class SequencerState(msgspec.Struct, frozen=True):
    """Snapshot of one instrument's sequencing state (picklable, JSON-able)."""

    instrument_id: str = ""
    trades_high: int = -1
    trades_recent: list[int] = []
    quotes_high: int = -1
    quotes_recent: list[int] = []
    depth_high: int = -1
    depth_recent: list[int] = []
    snapshot_ids: list[int] = []
    ticks_in: int = 0
    ticks_out: int = 0
    duplicates: int = 0
    gaps: int = 0
    out_of_order: int = 0


class TickSequencer:
    """One instrument's duplicate filter and gap/out-of-order detector.

    Trade ids and book update ids are each tracked with a high-water mark and a
    bounded window of recent ids. An id seen before is a duplicate and is dropped.
    An unseen id below the mark is out of order: it is passed on (it is real data)
    and reported. A depth update whose first id skips past the last applied id is a
    sequence gap: passed on and reported, since only the consumer can decide to
    re-snapshot its book.
    """

    def __init__(
        self, instrument_id: str, config: NormalizeConfig, state: SequencerState | None = None
    ) -> None:
        st = state or SequencerState()
        self.instrument_id = instrument_id
        n = config.dedupe_window
        self._trades = _IdWindow(n, st.trades_high, st.trades_recent)
        self._quotes = _IdWindow(n, st.quotes_high, st.quotes_recent)
        self._depth = _IdWindow(n, st.depth_high, st.depth_recent)
        self._snapshots = _IdWindow(64, -1, st.snapshot_ids)
        self.ticks_in = st.ticks_in
        self.ticks_out = st.ticks_out
        self.duplicates = st.duplicates
        self.gaps = st.gaps
        self.out_of_order = st.out_of_order

    def on_tick(self, tick: Tick) -> tuple[bool, DataGap | None]:
        """Return (emit this tick?, a report to publish or None)."""
        self.ticks_in += 1
        if isinstance(tick, TradeTick):
            verdict = self._on_id(self._trades, _int_id(tick.trade_id), tick, "trade")
        elif isinstance(tick, Quote):
            verdict = self._on_id(self._quotes, tick.update_id, tick, "quote")
        elif tick.is_snapshot:
            verdict = self._on_snapshot(tick)
        else:
            verdict = self._on_depth(tick)
        if verdict[0]:
            self.ticks_out += 1
        else:
            self.duplicates += 1
        return verdict

    def _report(
        self, tick: Tick, stream: str, problem: str, expected: int, received: int
    ) -> DataGap:
        if problem == Problem.SEQUENCE_GAP:
            self.gaps += 1
        else:
            self.out_of_order += 1
        return DataGap(self.instrument_id, stream, problem, expected, received, tick.ts_recv)

    def _on_id(
        self, window: _IdWindow, ident: int, tick: Tick, stream: str
    ) -> tuple[bool, DataGap | None]:
        if ident > window.high:
            window.add(ident)
            return True, None
        if ident in window.recent:
            return False, None
        report = self._report(tick, stream, Problem.OUT_OF_ORDER, window.high + 1, ident)
        window.add(ident)
        return True, report

    def _on_depth(self, tick: BookDelta) -> tuple[bool, DataGap | None]:
        window = self._depth
        first, last = tick.first_update_id, tick.last_update_id
        if last in window.recent:
            return False, None
        if window.high < 0 or first <= window.high + 1 <= last:
            window.add(last)
            return True, None
        if last <= window.high:
            report = self._report(tick, "depth", Problem.OUT_OF_ORDER, window.high + 1, first)
        else:
            report = self._report(tick, "depth", Problem.SEQUENCE_GAP, window.high + 1, first)
        window.add(last)
        return True, report

    def _on_snapshot(self, tick: BookDelta) -> tuple[bool, DataGap | None]:
        ident = tick.last_update_id
        if ident in self._snapshots.recent:
            return False, None
        self._snapshots.add(ident)
        # A snapshot re-bases the book: later updates continue from its id.
        self._depth = _IdWindow(self._depth.limit, ident, ())
        return True, None

    def snapshot(self) -> SequencerState:
        return SequencerState(
            instrument_id=self.instrument_id,
            trades_high=self._trades.high,
            trades_recent=list(self._trades.order),
            quotes_high=self._quotes.high,
            quotes_recent=list(self._quotes.order),
            depth_high=self._depth.high,
            depth_recent=list(self._depth.order),
            snapshot_ids=list(self._snapshots.order),
            ticks_in=self.ticks_in,
            ticks_out=self.ticks_out,
            duplicates=self.duplicates,
            gaps=self.gaps,
            out_of_order=self.out_of_order,
        )


def _int_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        # Venues with non-numeric trade ids: a stable hash still dedupes exactly-equal ids.
        import zlib

        return zlib.crc32(text.encode())


def tick_subject(tick: Tick) -> str:
    return TICK_SUBJECT_PREFIX + tick.instrument_id


def gap_subject(gap: DataGap) -> str:
    return GAP_SUBJECT_PREFIX + gap.instrument_id


def record_id(rec: Tick | DataGap) -> str:
    """A record's identity as the venue names it, for ``Nats-Msg-Id`` de-duplication.

    The same identity the sequencer de-duplicates on, so a tick replayed after a crash
    gets the id it had the first time even if its receive time was re-stamped.
    """
    if isinstance(rec, TradeTick):
        return f"t:{rec.instrument_id}:{rec.trade_id}"
    if isinstance(rec, Quote):
        return f"q:{rec.instrument_id}:{rec.update_id}"
    if isinstance(rec, BookDelta):
        snap = "s" if rec.is_snapshot else "d"
        return f"b:{rec.instrument_id}:{rec.first_update_id}-{rec.last_update_id}:{snap}"
    return f"g:{rec.instrument_id}:{rec.stream}:{rec.problem}:{rec.expected}:{rec.received}"


def bytes_id(subject: str, data: bytes) -> str:
    """Identity of a record with no venue id (a dead letter): a digest of what it says."""
    import hashlib

    h = hashlib.blake2b(subject.encode(), digest_size=16)
    h.update(b"\0")
    h.update(data)
    return f"h:{h.hexdigest()}"
