"""QuestDB table specs: how an order-path record becomes one ILP row, and the DDL behind it.

One :class:`TableSpec` per record type names the table, its designated timestamp,
its ``SYMBOL`` columns and its ``DEDUP UPSERT KEYS``. :func:`spec_from_struct`
derives the columns from a msgspec Struct's annotations, so a new record type
(risk decisions, execution reports from ``schemas/orders.py``) needs only::

    registry.register(spec_from_struct(RiskDecision, "risk_decisions",
        timestamp="ts_event", symbols=("account_id", "instrument_id", "decision"),
        dedup_keys=("decision_id",)))

Money is exact. In ``"decimal"`` mode (the default; QuestDB >= 9.2.0, ILP protocol
v3) a ``Decimal`` travels in the ILP binary DECIMAL form into a ``DECIMAL(38, 18)``
column; a value needing more than 18 fractional or 20 integer digits raises
:class:`RowError` rather than being rounded. In ``"string"`` mode (servers older
than 9.2) it travels as its exact text into a ``VARCHAR`` column. No float anywhere.

Every integer-ns field is also kept as a ``LONG`` column under its own name, so the
exact nanoseconds survive even where the designated ``ts`` column is microseconds
(``TIMESTAMP`` in string mode; ``TIMESTAMP_NS`` in decimal mode).
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

import msgspec

from schemas.canonical import Fill, Order, OrderEvent, Position

__all__ = [
    "DECIMAL_PRECISION",
    "DECIMAL_SCALE",
    "DEFAULT_TABLES",
    "Column",
    "ColumnKind",
    "MoneyEncoding",
    "RowError",
    "TableRegistry",
    "TableSpec",
    "default_registry",
    "spec_from_struct",
]

MoneyEncoding = Literal["decimal", "string"]

#: DECIMAL(38, 18) is QuestDB's DECIMAL128: 20 integer digits and 18 fractional digits.
DECIMAL_PRECISION = 38
DECIMAL_SCALE = 18
_MAX_INT_DIGITS = DECIMAL_PRECISION - DECIMAL_SCALE

#: The designated timestamp column of every table.
TS_COLUMN = "ts"


class RowError(ValueError):
    """A record cannot become a row of its table (the writer dead-letters it)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ColumnKind(enum.StrEnum):
    SYMBOL = "SYMBOL"
    DECIMAL = "DECIMAL"
    LONG = "LONG"
    VARCHAR = "VARCHAR"
    BOOLEAN = "BOOLEAN"


