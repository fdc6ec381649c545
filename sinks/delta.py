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

Acknowledgement. :meth:`TickTableWriter.write` commits synchronously; the Bytewax sink
calls it inside ``write_batch``, so the epoch (and the source's snapshot of the stream
sequence) only advances after the rows are durable in the table. A failing write
raises :class:`DeltaSinkError` and stops the flow: nothing that was not written is
acknowledged, and the restarted flow replays it.
"""

from __future__ import annotations

import decimal
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.canonical import BookDelta, BookLevel, Quote, Tick, TradeTick
from trade2026.accounting import DUPLICATE, OUT, Accounting

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

__all__ = [
    "DEC_PRECISION",
    "DEC_SCALE",
    "KINDS",
    "DeltaSinkError",
    "DeltaTickSink",
    "DeltaTicksConfig",
    "Stamped",
    "TickTableWriter",
    "WriteResult",
    "arrow_schema",
    "decimal_misfit",
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


def arrow_schema(kind: str) -> pa.Schema:
    """The enforced schema of a tick table (``date`` is the partition column)."""
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
        by_kind: dict[str, list[Stamped]] = {}
        for it in items:
            by_kind.setdefault(_KIND_OF[type(it.tick)], []).append(it)
        written: dict[str, int] = {}
        dups = 0
        commits = 0
        out_counts: Counter[tuple[str, str]] = Counter()
        for kind, rows in by_kind.items():
            fresh: list[Stamped] = []
            high: dict[str, int] = {}
            for r in rows:
                if r.seq is not None:
                    done = self.committed_version(kind, r.origin)
                    if (done is not None and r.seq <= done) or r.seq <= high.get(r.origin, -1):
                        dups += 1
                        out_counts[(r.tick.instrument_id, DUPLICATE)] += 1
                        continue
                    high[r.origin] = r.seq
                fresh.append(r)
            if not fresh:
                continue
            self._commit(kind, _build_table(kind, fresh), high)
            commits += 1
            written[kind] = len(fresh)
            for r in fresh:
                out_counts[(r.tick.instrument_id, OUT)] += 1
        if self.accounting is not None:
            self.accounting.add(STAGE, out_counts)
        return WriteResult(written=written, duplicates=dups, commits=commits)

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


class _TickSinkPartition(StatelessSinkPartition[Any]):
    def __init__(self, writer: TickTableWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[Any]) -> None:
        flat: list[Stamped] = []
        for it in items:
            # Accept what ``op.collect`` emits ((key, [Stamped, ...])) as well as bare items.
            if isinstance(it, tuple):
                flat.extend(it[1])
            elif isinstance(it, list):
                flat.extend(it)
            else:
                flat.append(it)
        if flat:
            self.writer.write(flat)


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
