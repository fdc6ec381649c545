"""Canonical ticks into Delta tables, idempotently, one table per kind.

Layout under ``root`` (a local path or an ``s3://`` URI)::

    <root>/ticks/trades       TradeTick
    <root>/ticks/quotes       Quote
    <root>/ticks/book_deltas  BookDelta

Every table is partitioned by ``date`` (the UTC day of ``ts_event``) only. Adding the
symbol to the partition multiplied the file count about ten times here, so symbols
stay a column and file skipping by statistics does the rest.

Money is stored as ``decimal128(38, 18)``: exact, and arithmetic works in any engine.
A price or size with more than 18 decimal places or 20 integer digits does not fit,
and becomes a ``DeadLetter`` (reason ``SCHEMA_MISMATCH``) rather than being rounded.
Timestamps stay integer nanoseconds UTC (``int64``): Delta's timestamp type is only
microsecond precise.

Idempotency. Each row keeps ``origin`` (the NATS subject it came from) and ``seq``
(its JetStream stream sequence). Every commit carries one Delta *application
transaction* ``(app_id, version)`` per origin in the batch, with
``app_id = "<writer_id>/<origin>"`` and ``version`` = the highest sequence written
for that origin into that table. The transaction and the rows land in the same atomic
commit, so after a crash and a JetStream replay a record whose ``seq`` is at or below
the table's committed version was written before and is dropped (counted as
``duplicate``). This relies on sequences arriving in ascending order per subject,
which holds for JetStream's ordered consumer and for resuming by stream sequence.
Records without a sequence (core NATS) cannot be de-duplicated and are always written.

Batches. :func:`decode_ticks` turns a batch of bus messages straight into arrow columns
(decimals parsed by arrow's exact cast, no ``Decimal`` per value), judged exactly as the
per-record path would, plus the ``ticks`` quality rules (:class:`TickRules`);
:meth:`TickTableWriter.write_tables` commits such chunks, de-duplicating with numpy.

Acknowledgement. :meth:`TickTableWriter.write` commits synchronously; the Bytewax sink
calls it inside ``write_batch``, so the epoch (and the source's snapshot of the stream
sequence) only advances after the rows are durable in the table. A failing write
raises :class:`DeltaSinkError` and stops the flow: nothing that was not written is
acknowledged, and the restarted flow replays it.
"""

from __future__ import annotations

import decimal
import itertools
import operator
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.canonical import BookDelta, BookLevel, DeadLetter, Quote, Tick, TradeTick
from schemas.common import Aggressor
from schemas.transport import Message
from trade2026.accounting import DEAD_LETTERED, DUPLICATE, IN, OUT, UNKNOWN_INSTRUMENT, Accounting

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

    from operators.quality.rules import RulesConfig

__all__ = [
    "DEC_PRECISION",
    "DEC_SCALE",
    "KINDS",
    "Chunk",
    "DecodedBatch",
    "DeltaSinkError",
    "DeltaTickSink",
    "DeltaTicksConfig",
    "Stamped",
    "TickRules",
    "TickTableWriter",
    "WriteResult",
    "arrow_schema",
    "decimal_misfit",
    "decode_ticks",
    "stamped_chunks",
    "storage_options_from_env",
    "table_uri",
    "tick_misfit",
]

#: The Delta table name (under ``<root>/ticks/``) for each tick kind.
KINDS: dict[str, str] = {"trade": "trades", "quote": "quotes", "book_delta": "book_deltas"}
DEC_PRECISION = 38
DEC_SCALE = 18
_MAX_INT_DIGITS = DEC_PRECISION - DEC_SCALE
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1
NANOS_PER_DAY = 86_400 * 1_000_000_000
STAGE = "ticks_sink"

#: Environment variables passed to deltalake as storage options when set.
_STORAGE_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_S3_ALLOW_UNSAFE_RENAME",
    "AWS_CONDITIONAL_PUT",
)


class DeltaSinkError(RuntimeError):
    """A Delta write or maintenance step failed; the message names step, path and a hint."""


class DeltaTicksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Local path or ``s3://bucket/prefix``; tables live under ``<root>/ticks/``.
    root: str = "var/lake"
    #: Prefix of the application transaction ids; one per independent writer process.
    writer_id: str = "ticks-sink"
    #: Micro-batch: flush after this many rows ... (a 10,000-row append costs ~11 ms)
    batch_rows: int = 50_000
    #: ... or this long after the first buffered row.
    batch_ms: int = 1_000
    #: Run ``optimize.compact()`` on a table every N commits to it (0: never).
    compact_every: int = 0
    #: Run a real ``vacuum`` (with ``vacuum_retention_hours``) every N commits (0: never).
    vacuum_every: int = 0
    vacuum_retention_hours: int = 168
    #: Our own retries of a failed commit (delta-rs also retries conflicts internally).
    commit_retries: int = 5
    retry_backoff_ms: int = 50


class Stamped(msgspec.Struct, frozen=True, gc=False):
    """A decoded tick with where it came from: the unit the writer de-duplicates on."""

    origin: str
    seq: int | None
    tick: Tick


class WriteResult(msgspec.Struct, frozen=True):
    written: dict[str, int]
    duplicates: int
    commits: int


