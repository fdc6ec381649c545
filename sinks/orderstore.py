"""The order path's store: QuestDB when configured, local Delta tables by default.

The order path (order events, fills, positions, P&L, risk decisions, execution
quality) must be persisted even where no QuestDB runs: the embedded demo and the
tests. :class:`DeltaOrderWriter` is the fallback. It implements the same
:class:`~sinks.questdb.RecordWriter` protocol as :class:`~sinks.questdb.QuestDBWriter`
and takes the very same :class:`~sinks.questdb_tables.TableSpec` registry, so a record
type is declared once (columns, designated timestamp, dedup keys) and lands in either
store with the same columns. :func:`order_store_writer` picks the store:
``QUESTDB_URL`` set means QuestDB, otherwise Delta under ``<delta_root>/orders/<table>``.

Schema. Enforced, derived from the spec: ``date`` (UTC day of ``ts``, the only
partition column, as for ticks), ``ts`` (the designated timestamp, int64 ns: Delta
timestamps are microseconds), then one column per spec column: ``decimal128(38, 18)``
for money, ``int64`` for integers and ns times, ``string`` for symbols and ids,
``bool``. Key columns are non-nullable. A record that cannot be stored exactly (a
price with 19 significant decimals) is refused by the spec exactly as QuestDB's writer
refuses it, and becomes a ``DeadLetter``: never rounded.

Idempotency. The order path runs on core NATS (no stream sequence to key Delta
transaction ids on), and a redelivered record must still land once. So each flush is
one ``MERGE`` per table on the spec's dedup keys (plus ``date``, so only the affected
partitions are scanned): rows whose keys exist are skipped, the rest inserted, in one
atomic commit. QuestDB's ``DEDUP UPSERT KEYS`` keep the *last* copy and this keeps the
*first*; for a redelivery both copies are equal, and first-wins lets the merge's own
metrics count the duplicates exactly. A ``MERGE`` costs ~10-20 ms here, so rows are
batched (``batch_rows``) and the order path's rates (hundreds to thousands per second)
stay well inside it.

Failures. A commit conflict (another writer) is retried; any other error (disk full,
permissions) raises :class:`~sinks.delta.DeltaSinkError` from :meth:`flush` with the
rows still pending, so the caller stops rather than acknowledge what is not stored.
"""

from __future__ import annotations

import logging
import os
import time
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from operators.portfolio import AccountPnl
from operators.tca import FillQuality, OrderQuality, TcaWindow
from schemas.canonical import DeadLetter
from schemas.orders import RiskDecision
from sinks.delta import NANOS_PER_DAY, DeltaSinkError, storage_options_from_env
from sinks.delta import _hint as _delta_hint
from sinks.questdb import Backlog, RecordWriter
from sinks.questdb_tables import (
    DECIMAL_PRECISION,
    DECIMAL_SCALE,
    TS_COLUMN,
    ColumnKind,
    RowError,
    TableRegistry,
    TableSpec,
    default_registry,
    spec_from_struct,
)
from trade2026.accounting import DEAD_LETTERED, DUPLICATE, OUT, UNKNOWN_INSTRUMENT

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

__all__ = [
    "EXTRA_TABLES",
    "STAGE",
    "DeltaOrderWriter",
    "OrderStoreConfig",
    "arrow_schema",
    "order_store_registry",
    "order_store_writer",
    "order_table_uri",
]

log = logging.getLogger(__name__)

STAGE = "sink.orderstore"
DATE_COLUMN = "date"

