"""Alternative data (``alt.raw.<source>``) into ``<root>/alt/<source>`` Delta tables.

Each record is a JSON object validated against its source's declared Struct
(:data:`schemas.alt.ALT_SOURCES`). Declared fields have fixed column types (``Decimal``
as ``decimal(38, 18)``, ints as int64, floats as float64). A field that is not declared
is a *new optional field*: its type is inferred from the JSON value (bool, int64,
float64 or string), and the table schema evolves with ``schema_mode="merge"`` to a new
nullable column. Dead letters (never a crash):

- ``DECODE_ERROR``: not JSON, or not a JSON object;
- ``INVALID_RECORD``: a declared field is missing or has the wrong type;
- ``TYPE_CONFLICT``: an undeclared field whose type differs from its existing column;
- ``UNSUPPORTED_FIELD``: an undeclared nested value (list/object) or a number that does
  not fit its column.

Tables are partitioned by the UTC ``date`` of the source's time field, and writes are
idempotent by the same application-transaction scheme as :mod:`sinks.delta`.
"""

from __future__ import annotations

import os
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.alt import ALT_SOURCES, AltSource
from schemas.canonical import DeadLetter
from sinks.delta import (
    NANOS_PER_DAY,
    DeltaSinkError,
    _dec_type,
    _hint,
    decimal_misfit,
    storage_options_from_env,
)
from trade2026.accounting import DEAD_LETTERED, DUPLICATE, IN, OUT, UNKNOWN_INSTRUMENT, Accounting

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

__all__ = [
    "STAGE",
    "AltConfig",
    "AltDeltaSink",
    "AltRecord",
    "AltTableWriter",
    "alt_table_uri",
    "declared_schema",
]

STAGE = "alt_sink"
_I64 = (-(2**63), 2**63 - 1)


class AltConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    root: str = "var/lake"
    writer_id: str = "alt-sink"
    batch_rows: int = 10_000
    batch_ms: int = 1_000
    compact_every: int = 0
    commit_retries: int = 5
    retry_backoff_ms: int = 50


class AltRecord(msgspec.Struct, frozen=True, gc=False):
    """A validated record ready to write: its row, and where it came from."""

    source: str
    origin: str
    seq: int | None
    row: dict[str, Any]


def alt_table_uri(root: str, source: str) -> str:
    return f"{root.rstrip('/')}/alt/{source}"


def _arrow_type(hint: Any) -> tuple[pa.DataType, bool]:
    """Arrow type and nullability for a declared field's annotation."""
    import pyarrow as pa

    nullable = False
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _arrow_type(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner, _ = _arrow_type(args[0])
        return inner, True
    if origin is list:
        inner, _ = _arrow_type(typing.get_args(hint)[0])
        return pa.list_(inner), nullable
    simple: dict[Any, pa.DataType] = {
        Decimal: _dec_type(),
        int: pa.int64(),
        float: pa.float64(),
        str: pa.string(),
        bool: pa.bool_(),
    }
    if hint in simple:
        return simple[hint], nullable
    raise TypeError(f"{STAGE}: unsupported declared type {hint!r}; hint: use a simple type")


def declared_schema(spec: AltSource) -> pa.Schema:
    import pyarrow as pa

    hints = typing.get_type_hints(spec.record_type, include_extras=True)
    fields = [pa.field("date", pa.date32(), nullable=False)]
    for name in (f.name for f in msgspec.structs.fields(spec.record_type)):
        typ, nullable = _arrow_type(hints[name])
        fields.append(pa.field(name, typ, nullable=nullable))
    fields += [pa.field("origin", pa.string(), nullable=False), pa.field("seq", pa.int64())]
    return pa.schema(fields)


def _infer(value: Any) -> pa.DataType | None:
    import pyarrow as pa

    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str):
        return pa.string()
    return None