def storage_options_from_env(
    root: str, env: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """Storage options for an object-store URI, from the usual ``AWS_*`` variables."""
    if "://" not in root or root.startswith("file://"):
        return None
    env = os.environ if env is None else env
    opts = {k: env[k] for k in _STORAGE_ENV if env.get(k)}
    return opts or None


def table_uri(root: str, kind: str) -> str:
    return f"{root.rstrip('/')}/ticks/{KINDS[kind]}"


def _dec_type() -> pa.DataType:
    import pyarrow as pa

    return pa.decimal128(DEC_PRECISION, DEC_SCALE)


_SCHEMAS: dict[str, pa.Schema] = {}


def arrow_schema(kind: str) -> pa.Schema:
    """The enforced schema of a tick table (``date`` is the partition column)."""
    schema = _SCHEMAS.get(kind)
    if schema is None:
        schema = _SCHEMAS[kind] = _make_schema(kind)
    return schema


def _make_schema(kind: str) -> pa.Schema:
    import pyarrow as pa

    dec = _dec_type()
    head = [
        pa.field("date", pa.date32(), nullable=False),
        pa.field("instrument_id", pa.string(), nullable=False),
        pa.field("ts_event", pa.int64(), nullable=False),
        pa.field("ts_recv", pa.int64(), nullable=False),
    ]
    tail = [pa.field("origin", pa.string(), nullable=False), pa.field("seq", pa.int64())]
    if kind == "trade":
        body = [
            pa.field("price", dec, nullable=False),
            pa.field("size", dec, nullable=False),
            pa.field("aggressor", pa.string(), nullable=False),
            pa.field("trade_id", pa.string(), nullable=False),
        ]
    elif kind == "quote":
        body = [
            pa.field("bid_price", dec, nullable=False),
            pa.field("bid_size", dec, nullable=False),
            pa.field("ask_price", dec, nullable=False),
            pa.field("ask_size", dec, nullable=False),
            pa.field("update_id", pa.int64(), nullable=False),
        ]
    elif kind == "book_delta":
        level = pa.struct([pa.field("price", dec), pa.field("size", dec)])
        body = [
            pa.field("bids", pa.list_(level), nullable=False),
            pa.field("asks", pa.list_(level), nullable=False),
            pa.field("first_update_id", pa.int64(), nullable=False),
            pa.field("last_update_id", pa.int64(), nullable=False),
            pa.field("is_snapshot", pa.bool_(), nullable=False),
        ]
    else:
        raise ValueError(f"ticks_sink schema: unknown kind {kind!r}; hint: one of {list(KINDS)}")
    return pa.schema(head + body + tail)


#: Quantizing to 18 places in a 38-digit context with these traps succeeds exactly when a
#: value fits decimal(38, 18) without rounding: one C call for the common case.
_FIT_CONTEXT = decimal.Context(prec=38, traps=[decimal.Inexact, decimal.InvalidOperation])
_FIT_QUANTUM = Decimal(1).scaleb(-DEC_SCALE)


def decimal_misfit(name: str, d: Decimal) -> str | None:
    """Why ``d`` cannot be stored exactly as decimal(38, 18), or None when it can."""
    if not d.is_finite():
        return f"{name}={d} is not finite"
    try:
        d.quantize(_FIT_QUANTUM, context=_FIT_CONTEXT)
        return None
    except (decimal.Inexact, decimal.InvalidOperation):
        pass  # it does not fit: work out why, for the dead letter
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    if exp < -DEC_SCALE:
        d = d.normalize()
        exp = d.as_tuple().exponent
        assert isinstance(exp, int)
        if exp < -DEC_SCALE:
            return f"{name}={d} has more than {DEC_SCALE} decimal places"
    if d and d.adjusted() >= _MAX_INT_DIGITS:
        return f"{name}={d} has more than {_MAX_INT_DIGITS} integer digits"
    return None


def _int_misfit(name: str, v: int, lo: int = _I64_MIN) -> str | None:
    if lo <= v <= _I64_MAX:
        return None
    return f"{name}={v} is outside int64"


def tick_misfit(tick: Tick) -> str | None:
    """Why a decoded tick does not fit its table schema (None when it fits)."""
    why = _int_misfit("ts_event", tick.ts_event, 0) or _int_misfit("ts_recv", tick.ts_recv, 0)
    if why:
        return why
    if not tick.instrument_id:
        return "instrument_id is empty"
    if isinstance(tick, TradeTick):
        return decimal_misfit("price", tick.price) or decimal_misfit("size", tick.size)
    if isinstance(tick, Quote):
        return (
            decimal_misfit("bid_price", tick.bid_price)
            or decimal_misfit("bid_size", tick.bid_size)
            or decimal_misfit("ask_price", tick.ask_price)
            or decimal_misfit("ask_size", tick.ask_size)
            or _int_misfit("update_id", tick.update_id)
        )
    for side, levels in (("bids", tick.bids), ("asks", tick.asks)):
        for lv in levels:
            why = decimal_misfit(f"{side}.price", lv.price) or decimal_misfit(
                f"{side}.size", lv.size
            )
            if why:
                return why
    return _int_misfit("first_update_id", tick.first_update_id) or _int_misfit(
        "last_update_id", tick.last_update_id
    )


_KIND_OF: dict[type, str] = {TradeTick: "trade", Quote: "quote", BookDelta: "book_delta"}


def _levels(levels: list[BookLevel]) -> list[tuple[Decimal, Decimal]]:
    return [(lv.price, lv.size) for lv in levels]


def _build_table(kind: str, rows: Sequence[Stamped]) -> pa.Table:
    """Columnar arrow table for one kind; rows were checked by :func:`tick_misfit`."""
    import pyarrow as pa

    schema = arrow_schema(kind)
    ticks: list[Any] = [r.tick for r in rows]
    ts_event = [t.ts_event for t in ticks]
    cols: dict[str, Any] = {
        "date": pa.array([t // NANOS_PER_DAY for t in ts_event], pa.int32()).cast(pa.date32()),
        "instrument_id": [t.instrument_id for t in ticks],
        "ts_event": ts_event,
        "ts_recv": [t.ts_recv for t in ticks],
    }
    if kind == "trade":
        cols["price"] = [t.price for t in ticks]
        cols["size"] = [t.size for t in ticks]
        cols["aggressor"] = [str(t.aggressor) for t in ticks]
        cols["trade_id"] = [t.trade_id for t in ticks]
    elif kind == "quote":
        cols["bid_price"] = [t.bid_price for t in ticks]
        cols["bid_size"] = [t.bid_size for t in ticks]
        cols["ask_price"] = [t.ask_price for t in ticks]
        cols["ask_size"] = [t.ask_size for t in ticks]
        cols["update_id"] = [t.update_id for t in ticks]
    else:
        cols["bids"] = [_levels(t.bids) for t in ticks]
        cols["asks"] = [_levels(t.asks) for t in ticks]
        cols["first_update_id"] = [t.first_update_id for t in ticks]
        cols["last_update_id"] = [t.last_update_id for t in ticks]
        cols["is_snapshot"] = [t.is_snapshot for t in ticks]
    cols["origin"] = [r.origin for r in rows]
    cols["seq"] = [r.seq for r in rows]
    arrays = [
        c if isinstance(c, pa.Array) else pa.array(c, type=schema.field(name).type)
        for name, c in cols.items()
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


# -- the batch path: message bytes -> checked arrow columns --------------------------
#
# Per tick, building ``Decimal`` objects and checking their fit was most of the sink's
# cost. Here a batch of messages is decoded with the decimals kept as their JSON text,
# and arrow parses each decimal column in one call: its string -> decimal128(38, 18)
# cast is exact (it refuses, rather than rounds, a value with more than 18 places or
# more than 20 integer digits), so a successful cast *is* the fit check. Only a column
# that fails the cast is looked at value by value, to name the bad records.

#: Checked rows of one tick kind, ready to commit: ``(kind, table)``.
Chunk = tuple[str, "pa.Table"]

_I64 = Annotated[int, msgspec.Meta(ge=_I64_MIN, le=_I64_MAX)]
_NS = Annotated[int, msgspec.Meta(ge=0, le=_I64_MAX)]
_InstrumentId = Annotated[str, msgspec.Meta(min_length=1)]


class _WireTrade(msgspec.Struct, frozen=True, tag_field="kind", tag="trade", gc=False):
    """:class:`TradeTick` with its decimals as text and its fit limits in the types.

    The wire types only ever refuse *more* than the canonical ones (a price sent as a
    JSON number, an int beyond int64, an empty id): what they refuse is decoded again
    the canonical way, so no record is judged differently from :func:`tick_misfit`.
    """

    instrument_id: _InstrumentId
    price: str
    size: str
    aggressor: Aggressor
    trade_id: str
    ts_event: _NS
    ts_recv: _NS


class _WireQuote(msgspec.Struct, frozen=True, tag_field="kind", tag="quote", gc=False):
    instrument_id: _InstrumentId
    bid_price: str
    bid_size: str
    ask_price: str
    ask_size: str
    update_id: _I64
    ts_event: _NS
    ts_recv: _NS


class _WireBook(msgspec.Struct, frozen=True, tag_field="kind", tag="book_delta", gc=False):
    instrument_id: _InstrumentId
    bids: list[tuple[str, str]]
    asks: list[tuple[str, str]]
    first_update_id: _I64
    last_update_id: _I64
    is_snapshot: bool
    ts_event: _NS
    ts_recv: _NS


_Wire = _WireTrade | _WireQuote | _WireBook
_CODE_KIND = ("trade", "quote", "book_delta")
_KIND_CODE: dict[type, int] = {_WireTrade: 0, _WireQuote: 1, _WireBook: 2}
_DATA = operator.attrgetter("data")
_SUBJECT_SEQ = operator.attrgetter("subject", "seq")
_wire_decode = msgspec.json.Decoder(_Wire).decode
_tick_decode = msgspec.json.Decoder(Tick).decode
DECODE_ERROR = "DECODE_ERROR"
SCHEMA_MISMATCH = "SCHEMA_MISMATCH"


def _plain(d: Decimal) -> str:
    return format(d, "f")


def _to_wire(t: Tick) -> _Wire:
    """A canonical tick that fits, as wire text (for records only the canonical decoder takes)."""
    if isinstance(t, TradeTick):
        return _WireTrade(
            t.instrument_id,
            _plain(t.price),
            _plain(t.size),
            t.aggressor,
            t.trade_id,
            t.ts_event,
            t.ts_recv,
        )
    if isinstance(t, Quote):
        return _WireQuote(
            t.instrument_id,
            _plain(t.bid_price),
            _plain(t.bid_size),
            _plain(t.ask_price),
            _plain(t.ask_size),
            t.update_id,
            t.ts_event,
            t.ts_recv,
        )
    return _WireBook(
        t.instrument_id,
        [(_plain(lv.price), _plain(lv.size)) for lv in t.bids],
        [(_plain(lv.price), _plain(lv.size)) for lv in t.asks],
        t.first_update_id,
        t.last_update_id,
        t.is_snapshot,
        t.ts_event,
        t.ts_recv,
    )


class DecodedBatch:
    """What :func:`decode_ticks` made of a batch: checked chunks, dead letters, counts.

    ``counts`` holds ``(instrument, in)`` and ``(instrument, dead_lettered)`` for the
    whole batch; ``reasons`` one code per dead letter.
    """

    __slots__ = ("chunks", "counts", "dead", "reasons")

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.dead: list[DeadLetter] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.reasons: list[str] = []

    def refuse(self, msg: Message, reason: str, detail: str, instrument: str | None) -> None:
        self.dead.append(
            DeadLetter(STAGE, reason, detail, msg.data, msg.subject, instrument, msg.ts_recv)
        )
        self.counts[(instrument or UNKNOWN_INSTRUMENT, IN)] += 1
        self.counts[(instrument or UNKNOWN_INSTRUMENT, DEAD_LETTERED)] += 1
        self.reasons.append(reason)


def _mark(bad: dict[int, tuple[str, str]], row: int, reason: str, detail: str) -> None:
    """The first problem of a row names it, except that an undecodable value wins.

    (The canonical decoder refuses a bad decimal string before any fit is checked.)
    """
    old = bad.get(row)
    if old is None or (reason == DECODE_ERROR and old[0] != DECODE_ERROR):
        bad[row] = (reason, detail)


def _dec_column(
    name: str, texts: Sequence[str], rows: Sequence[int] | None, bad: dict[int, tuple[str, str]]
) -> pa.Array:
    """Exact decimal128(38, 18) from decimal text; misfits are marked and left null.

    ``rows`` maps a value to its record (None: one value per record).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    dec = _dec_type()
    try:
        return pc.cast(pa.array(texts, pa.string()), dec)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # at least one value does not parse or fit: find which, the canonical way
    values: list[Decimal | None] = []
    for j, text in enumerate(texts):
        row = j if rows is None else rows[j]
        try:
            d = Decimal(text)
        except (decimal.InvalidOperation, ValueError, TypeError):
            _mark(bad, row, DECODE_ERROR, f"{name}: invalid decimal {text!r}")
            values.append(None)
            continue
        why = decimal_misfit(name, d)
        if why is None:  # "1_000", " 1", 41 digits of trailing zeros: fine for Decimal
            try:
                values.append(d.quantize(_FIT_QUANTUM, context=_FIT_CONTEXT))
                continue
            except (decimal.Inexact, decimal.InvalidOperation):
                why = f"{name}={d} does not fit decimal({DEC_PRECISION}, {DEC_SCALE})"
        _mark(bad, row, SCHEMA_MISMATCH, why)
        values.append(None)
    return pa.array(values, dec)


def _levels_column(
    side: str, levels: Sequence[list[tuple[str, str]]], bad: dict[int, tuple[str, str]]
) -> pa.Array:
    import pyarrow as pa

    offsets = [0]
    owner: list[int] = []
    prices: list[str] = []
    sizes: list[str] = []
    for row, lv in enumerate(levels):
        for p, q in lv:
            prices.append(p)
            sizes.append(q)
        offsets.append(len(prices))
        owner.extend([row] * len(lv))
    dec = _dec_type()
    struct = pa.StructArray.from_arrays(
        [
            _dec_column(f"{side}.price", prices, owner, bad),
            _dec_column(f"{side}.size", sizes, owner, bad),
        ],
        fields=[pa.field("price", dec), pa.field("size", dec)],
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct)


#: Per kind, the wire fields in schema order after ``date``; read in one C-level pass.
_FIELDS: dict[str, tuple[str, ...]] = {
    "trade": (
        "instrument_id",
        "ts_event",
        "ts_recv",
        "price",
        "size",
        "aggressor",
        "trade_id",
    ),
    "quote": (
        "instrument_id",
        "ts_event",
        "ts_recv",
        "bid_price",
        "bid_size",
        "ask_price",
        "ask_size",
        "update_id",
    ),
    "book_delta": (
        "instrument_id",
        "ts_event",
        "ts_recv",
        "bids",
        "asks",
        "first_update_id",
        "last_update_id",
        "is_snapshot",
    ),
}
_GETTERS = {kind: operator.attrgetter(*names) for kind, names in _FIELDS.items()}


def _wire_columns(
    kind: str, ws: Sequence[Any], bad: dict[int, tuple[str, str]]
) -> dict[str, pa.Array]:
    """The columns of one kind up to ``seq`` (exclusive), decimals checked into ``bad``.

    The fields are transposed with ``attrgetter`` and ``zip``: C loops, not one Python
    comprehension per column.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = _FIELDS[kind]
    values = dict(zip(names, zip(*map(_GETTERS[kind], ws), strict=True), strict=True))
    schema = arrow_schema(kind)
    cols: dict[str, pa.Array] = {}
    ts_event = pa.array(values["ts_event"], pa.int64())
    cols["date"] = pc.divide(ts_event, NANOS_PER_DAY).cast(pa.int32()).cast(pa.date32())
    for name in names:
        if name == "ts_event":
            cols[name] = ts_event
        elif name in ("bids", "asks"):
            cols[name] = _levels_column(name, values[name], bad)
        elif schema.field(name).type == _dec_type():
            cols[name] = _dec_column(name, values[name], None, bad)
        else:
            cols[name] = pa.array(values[name], schema.field(name).type)
    return cols


class TickRules:
    """The ``ticks`` quality rules (:mod:`operators.quality.rules`) over arrow columns.

    The same reason codes and the same first-failing-check order as the per-record rule,
    evaluated for a whole chunk in a few arrow kernels: a clean chunk costs a handful of
    vectorised comparisons, and only failing rows are looked at one by one.

    Order checks (ids going backwards) are left out on purpose: the normalize sequencer
    owns order and reports late ticks on ``md.gaps.*`` while passing them on as real
    data, and a replay after a crash is the writer's de-duplication to handle.
    ``instruments`` None: every instrument is known (the sink has no reference data).
    """

    def __init__(
        self, config: RulesConfig | None = None, instruments: Collection[str] | None = None
    ) -> None:
        from operators.quality.rules import RulesConfig

        config = config or RulesConfig()
        self.skew = config.max_clock_skew_ns
        self.allow_locked = config.allow_locked_quotes
        self.instruments: pa.Array | None = None
        if instruments is not None:
            import pyarrow as pa

            self.instruments = pa.array(sorted(instruments), pa.string())

    def judge(self, kind: str, cols: Mapping[str, pa.Array]) -> dict[int, str]:
        """``{row: reason}`` for the rows that fail; empty when all pass."""
        if self._clean(kind, cols):
            return {}
        return self._failing(kind, cols)

    def _clean(self, kind: str, cols: Mapping[str, Any]) -> bool:
        """Whether every row passes, from a few column minima and maxima.

        A chunk is a source batch (~1,000 rows), so the cost of a check is mostly its
        per-call overhead: aggregates need about a third of the calls of row masks.
        Nulls (values that did not fit, already refused) are skipped by the aggregates.
        """
        import pyarrow.compute as pc

        def low(name: str) -> Any:
            return pc.min(cols[name]).as_py()

        if self.instruments is not None:
            known = set(self.instruments.to_pylist())
            if not set(pc.unique(cols["instrument_id"]).to_pylist()) <= known:
                return False
        lows = [low("ts_event"), low("ts_recv")]
        if any(v is not None and v <= 0 for v in lows):
            return False
        ahead = pc.max(pc.subtract(cols["ts_event"], cols["ts_recv"])).as_py()
        if ahead is not None and ahead > self.skew:
            return False
        if kind == "trade":
            mins = [low("price"), low("size")]
            if any(v is not None and v <= 0 for v in mins):
                return False
            return pc.min(pc.utf8_length(cols["trade_id"])).as_py() != 0
        if kind == "quote":
            if any(v is not None and v <= 0 for v in (low("bid_price"), low("ask_price"))):
                return False
            if any(v is not None and v < 0 for v in (low("bid_size"), low("ask_size"))):
                return False
            op = pc.greater if self.allow_locked else pc.greater_equal
            if pc.any(op(cols["bid_price"], cols["ask_price"])).as_py():
                return False
            first_id = low("update_id")
            return first_id is None or first_id >= 0
        first = low("first_update_id")
        if first is not None and first < 0:
            return False
        if pc.any(pc.less(cols["last_update_id"], cols["first_update_id"])).as_py():
            return False
        for side in ("bids", "asks"):
            flat = cols[side].flatten()
            p, q = pc.min(flat.field("price")).as_py(), pc.min(flat.field("size")).as_py()
            if (p is not None and p <= 0) or (q is not None and q < 0):
                return False
        return True

    def _failing(self, kind: str, cols: Mapping[str, pa.Array]) -> dict[int, str]:
        """Row by row reasons, from one mask per check (only when a chunk is not clean)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from operators.quality.rules import Reason

        zero = pa.scalar(0, _dec_type())
        checks: list[tuple[str, Any]] = []
        if self.instruments is not None:
            checks.append(
                (
                    Reason.UNKNOWN_INSTRUMENT,
                    pc.invert(pc.is_in(cols["instrument_id"], value_set=self.instruments)),
                )
            )
        ts_event, ts_recv = cols["ts_event"], cols["ts_recv"]
        stamps = [
            (
                Reason.INVALID_TIMESTAMP,
                pc.or_(pc.less_equal(ts_event, 0), pc.less_equal(ts_recv, 0)),
            ),
            (Reason.TIMESTAMP_IN_FUTURE, pc.greater(pc.subtract(ts_event, ts_recv), self.skew)),
        ]
        if kind == "trade":
            checks += [
                (Reason.INVALID_PRICE, pc.less_equal(cols["price"], zero)),
                (Reason.INVALID_QUANTITY, pc.less_equal(cols["size"], zero)),
                *stamps,
                (Reason.MISSING_ID, pc.equal(pc.utf8_length(cols["trade_id"]), 0)),
            ]
        elif kind == "quote":
            bid, ask = cols["bid_price"], cols["ask_price"]
            checks += [
                (
                    Reason.INVALID_PRICE,
                    pc.or_(pc.less_equal(bid, zero), pc.less_equal(ask, zero)),
                ),
                (
                    Reason.INVALID_QUANTITY,
                    pc.or_(pc.less(cols["bid_size"], zero), pc.less(cols["ask_size"], zero)),
                ),
                *stamps,
                (Reason.CROSSED_QUOTE, pc.greater(bid, ask)),
            ]
            if not self.allow_locked:
                checks.append((Reason.LOCKED_QUOTE, pc.equal(bid, ask)))
            checks.append((Reason.INVALID_SEQUENCE, pc.less(cols["update_id"], 0)))
        else:
            first, last = cols["first_update_id"], cols["last_update_id"]
            checks += [
                *stamps,
                (Reason.INVALID_SEQUENCE, pc.or_(pc.less(first, 0), pc.less(last, first))),
            ]
        masks = [(reason, m.fill_null(False)) for reason, m in checks]
        failing: dict[int, str] = {}
        for reason, mask in masks:
            if not pc.any(mask).as_py():
                continue
            for row in np.flatnonzero(mask.to_numpy(zero_copy_only=False)).tolist():
                # checks are in the rule's order, so the first one to fail names the row
                failing.setdefault(row, reason)
        if kind == "book_delta":
            # bids, then asks, level by level: the first bad level names the row
            for side in ("bids", "asks"):
                levels: Any = cols[side]
                flat = levels.flatten()
                bad_level = pc.or_(
                    pc.less_equal(flat.field("price"), zero), pc.less(flat.field("size"), zero)
                ).fill_null(False)
                if not pc.any(bad_level).as_py():
                    continue
                parents = levels.value_parent_indices().to_numpy()
                low = pc.less_equal(flat.field("price"), zero).fill_null(False)
                low_np = low.to_numpy(zero_copy_only=False)
                for j in np.flatnonzero(bad_level.to_numpy(zero_copy_only=False)).tolist():
                    failing.setdefault(
                        int(parents[j]),
                        Reason.INVALID_PRICE if low_np[j] else Reason.INVALID_QUANTITY,
                    )
        return failing


def decode_ticks(batch: Sequence[Message], rules: TickRules | None = None) -> DecodedBatch:
    """Decode, fit-check and (with ``rules``) quality-check a batch of tick messages.

    Every message ends up in exactly one chunk row or one dead letter; ``counts`` says so
    per instrument. Never raises on bad input. Rows keep the batch order within a kind.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    result = DecodedBatch()
    if not batch:
        return result
    try:  # the common case, a clean batch, in one C-level pass
        ws: list[Any] = list(map(_wire_decode, map(_DATA, batch)))
        pos: list[int] | None = None
    except (msgspec.DecodeError, msgspec.ValidationError):
        ws, pos = _decode_slowly(batch, result)
        if not ws:
            return result
    meta = list(map(_SUBJECT_SEQ, batch if pos is None else [batch[i] for i in pos]))
    codes = np.fromiter(map(_KIND_CODE.__getitem__, map(type, ws)), np.int8, len(ws))
    for code, kind in enumerate(_CODE_KIND):
        rows = np.flatnonzero(codes == code)
        if not len(rows):
            continue
        if len(rows) == len(ws):
            kws, kmeta = ws, meta
        else:
            pick = operator.itemgetter(*rows.tolist())
            kws = [pick(ws)] if len(rows) == 1 else list(pick(ws))
            kmeta = [pick(meta)] if len(rows) == 1 else list(pick(meta))
        bad: dict[int, tuple[str, str]] = {}
        cols = _wire_columns(kind, kws, bad)
        origins, seqs = zip(*kmeta, strict=True)
        cols["origin"] = pa.array(origins, pa.string())
        cols["seq"] = pa.array(seqs, pa.int64())
        if rules is not None:
            for row, reason in rules.judge(kind, cols).items():
                if row not in bad:  # a record that does not fit is refused for that first
                    bad[row] = (reason, f"quality rule ticks: {reason}")
        table = pa.Table.from_arrays(list(cols.values()), schema=arrow_schema(kind))
        if bad:
            keep = np.ones(len(kws), dtype=bool)
            for row, (reason, detail) in sorted(bad.items()):
                keep[row] = False
                at = int(rows[row]) if pos is None else pos[int(rows[row])]
                # An undecodable value leaves no instrument, as the canonical decoder would.
                inst = None if reason == DECODE_ERROR else kws[row].instrument_id
                result.refuse(batch[at], reason, detail, inst)
            table = table.filter(pa.array(keep))
        for entry in pc.value_counts(table.column("instrument_id")).to_pylist():
            result.counts[(entry["values"], IN)] += entry["counts"]
        if table.num_rows:
            result.chunks.append((kind, table))
    return result


def _decode_slowly(batch: Sequence[Message], result: DecodedBatch) -> tuple[list[Any], list[int]]:
    """Message by message: what the wire types refuse is judged by the canonical decoder."""
    ws: list[Any] = []
    pos: list[int] = []
    for i, msg in enumerate(batch):
        try:
            w: Any = _wire_decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            try:
                tick = _tick_decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                result.refuse(msg, DECODE_ERROR, str(exc), None)
                continue
            why = tick_misfit(tick)
            if why is not None:
                result.refuse(msg, SCHEMA_MISMATCH, why, tick.instrument_id)
                continue
            w = _to_wire(tick)
        ws.append(w)
        pos.append(i)
    return ws, pos


def stamped_chunks(items: Sequence[Stamped]) -> list[Chunk]:
    """Checked :class:`Stamped` ticks as chunks, one per kind, in order within a kind."""
    by_kind: dict[str, list[Stamped]] = {}
    for it in items:
        by_kind.setdefault(_KIND_OF[type(it.tick)], []).append(it)
    return [(kind, _build_table(kind, rows)) for kind, rows in by_kind.items()]


def _hint(exc: BaseException) -> str:
    text = str(exc).lower()
    if "no space" in text or "disk full" in text or "quota" in text:
        return "free disk space on the volume holding the Delta root, then restart the flow"
    if "permission" in text or "denied" in text or "read-only" in text or "not a directory" in text:
        return "check that the Delta root is a writable directory for this user, then restart"
    return "check the Delta root path/URI and storage options, then restart the flow"


class TickTableWriter:
    """Writes batches of :class:`Stamped` ticks to the three tick tables.

    Engine-agnostic: the Bytewax sink and the benchmark both drive it. ``sleep`` is
    injected for the commit retry backoff.
    """

    def __init__(
        self,
        config: DeltaTicksConfig,
        *,
        storage_options: Mapping[str, str] | None = None,
        accounting: Accounting | None = None,
        sleep: Callable[[float], None] = time.sleep,
        kinds: Iterable[str] = tuple(KINDS),
    ) -> None:
        self.config = config
        self.storage_options = (
            dict(storage_options)
            if storage_options is not None
            else storage_options_from_env(config.root)
        )
        self.accounting = accounting
        self._sleep = sleep
        self._tables: dict[str, DeltaTable] = {}
        #: (kind, origin) -> committed version (highest seq written), loaded lazily.
        self._versions: dict[tuple[str, str], int | None] = {}
        self.commits: Counter[str] = Counter()
        for kind in kinds:
            self._ensure_table(kind)

    # -- tables -------------------------------------------------------------
    def _ensure_table(self, kind: str) -> DeltaTable:
        table = self._tables.get(kind)
        if table is not None:
            return table
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri = table_uri(self.config.root, kind)
        if "://" not in uri:
            try:
                os.makedirs(uri, exist_ok=True)
            except OSError as exc:
                raise DeltaSinkError(
                    f"{STAGE}: create table directory {uri!r} failed: {exc}; hint: {_hint(exc)}"
                ) from exc
        last: BaseException | None = None
        for attempt in range(self.config.commit_retries + 1):
            try:
                try:
                    table = DeltaTable(uri, storage_options=self.storage_options)
                except TableNotFoundError:
                    table = DeltaTable.create(
                        uri,
                        schema=arrow_schema(kind),
                        partition_by=["date"],
                        mode="ignore",
                        name=f"ticks_{KINDS[kind]}",
                        storage_options=self.storage_options,
                    )
                self._tables[kind] = table
                return table
            except Exception as exc:  # concurrent creators race on version 0
                last = exc
                if isinstance(exc, OSError | PermissionError):
                    break
                self._sleep(self.config.retry_backoff_ms / 1000 * (attempt + 1))
        assert last is not None
        raise DeltaSinkError(
            f"{STAGE}: open/create table {uri!r} failed: {last}; hint: {_hint(last)}"
        ) from last

    def app_id(self, origin: str) -> str:
        return f"{self.config.writer_id}/{origin}"

    def committed_version(self, kind: str, origin: str) -> int | None:
        key = (kind, origin)
        if key not in self._versions:
            self._versions[key] = self._ensure_table(kind).transaction_version(self.app_id(origin))
        return self._versions[key]

    # -- writing ------------------------------------------------------------
    def write(self, items: Sequence[Stamped]) -> WriteResult:
        """Commit a batch: one atomic Delta commit per tick kind present."""
        return self.write_tables(stamped_chunks(items))

    def write_tables(self, chunks: Iterable[Chunk]) -> WriteResult:
        """Commit checked chunks (from :func:`decode_ticks`): one atomic commit per kind.

        A row is a duplicate when its ``seq`` is at or below the table's committed version
        for its origin, or at or below an earlier row of the same origin in this batch.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        by_kind: dict[str, list[pa.Table]] = {}
        for kind, table in chunks:
            if table.num_rows:
                by_kind.setdefault(kind, []).append(table)
        written: dict[str, int] = {}
        dups = 0
        commits = 0
        counts: Counter[tuple[str, str]] = Counter()
        for kind, tables in by_kind.items():
            data = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            keep, high = self._fresh(kind, data)
            if keep is not None:
                mask = pa.array(keep, pa.bool_())
                dropped = data.filter(pc.invert(mask))
                dups += dropped.num_rows
                _count_by_instrument(counts, dropped, DUPLICATE)
                data = data.filter(mask)
            if not data.num_rows:
                continue
            self._commit(kind, data, high)
            commits += 1
            written[kind] = data.num_rows
            _count_by_instrument(counts, data, OUT)
        if self.accounting is not None:
            self.accounting.add(STAGE, counts)
        return WriteResult(written=written, duplicates=dups, commits=commits)

    def _fresh(self, kind: str, data: pa.Table) -> tuple[Any, dict[str, int]]:
        """Which rows are new (None: all of them) and the new version per origin.

        Vectorised per origin: a row is new when its seq is above both the committed
        version and every earlier seq of its origin in the batch (a running maximum).
        Rows without a seq cannot be de-duplicated and are always new.
        """
        import numpy as np
        import pyarrow.compute as pc

        enc: Any = pc.dictionary_encode(data.column("origin").combine_chunks())
        origins: list[str] = enc.dictionary.to_pylist()
        idx = enc.indices.to_numpy(zero_copy_only=False)
        seq_col = data.column("seq").combine_chunks()
        has_seq = seq_col.is_valid().to_numpy(zero_copy_only=False)
        seqs = seq_col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        keep = np.ones(len(seqs), dtype=bool)
        high: dict[str, int] = {}
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        bounds = [0, *(np.flatnonzero(np.diff(sorted_idx)) + 1).tolist(), len(order)]
        for lo, hi in itertools.pairwise(bounds):
            if lo == hi:
                continue
            rows = order[lo:hi]
            rows = rows[has_seq[rows]]
            if not len(rows):
                continue
            origin = origins[int(sorted_idx[lo])]
            done = self.committed_version(kind, origin)
            floor = -1 if done is None else max(done, -1)
            s = seqs[rows]
            before = np.maximum(np.maximum.accumulate(s), floor)
            prior = np.concatenate(([floor], before[:-1]))
            new = s > prior
            if not new.all():
                keep[rows[~new]] = False
            if new.any():
                high[origin] = int(s.max())
        return (None if keep.all() else keep), high

    def _commit(self, kind: str, data: pa.Table, high: dict[str, int]) -> None:
        from deltalake import CommitProperties, Transaction, write_deltalake
        from deltalake.exceptions import CommitFailedError

        table = self._ensure_table(kind)
        props = CommitProperties(
            app_transactions=[Transaction(self.app_id(o), v) for o, v in sorted(high.items())]
        )
        uri = table_uri(self.config.root, kind)
        for attempt in range(self.config.commit_retries + 1):
            try:
                write_deltalake(table, data, mode="append", commit_properties=props)
                break
            except CommitFailedError as exc:
                if attempt >= self.config.commit_retries:
                    raise DeltaSinkError(
                        f"{STAGE}: commit to {uri!r} failed after {attempt + 1} attempts: "
                        f"{exc}; hint: another writer may be using writer_id "
                        f"{self.config.writer_id!r}; give each writer its own id"
                    ) from exc
                self._sleep(self.config.retry_backoff_ms / 1000 * (attempt + 1))
                table.update_incremental()
            except Exception as exc:
                raise DeltaSinkError(
                    f"{STAGE}: write {len(data)} rows to {uri!r} failed: {exc}; hint: {_hint(exc)}"
                ) from exc
        for origin, v in high.items():
            self._versions[(kind, origin)] = v
        self.commits[kind] += 1
        n = self.commits[kind]
        if self.config.compact_every and n % self.config.compact_every == 0:
            table.optimize.compact()
        if self.config.vacuum_every and n % self.config.vacuum_every == 0:
            table.vacuum(
                retention_hours=self.config.vacuum_retention_hours,
                dry_run=False,
                enforce_retention_duration=True,
            )


def _count_by_instrument(counts: Counter[tuple[str, str]], table: pa.Table, outcome: str) -> None:
    import pyarrow.compute as pc

    for entry in pc.value_counts(table.column("instrument_id")).to_pylist():
        counts[(entry["values"], outcome)] += entry["counts"]


def _is_chunk(it: Any) -> bool:
    return isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], str) and it[0] in KINDS


class _TickSinkPartition(StatelessSinkPartition[Any]):
    def __init__(self, writer: TickTableWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[Any]) -> None:
        # Chunks ((kind, table)), ``op.collect``'s (key, [...]), lists, bare Stamped, in
        # any mix. Order matters: the de-duplication takes a seq at or below an earlier
        # one of its origin for a replay, so runs of Stamped become chunks in place.
        chunks: list[Chunk] = []
        run: list[Stamped] = []

        def take(it: Any) -> None:
            if _is_chunk(it):
                if run:
                    chunks.extend(stamped_chunks(run))
                    run.clear()
                chunks.append(it)
            elif isinstance(it, tuple):
                for x in it[1]:
                    take(x)
            elif isinstance(it, list):
                for x in it:
                    take(x)
            else:
                run.append(it)

        for it in items:
            take(it)
        if run:
            chunks.extend(stamped_chunks(run))
        if chunks:  # one commit per kind for the whole batch
            self.writer.write_tables(chunks)


class DeltaTickSink(DynamicSink[Any]):
    """Bytewax sink over :class:`TickTableWriter`, one writer per worker.

    App ids are ``<writer_id>/<origin>``; the flow routes each origin (subject) to one
    worker by key, so two workers never share an app id. Items are :class:`Stamped`,
    lists of them, or ``(key, list)`` pairs from ``op.collect``.
    ``write_batch`` commits before returning (see module doc).
    """

    def __init__(
        self,
        config: DeltaTicksConfig,
        *,
        storage_options: Mapping[str, str] | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        self.config = config
        self.storage_options = storage_options
        self.accounting = accounting
        self.writers: list[TickTableWriter] = []

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        # Origins (subjects) are routed to workers by key, so a subject always meets the
        # same worker; the app id does not need the worker index and survives rescaling.
        writer = TickTableWriter(
            self.config, storage_options=self.storage_options, accounting=self.accounting
        )
        self.writers.append(writer)
        return _TickSinkPartition(writer)