#: Record types beyond the QuestDB module's defaults (orders, order_events, fills,
#: positions): risk decisions, P&L totals and execution quality.
EXTRA_TABLES: tuple[Callable[[], TableSpec], ...] = (
    lambda: spec_from_struct(
        RiskDecision,
        "risk_decisions",
        timestamp="ts_event",
        symbols=("account_id", "reason", "limits_version", "instruments_version"),
        # One decision per command: a client order id can be submitted, replaced and
        # canceled, and each replace/cancel carries its own request id.
        dedup_keys=("account_id", "client_order_id", "action", "request_id"),
    ),
    lambda: spec_from_struct(
        AccountPnl,
        "account_pnl",
        timestamp="ts_event",
        symbols=("account_id",),
        dedup_keys=("account_id",),
    ),
    lambda: spec_from_struct(
        FillQuality,
        "tca_fills",
        timestamp="ts_event",
        symbols=("account_id", "instrument_id"),
        dedup_keys=("instrument_id", "exec_id"),
    ),
    lambda: spec_from_struct(
        OrderQuality,
        "tca_orders",
        timestamp="ts_event",
        symbols=("account_id", "instrument_id"),
        dedup_keys=("order_id",),
    ),
    lambda: spec_from_struct(
        TcaWindow,
        "tca_windows",
        timestamp="window_start",
        symbols=("scope", "key"),
        dedup_keys=("scope", "key"),
    ),
)


def order_store_registry() -> TableRegistry:
    """Every order-path table, for either store (a fresh registry each call)."""
    registry = default_registry()
    for make in EXTRA_TABLES:
        registry.register(make())
    return registry


class OrderStoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Local path or ``s3://bucket/prefix``; tables live under ``<root>/orders/``.
    #: None means :func:`trade2026.flowregistry.delta_root`.
    root: str | None = None
    #: Commit once this many rows are pending (a flush commits whatever is pending).
    batch_rows: int = 5_000
    #: Retries of a commit that conflicted with another writer.
    commit_retries: int = 5
    retry_backoff_ms: int = 50

    def __post_init__(self) -> None:
        if self.batch_rows <= 0:
            raise ValueError("order store config: batch_rows must be > 0")


def order_table_uri(root: str, table: str) -> str:
    return f"{root.rstrip('/')}/orders/{table}"


_ARROW_KIND: dict[ColumnKind, str] = {
    ColumnKind.SYMBOL: "string",
    ColumnKind.VARCHAR: "string",
    ColumnKind.LONG: "int64",
    ColumnKind.BOOLEAN: "bool",
}


def _optional_fields(record_type: type) -> set[str]:
    """Fields annotated ``X | None``: the only nullable columns besides none at all."""
    hints = typing.get_type_hints(record_type, include_extras=True)
    out = set()
    for name, tp in hints.items():
        while typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(
            None
        ) in typing.get_args(tp):
            out.add(name)
    return out


def arrow_schema(spec: TableSpec) -> pa.Schema:
    """The enforced Delta schema of one order-path table (``date`` is the partition)."""
    import pyarrow as pa

    optional = _optional_fields(spec.record_type)
    fields = [
        pa.field(DATE_COLUMN, pa.date32(), nullable=False),
        pa.field(TS_COLUMN, pa.int64(), nullable=False),
    ]
    for col in spec.columns:
        if col.kind is ColumnKind.DECIMAL:
            typ = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
        else:
            typ = pa.type_for_alias(_ARROW_KIND[col.kind])
        fields.append(pa.field(col.name, typ, nullable=col.field in optional))
    return pa.schema(fields)