class AltTableWriter:
    """Validates and writes one alternative-data source's records."""

    def __init__(
        self,
        config: AltConfig,
        spec: AltSource,
        *,
        storage_options: Mapping[str, str] | None = None,
        accounting: Accounting | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.spec = spec
        self.uri = alt_table_uri(config.root, spec.name)
        self.storage_options = (
            dict(storage_options)
            if storage_options is not None
            else storage_options_from_env(config.root)
        )
        self.accounting = accounting
        self._sleep = sleep
        self._declared = {f.name for f in msgspec.structs.fields(spec.record_type)}
        self._decoder = msgspec.json.Decoder()
        self._table: DeltaTable | None = None
        self._versions: dict[str, int | None] = {}
        self.commits = 0
        self.schema = declared_schema(spec)
        self._open()

    def _open(self) -> None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            if "://" not in self.uri:
                os.makedirs(self.uri, exist_ok=True)
            try:
                self._table = DeltaTable(self.uri, storage_options=self.storage_options)
            except TableNotFoundError:
                self._table = DeltaTable.create(
                    self.uri,
                    schema=self.schema,
                    partition_by=["date"],
                    mode="ignore",
                    name=f"alt_{self.spec.name}",
                    storage_options=self.storage_options,
                )
        except Exception as exc:
            raise DeltaSinkError(
                f"{STAGE}: open/create table {self.uri!r} failed: {exc}; hint: {_hint(exc)}"
            ) from exc
        import pyarrow as pa

        self.schema = pa.schema(self._table.schema().to_arrow())

    # -- validation ---------------------------------------------------------
    def check(
        self, data: bytes, *, origin: str, seq: int | None = None, ts_recv: int = 0
    ) -> AltRecord | DeadLetter:
        """Validate one raw record; bad input becomes a DeadLetter, never an exception."""

        def dead(reason: str, detail: str) -> DeadLetter:
            if self.accounting is not None:
                self.accounting.add(
                    STAGE,
                    {(UNKNOWN_INSTRUMENT, IN): 1, (UNKNOWN_INSTRUMENT, DEAD_LETTERED): 1},
                )
                self.accounting.add_reasons(STAGE, [reason])
            return DeadLetter(STAGE, reason, detail, data, origin, None, ts_recv)

        try:
            obj = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            return dead("DECODE_ERROR", str(exc))
        if not isinstance(obj, dict):
            return dead("DECODE_ERROR", f"expected a JSON object, got {type(obj).__name__}")
        try:
            rec: Any = msgspec.convert(obj, self.spec.record_type, strict=False)
        except msgspec.ValidationError as exc:
            return dead("INVALID_RECORD", f"{self.spec.name}: {exc}")
        row: dict[str, Any] = {f: getattr(rec, f) for f in self._declared}
        for name in self._declared:
            v = row[name]
            if isinstance(v, Decimal) and (why := decimal_misfit(name, v)):
                return dead("INVALID_RECORD", why)
            if isinstance(v, int) and not isinstance(v, bool) and not _I64[0] <= v <= _I64[1]:
                return dead("INVALID_RECORD", f"{name}={v} is outside int64")
        for name, v in obj.items():
            if name in self._declared or v is None:
                continue
            if name in ("date", "origin", "seq"):
                return dead("TYPE_CONFLICT", f"field {name!r} is reserved by the table")
            typ = _infer(v)
            if typ is None:
                return dead("UNSUPPORTED_FIELD", f"new field {name!r} is nested ({type(v)})")
            idx = self.schema.get_field_index(name)
            if idx >= 0:
                have = self.schema.field(idx).type
                if have != typ and not (str(have) == "double" and str(typ) == "int64"):
                    return dead(
                        "TYPE_CONFLICT",
                        f"field {name!r} is {typ} here but the table column is {have}",
                    )
            if isinstance(v, int) and not isinstance(v, bool) and not _I64[0] <= v <= _I64[1]:
                return dead("UNSUPPORTED_FIELD", f"{name}={v} is outside int64")
            row[name] = v
        ts = row[self.spec.time_field]
        row["date"] = ts // NANOS_PER_DAY
        row["origin"] = origin
        row["seq"] = seq
        if self.accounting is not None:
            self.accounting.add(STAGE, {(UNKNOWN_INSTRUMENT, IN): 1})
        return AltRecord(self.spec.name, origin, seq, row)

    # -- writing ------------------------------------------------------------
    def _evolved_schema(self, rows: Sequence[dict[str, Any]]) -> pa.Schema | None:
        """The schema with new columns for undeclared fields seen first in this batch."""
        import pyarrow as pa

        new: dict[str, pa.DataType] = {}
        for r in rows:
            for k, v in r.items():
                if self.schema.get_field_index(k) < 0 and v is not None:
                    typ = _infer(v)
                    assert typ is not None
                    prev = new.get(k)
                    if prev is None or (str(prev) == "int64" and str(typ) == "double"):
                        new[k] = typ
        if not new:
            return None
        return pa.schema([*self.schema, *(pa.field(k, t) for k, t in sorted(new.items()))])

    def write(self, records: Sequence[AltRecord]) -> int:
        """Commit the records not yet written; returns rows written."""
        import pyarrow as pa
        from deltalake import CommitProperties, Transaction, write_deltalake
        from deltalake.exceptions import CommitFailedError

        assert self._table is not None
        fresh: list[dict[str, Any]] = []
        high: dict[str, int] = {}
        dups = 0
        for r in records:
            if r.seq is not None:
                if r.origin not in self._versions:
                    self._versions[r.origin] = self._table.transaction_version(
                        f"{self.config.writer_id}/{r.origin}"
                    )
                done = self._versions[r.origin]
                if (done is not None and r.seq <= done) or r.seq <= high.get(r.origin, -1):
                    dups += 1
                    continue
                high[r.origin] = r.seq
            fresh.append(r.row)
        if self.accounting is not None:
            self.accounting.add(
                STAGE,
                {(UNKNOWN_INSTRUMENT, OUT): len(fresh), (UNKNOWN_INSTRUMENT, DUPLICATE): dups},
            )
        if not fresh:
            return 0
        evolved = self._evolved_schema(fresh)
        schema = evolved or self.schema
        cols = {f.name: [r.get(f.name) for r in fresh] for f in schema}
        arrays = []
        for f in schema:
            if f.name == "date":
                arrays.append(pa.array(cols["date"], pa.int32()).cast(pa.date32()))
            else:
                arrays.append(pa.array(cols[f.name], type=f.type))
        data = pa.Table.from_arrays(arrays, schema=schema)
        props = CommitProperties(
            app_transactions=[
                Transaction(f"{self.config.writer_id}/{o}", v) for o, v in sorted(high.items())
            ]
        )
        for attempt in range(self.config.commit_retries + 1):
            try:
                write_deltalake(
                    self._table,
                    data,
                    mode="append",
                    schema_mode="merge" if evolved is not None else None,
                    commit_properties=props,
                )
                break
            except CommitFailedError as exc:
                if attempt >= self.config.commit_retries:
                    raise DeltaSinkError(
                        f"{STAGE}: commit to {self.uri!r} failed: {exc}; hint: give each "
                        "writer its own writer_id"
                    ) from exc
                self._sleep(self.config.retry_backoff_ms / 1000 * (attempt + 1))
                self._table.update_incremental()
            except Exception as exc:
                raise DeltaSinkError(
                    f"{STAGE}: write {len(fresh)} rows to {self.uri!r} failed: {exc}; "
                    f"hint: {_hint(exc)}"
                ) from exc
        if evolved is not None:
            self.schema = evolved
        self._versions.update(high)
        self.commits += 1
        if self.config.compact_every and self.commits % self.config.compact_every == 0:
            self._table.optimize.compact()
        return len(fresh)


class _AltSinkPartition(StatelessSinkPartition[Any]):
    def __init__(self, sink: AltDeltaSink) -> None:
        self.sink = sink
        self.writers: dict[str, AltTableWriter] = {}

    def write_batch(self, items: list[Any]) -> None:
        by_source: dict[str, list[AltRecord]] = {}
        for it in items:
            recs = it[1] if isinstance(it, tuple) else it if isinstance(it, list) else [it]
            for r in recs:
                by_source.setdefault(r.source, []).append(r)
        for source, recs in by_source.items():
            self.sink.writer(source).write(recs)


class AltDeltaSink(DynamicSink[Any]):
    """Bytewax sink: items are AltRecords, lists, or ``(key, list)`` from ``op.collect``."""

    def __init__(
        self,
        config: AltConfig,
        *,
        storage_options: Mapping[str, str] | None = None,
        accounting: Accounting | None = None,
        sources: Mapping[str, AltSource] = ALT_SOURCES,
    ) -> None:
        self.config = config
        self.storage_options = storage_options
        self.accounting = accounting
        self.sources = dict(sources)
        self._writers: dict[str, AltTableWriter] = {}

    def writer(self, source: str) -> AltTableWriter:
        w = self._writers.get(source)
        if w is None:
            w = AltTableWriter(
                self.config,
                self.sources[source],
                storage_options=self.storage_options,
                accounting=self.accounting,
            )
            self._writers[source] = w
        return w

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        return _AltSinkPartition(self)