class Column(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One column: its QuestDB ``name``, ``kind`` and the record attribute it reads."""

    name: str
    kind: ColumnKind
    field: str


def _sql_type(kind: ColumnKind, money: MoneyEncoding) -> str:
    if kind is ColumnKind.DECIMAL:
        return f"DECIMAL({DECIMAL_PRECISION}, {DECIMAL_SCALE})" if money == "decimal" else "VARCHAR"
    return kind.value


def _check_decimal(table: str, column: str, value: Decimal) -> Decimal:
    if not value.is_finite():
        raise RowError("DECIMAL_NOT_FINITE", f"{table}.{column}: {value} is not a finite number")
    _sign, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    frac = max(0, -exp)
    int_digits = max(0, len(digits) + exp)
    if frac > DECIMAL_SCALE:
        # Trailing zeros past the scale are harmless: normalise them away, exactly.
        q = value.quantize(Decimal(1).scaleb(-DECIMAL_SCALE))
        if q != value:
            raise RowError(
                "DECIMAL_OUT_OF_RANGE",
                f"{table}.{column}: {value} has more than {DECIMAL_SCALE} fractional digits; "
                "hint: QuestDB DECIMAL(38, 18) would round it, so it was refused",
            )
        value = q
    if int_digits > _MAX_INT_DIGITS:
        raise RowError(
            "DECIMAL_OUT_OF_RANGE",
            f"{table}.{column}: {value} has more than {_MAX_INT_DIGITS} integer digits",
        )
    return value


class TableSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A QuestDB table fed by one record type.

    ``timestamp_field`` is the record's integer-ns attribute that becomes the
    designated ``ts``. ``dedup_keys`` are column names; ``ts`` is always added, as
    QuestDB requires. Dedup keys must be ``SYMBOL``/``LONG``/``VARCHAR`` (QuestDB
    refuses variable-size ``STRING`` keys; ILP strings land in ``VARCHAR`` here).
    """

    name: str
    record_type: type
    timestamp_field: str
    columns: tuple[Column, ...]
    dedup_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        names = {c.name for c in self.columns}
        if TS_COLUMN in names:
            raise ValueError(f"table spec {self.name}: column name {TS_COLUMN!r} is reserved")
        missing = [k for k in self.dedup_keys if k not in names and k != TS_COLUMN]
        if missing:
            raise ValueError(
                f"table spec {self.name}: dedup keys {missing} are not columns; "
                f"hint: pick from {sorted(names)}"
            )

    @property
    def upsert_keys(self) -> tuple[str, ...]:
        return (TS_COLUMN, *(k for k in self.dedup_keys if k != TS_COLUMN))

    def ddl(self, money: MoneyEncoding = "decimal") -> str:
        """``CREATE TABLE IF NOT EXISTS``: WAL, daily partitions, idempotent upserts."""
        ts_type = "TIMESTAMP_NS" if money == "decimal" else "TIMESTAMP"
        cols = [f"{TS_COLUMN} {ts_type}"]
        cols += [f"{c.name} {_sql_type(c.kind, money)}" for c in self.columns]
        return (
            f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)}) "
            f"TIMESTAMP({TS_COLUMN}) PARTITION BY DAY WAL "
            f"DEDUP UPSERT KEYS({', '.join(self.upsert_keys)})"
        )

    def timestamp_of(self, record: Any) -> int:
        return int(getattr(record, self.timestamp_field))

    def split(
        self, record: Any, money: MoneyEncoding = "decimal"
    ) -> tuple[dict[str, str | None], dict[str, Any], int]:
        """``(symbols, columns, ts_ns)`` for ``Buffer.row``; ``None`` values are omitted (NULL)."""
        symbols: dict[str, str | None] = {}
        columns: dict[str, Any] = {}
        for col in self.columns:
            value = getattr(record, col.field)
            if value is None:
                continue
            kind = col.kind
            if kind is ColumnKind.SYMBOL:
                symbols[col.name] = str(value)
            elif kind is ColumnKind.DECIMAL:
                if not isinstance(value, Decimal):
                    raise RowError(
                        "NOT_DECIMAL",
                        f"{self.name}.{col.name}: expected Decimal, got {type(value).__name__}",
                    )
                exact = _check_decimal(self.name, col.name, value)
                columns[col.name] = exact if money == "decimal" else format(exact, "f")
            elif kind is ColumnKind.LONG:
                columns[col.name] = int(value)
            elif kind is ColumnKind.BOOLEAN:
                columns[col.name] = bool(value)
            else:
                columns[col.name] = str(value)
        ts = self.timestamp_of(record)
        if ts < 0:
            raise RowError("BAD_TIMESTAMP", f"{self.name}: {self.timestamp_field}={ts} < 0")
        return symbols, columns, ts

    def add_row(self, buffer: Any, record: Any, money: MoneyEncoding = "decimal") -> None:
        """Append the record's row to a questdb ``Buffer`` (validation first, so a
        refused record leaves the buffer untouched)."""
        from questdb import TimestampNanos

        symbols, columns, ts = self.split(record, money)
        buffer.row(self.name, symbols=symbols, columns=columns, at=TimestampNanos(ts))


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """Strip ``Annotated`` and ``| None``; return the base type and whether it is optional."""
    optional = False
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(tp))
            if len(args) == 1:
                tp = args[0]
                continue
            raise TypeError(f"union {tp} has no single QuestDB column type")
        return tp, optional


def _kind_for(tp: Any) -> ColumnKind:
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return ColumnKind.SYMBOL
        if issubclass(tp, bool):
            return ColumnKind.BOOLEAN
        if issubclass(tp, int):
            return ColumnKind.LONG
        if issubclass(tp, Decimal):
            return ColumnKind.DECIMAL
        if issubclass(tp, str):
            return ColumnKind.VARCHAR
    raise TypeError(f"type {tp!r} has no QuestDB column mapping")