class DeltaOrderWriter:
    """Order-path records into Delta tables, idempotently; a :class:`RecordWriter`.

    ``write`` validates and buffers (and commits once ``batch_rows`` are pending);
    ``flush`` commits everything pending, one MERGE per table. ``take_counts`` hands
    the caller ``{(table, outcome): n}`` for what was committed (``out``), skipped as
    already stored (``duplicate``) or refused (``dead_lettered``) since the last call.
    ``on_dead_letter`` receives refused records (else they are kept in
    :attr:`dead_letters`). ``clock`` stamps dead letters and outage start (ns).
    """

    def __init__(
        self,
        config: OrderStoreConfig | None = None,
        *,
        tables: TableRegistry | None = None,
        storage_options: Mapping[str, str] | None = None,
        clock: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], None] = time.sleep,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
    ) -> None:
        self.config = config or OrderStoreConfig()
        if self.config.root is None:
            from trade2026.flowregistry import delta_root

            self.root = delta_root()
        else:
            self.root = self.config.root
        self.tables = tables or order_store_registry()
        self.storage_options = (
            dict(storage_options)
            if storage_options is not None
            else storage_options_from_env(self.root)
        )
        self._clock = clock
        self._sleep = sleep
        self._on_dead_letter = on_dead_letter
        self.dead_letters: list[DeadLetter] = []
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._open: dict[str, DeltaTable] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._dead_count = 0
        self._down_since: int | None = None
        self._last_error: str | None = None
        self._closed = False
        self.commits = 0

    # -- RecordWriter ------------------------------------------------------------------------
    def write(self, records: Sequence[Any] | Iterable[Any]) -> None:
        if self._closed:
            raise DeltaSinkError(f"{STAGE} write: writer is closed; hint: make a new writer")
        for rec in records:
            try:
                spec = self.tables.for_record(rec)
                symbols, columns, ts = spec.split(rec, "decimal")
            except RowError as exc:
                self._dead_letter(rec, exc.reason, exc.detail)
                continue
            row: dict[str, Any] = {DATE_COLUMN: ts // NANOS_PER_DAY, TS_COLUMN: ts}
            row.update(symbols)
            row.update(columns)
            self._pending.setdefault(spec.name, []).append(row)
        if self._pending_rows() >= self.config.batch_rows:
            self.flush()

    def flush(self) -> bool:
        """Commit every table's pending rows; raises :class:`DeltaSinkError` on a failure
        that is not a commit conflict (rows stay pending: nothing is lost)."""
        for name in list(self._pending):
            rows = self._pending[name]
            if not rows:
                continue
            try:
                inserted, dups = self._merge(self.tables.by_name(name), rows)
            except DeltaSinkError as exc:
                if self._down_since is None:
                    self._down_since = self._clock()
                self._last_error = str(exc)
                raise
            del self._pending[name]
            self._counts[(name, OUT)] += inserted
            self._counts[(name, DUPLICATE)] += dups
        self._down_since = None
        self._last_error = None
        return True

    def close(self) -> None:
        """Commit what is pending (raising if that fails), then refuse further writes."""
        if self._closed:
            return
        self.flush()
        self._closed = True

    def backlog(self) -> Backlog:
        return Backlog(
            memory_rows=self._pending_rows(),
            dead_lettered=self._dead_count,
            down_since_ns=self._down_since,
            last_error=self._last_error,
        )

    # -- extras ------------------------------------------------------------------------------
    def take_counts(self) -> dict[tuple[str, str], int]:
        """``{(table, outcome): n}`` since the last call (the flow's accounting)."""
        out = dict(self._counts)
        self._counts.clear()
        return out

    def table_uri(self, name: str) -> str:
        return order_table_uri(self.root, name)

    # -- internals ---------------------------------------------------------------------------
    def _pending_rows(self) -> int:
        return sum(len(r) for r in self._pending.values())

    def _table(self, spec: TableSpec) -> DeltaTable:
        table = self._open.get(spec.name)
        if table is not None:
            return table
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        uri = self.table_uri(spec.name)
        schema = arrow_schema(spec)
        try:
            if "://" not in uri:
                os.makedirs(uri, exist_ok=True)
            try:
                table = DeltaTable(uri, storage_options=self.storage_options)
            except TableNotFoundError:
                table = DeltaTable.create(
                    uri,
                    schema=schema,
                    partition_by=[DATE_COLUMN],
                    mode="ignore",
                    name=f"orders_{spec.name}",
                    storage_options=self.storage_options,
                )
        except Exception as exc:
            raise DeltaSinkError(
                f"{STAGE}: open/create table {uri!r} failed: {exc}; hint: {_delta_hint(exc)}"
            ) from exc
        have = [f.name for f in table.schema().fields]
        want = schema.names
        if have != want:
            raise DeltaSinkError(
                f"{STAGE}: table {uri!r} has columns {have}, the {spec.record_type.__name__} "
                f"spec wants {want}; hint: the record type changed: write to a new root or "
                "migrate the table"
            )
        self._open[spec.name] = table
        return table

    def _arrow(self, spec: TableSpec, rows: list[dict[str, Any]]) -> pa.Table:
        import pyarrow as pa

        schema = arrow_schema(spec)
        arrays = []
        for field in schema:
            values = [r.get(field.name) for r in rows]
            if field.name == DATE_COLUMN:
                arrays.append(pa.array(values, pa.int32()).cast(pa.date32()))
            else:
                arrays.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(arrays, schema=schema)

    def _merge(self, spec: TableSpec, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """One atomic MERGE (insert where the keys are absent); (inserted, duplicates)."""
        from deltalake.exceptions import CommitFailedError

        keys = (DATE_COLUMN, *spec.upsert_keys)
        unique: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in rows:
            unique.setdefault(tuple(r.get(k) for k in keys), r)
        in_batch_dups = len(rows) - len(unique)
        table = self._table(spec)
        data = self._arrow(spec, list(unique.values()))
        predicate = " AND ".join(f't."{k}" = s."{k}"' for k in keys)
        uri = self.table_uri(spec.name)
        for attempt in range(self.config.commit_retries + 1):
            try:
                metrics = (
                    table.merge(
                        data,
                        predicate=predicate,
                        source_alias="s",
                        target_alias="t",
                        # Off, so the source's partition values prune the target scan.
                        streamed_exec=False,
                    )
                    .when_not_matched_insert_all()
                    .execute()
                )
                break
            except CommitFailedError as exc:
                if attempt >= self.config.commit_retries:
                    raise DeltaSinkError(
                        f"{STAGE}: merge into {uri!r} failed after {attempt + 1} attempts: "
                        f"{exc}; hint: too many concurrent writers on one table"
                    ) from exc
                self._sleep(self.config.retry_backoff_ms / 1000 * (attempt + 1))
                table.update_incremental()
            except Exception as exc:
                raise DeltaSinkError(
                    f"{STAGE}: merge {len(data)} rows into {uri!r} failed: {exc}; "
                    f"hint: {_delta_hint(exc)}"
                ) from exc
        inserted = int(metrics["num_target_rows_inserted"])
        if inserted:
            self.commits += 1
        return inserted, in_batch_dups + (data.num_rows - inserted)

    def _dead_letter(self, record: Any, reason: str, detail: str) -> None:
        try:
            payload = msgspec.json.encode(record)
        except (TypeError, msgspec.EncodeError):
            payload = repr(record).encode()
        label = UNKNOWN_INSTRUMENT
        if type(record) in self.tables:
            label = self.tables.for_record(record).name
        dl = DeadLetter(
            stage=STAGE,
            reason=reason,
            detail=detail,
            payload=payload,
            instrument_id=getattr(record, "instrument_id", None),
            ts_recv=self._clock(),
        )
        self._dead_count += 1
        self._counts[(label, DEAD_LETTERED)] += 1
        log.error("%s: dead-lettered a %s: %s: %s", STAGE, type(record).__name__, reason, detail)
        if self._on_dead_letter is not None:
            self._on_dead_letter(dl)
        else:
            self.dead_letters.append(dl)


def order_store_writer(
    config: OrderStoreConfig | None = None,
    *,
    env: Mapping[str, str] | None = None,
    worker_index: int = 0,
    clock: Callable[[], int] = time.time_ns,
    on_dead_letter: Callable[[DeadLetter], None] | None = None,
    registry: Any = None,
) -> RecordWriter:
    """QuestDB when ``QUESTDB_URL`` is set (with every order-path table), else Delta.

    ``worker_index`` gives each Bytewax worker its own QuestDB spill directory;
    ``registry`` is a prometheus registry for the QuestDB writer's backlog metrics.
    """
    env = os.environ if env is None else env
    if env.get("QUESTDB_URL"):
        from sinks.questdb import QuestDBConfig, QuestDBWriter

        qcfg = QuestDBConfig.from_env(env)
        qcfg = msgspec.structs.replace(
            qcfg,
            spill=msgspec.structs.replace(
                qcfg.spill, directory=os.path.join(qcfg.spill.directory, f"worker-{worker_index}")
            ),
            name=f"orderstore-{worker_index}",
        )
        return QuestDBWriter(
            qcfg,
            tables=order_store_registry(),
            clock=clock,
            registry=registry,
            on_dead_letter=on_dead_letter,
        )
    return DeltaOrderWriter(config, clock=clock, on_dead_letter=on_dead_letter)