def spec_from_struct(
    record_type: type,
    table: str,
    *,
    timestamp: str,
    symbols: Iterable[str] = (),
    dedup_keys: Sequence[str] = (),
    exclude: Iterable[str] = (),
    kinds: Mapping[str, ColumnKind] | None = None,
) -> TableSpec:
    """Derive a :class:`TableSpec` from a msgspec Struct's field annotations.

    Enums become ``SYMBOL``; names in ``symbols`` are forced to ``SYMBOL`` (low
    cardinality strings such as account and instrument ids); ``Decimal`` becomes
    ``DECIMAL``; ``int`` (including ns timestamps) ``LONG``; ``str`` ``VARCHAR``.
    ``kinds`` overrides individual fields. A field with no mapping (bytes, lists)
    must be listed in ``exclude``.
    """
    if not (isinstance(record_type, type) and issubclass(record_type, msgspec.Struct)):
        raise TypeError(f"spec_from_struct({record_type!r}): not a msgspec Struct type")
    hints = typing.get_type_hints(record_type, include_extras=True)
    sym = set(symbols)
    skip = set(exclude)
    overrides = dict(kinds or {})
    cols: list[Column] = []
    for field in record_type.__struct_fields__:
        if field in skip:
            continue
        if field in overrides:
            kind = overrides[field]
        elif field in sym:
            kind = ColumnKind.SYMBOL
        else:
            base, _ = _unwrap(hints[field])
            try:
                kind = _kind_for(base)
            except TypeError as exc:
                raise TypeError(
                    f"spec for table {table}: field {record_type.__name__}.{field}: {exc}; "
                    "hint: add it to exclude= or kinds="
                ) from None
        cols.append(Column(name=field, kind=kind, field=field))
    unknown = (sym | skip | set(overrides)) - set(record_type.__struct_fields__)
    if unknown:
        raise ValueError(f"spec for table {table}: unknown fields {sorted(unknown)}")
    if timestamp not in record_type.__struct_fields__:
        raise ValueError(f"spec for table {table}: no timestamp field {timestamp!r}")
    return TableSpec(
        name=table,
        record_type=record_type,
        timestamp_field=timestamp,
        columns=tuple(cols),
        dedup_keys=tuple(dedup_keys),
    )


class TableRegistry:
    """Which table each record type goes to; looked up by type and by table name."""

    def __init__(self, specs: Iterable[TableSpec] = ()) -> None:
        self._by_type: dict[type, TableSpec] = {}
        self._by_name: dict[str, TableSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: TableSpec) -> TableSpec:
        if spec.name in self._by_name or spec.record_type in self._by_type:
            raise ValueError(
                f"table registry: {spec.name} / {spec.record_type.__name__} already registered"
            )
        self._by_type[spec.record_type] = spec
        self._by_name[spec.name] = spec
        return spec

    def for_record(self, record: Any) -> TableSpec:
        spec = self._by_type.get(type(record))
        if spec is None:
            raise RowError(
                "NO_TABLE",
                f"no QuestDB table for {type(record).__name__}; "
                "hint: register a TableSpec (spec_from_struct) for it",
            )
        return spec

    def by_name(self, name: str) -> TableSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"table registry: no table {name!r}") from None

    def specs(self) -> list[TableSpec]:
        return list(self._by_name.values())

    def __contains__(self, record_type: object) -> bool:
        return record_type in self._by_type


#: The order path's tables. Risk decisions and execution-quality metrics are added
#: with ``spec_from_struct`` once ``schemas/orders.py`` lands.
DEFAULT_TABLES: tuple[Callable[[], TableSpec], ...] = (
    lambda: spec_from_struct(
        Order,
        "orders",
        timestamp="ts_submit",
        symbols=("account_id", "instrument_id"),
        dedup_keys=("account_id", "client_order_id"),
    ),
    lambda: spec_from_struct(
        OrderEvent,
        "order_events",
        timestamp="ts_event",
        symbols=("account_id", "instrument_id", "event"),
        dedup_keys=("order_id", "seq", "event"),
    ),
    lambda: spec_from_struct(
        Fill,
        "fills",
        timestamp="ts_event",
        symbols=("account_id", "instrument_id", "fee_currency"),
        dedup_keys=("instrument_id", "exec_id"),
    ),
    lambda: spec_from_struct(
        Position,
        "positions",
        timestamp="ts_event",
        symbols=("account_id", "instrument_id"),
        dedup_keys=("account_id", "instrument_id"),
    ),
)


def default_registry() -> TableRegistry:
    """A fresh registry holding the order path's tables (callers may register more)."""
    return TableRegistry(make() for make in DEFAULT_TABLES)
