"""The store flow: the order path's records off NATS into QuestDB, or local Delta tables.

Inputs (what the order-path flows publish; in production read from the ``ORDER_EVENTS``,
``PORTFOLIO`` and ``TCA`` streams, see :func:`production_flow`)::

    orders.events.>   OrderEvent     -> order_events
    fills.>           Fill           -> fills
    positions.>       Position       -> positions
    pnl.>             AccountPnl     -> account_pnl
    risk.decisions.>  RiskDecision   -> risk_decisions
    tca.fills.>       FillQuality    -> tca_fills
    tca.orders.>      OrderQuality   -> tca_orders
    tca.windows.>     TcaWindow      -> tca_windows

Graph::

    messages -> decode by subject + fit check --> dead letters -> dlq.store
                                               \\-> key by table -> collect -> writer

The subject names the record type, so a payload is decoded with that type's decoder
only: a fill published on ``positions.X`` is refused, not stored in the wrong table.
The fit check is the table spec's own (exact decimal(38, 18), ns timestamps), run
before the writer so a record that cannot be stored becomes a dead letter here with
its original bytes, not deep inside a batch. Records are keyed by table, so each table
has one writer (one worker) and the Delta MERGEs never conflict; ``collect`` batches
them (``batch_rows`` or ``batch_ms``) because each commit costs ~10-20 ms.

The writer is :func:`sinks.orderstore.order_store_writer`: QuestDB when
``QUESTDB_URL`` is set, Delta under ``<delta_root>/orders/`` otherwise. Both de-duplicate
on the tables' keys, so a redelivered record is stored once.

Accounting (stage ``store``, labelled by table, ``-`` before the table is known):
in once per message; dead-lettered at decode; out or duplicate once the Delta writer
committed (its MERGE counts skipped rows). QuestDB de-duplicates on the server, where
it cannot be counted: there every accepted record is ``out``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeGuard

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from flows.inputs import merged_input
from operators.portfolio import AccountPnl
from operators.tca import FillQuality, OrderQuality, TcaWindow
from schemas.canonical import DeadLetter, Fill, OrderEvent, Position
from schemas.orders import RiskDecision
from schemas.transport import Message, Outgoing
from sinks.questdb import RecordWriter
from sinks.questdb_tables import RowError, TableRegistry
from trade2026.accounting import DEAD_LETTERED, IN, OUT, UNKNOWN_INSTRUMENT, Accounting
from trade2026.orderclient import dead_letter_out

if TYPE_CHECKING:
    from operators.quality.batch import BatchValidator
    from trade2026.flowregistry import RunContext
    from trade2026.orderclient import SourceGroup

__all__ = [
    "DLQ_SUBJECT",
    "ROUTES",
    "STAGE",
    "SUBJECTS",
    "RecordWriterSink",
    "StoreFlowConfig",
    "build_flow",
    "build_store",
    "production_flow",
]

log = logging.getLogger(__name__)

STAGE: Final = "store"
DLQ_SUBJECT: Final = f"dlq.{STAGE}"

#: Subject prefix -> record type, most specific first (``tca.fills.`` before ``fills.``
#: cannot clash, but the order is kept explicit anyway).
ROUTES: Final[tuple[tuple[str, type], ...]] = (
    ("orders.events.", OrderEvent),
    ("risk.decisions.", RiskDecision),
    ("tca.fills.", FillQuality),
    ("tca.orders.", OrderQuality),
    ("tca.windows.", TcaWindow),
    ("fills.", Fill),
    ("positions.", Position),
    ("pnl.", AccountPnl),
)
#: The subscriptions: one source partition each.
SUBJECTS: Final = (
    "orders.events.>",
    "fills.>",
    "positions.>",
    "pnl.>",
    "risk.decisions.>",
    "tca.>",
)
#: The streams that hold them (trade2026/orderclient.py ORDER_PATH_STREAMS).
STREAM_SUBJECTS: Final = (
    ("ORDER_EVENTS", ("orders.events.>", "fills.>", "risk.decisions.>")),
    ("PORTFOLIO", ("positions.>", "pnl.>")),
    ("TCA", ("tca.>",)),
)


class StoreFlowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Commit a table's batch after this many records ...
    batch_rows: Annotated[int, msgspec.Meta(gt=0)] = 5_000
    #: ... or this long after its first record, whichever comes first.
    batch_ms: Annotated[int, msgspec.Meta(gt=0)] = 500
    #: Larger payloads are dead-lettered unread (``OVERSIZED``).
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 65_536


class _Decode:
    """Message -> ``(table, record)`` or an ``Outgoing`` dead letter; counts ``in``.

    Records of a table in ``batch`` are also offered to that quality stage's batch
    validator (its suite runs on a background thread), once they decoded and fit.
    """

    def __init__(
        self,
        config: StoreFlowConfig,
        tables: TableRegistry,
        accounting: Accounting,
        batch: Mapping[str, BatchValidator] | None = None,
    ) -> None:
        self._cfg = config
        self._acct = accounting
        self._batch = dict(batch or {})
        self._encode = msgspec.json.Encoder().encode
        self._decoders: dict[type, msgspec.json.Decoder[Any]] = {
            t: msgspec.json.Decoder(t) for _, t in ROUTES
        }
        self._specs = {spec.record_type: spec for spec in tables.specs()}

    def __call__(self, batch: list[Message]) -> list[tuple[str, Any] | Outgoing]:
        out: list[tuple[str, Any] | Outgoing] = []
        counts: Counter[tuple[str, str]] = Counter()
        reasons: list[str] = []
        for msg in batch:
            label, rec = self._one(msg)
            counts[(label, IN)] += 1
            if isinstance(rec, DeadLetter):
                counts[(label, DEAD_LETTERED)] += 1
                reasons.append(rec.reason)
                out.append(dead_letter_out(STAGE, DLQ_SUBJECT, self._encode(rec), rec.reason, msg))
            else:
                out.append((label, rec))
        if self._batch:
            by_table: dict[str, list[Any]] = {}
            for item in out:
                if isinstance(item, tuple) and item[0] in self._batch:
                    by_table.setdefault(item[0], []).append(item[1])
            for table, recs in by_table.items():
                self._batch[table].offer_many(recs)
        self._acct.add(STAGE, counts)
        if reasons:
            self._acct.add_reasons(STAGE, reasons)
        return out

    def _one(self, msg: Message) -> tuple[str, Any]:
        def dead(label: str, reason: str, detail: str, inst: str | None = None) -> tuple[str, Any]:
            return label, DeadLetter(
                STAGE, reason, detail, msg.data, msg.subject, inst, msg.ts_recv
            )

        record_type = next((t for p, t in ROUTES if msg.subject.startswith(p)), None)
        if record_type is None:
            return dead(
                UNKNOWN_INSTRUMENT,
                "UNEXPECTED_SUBJECT",
                f"{msg.subject}: the store takes {', '.join(SUBJECTS)}",
            )
        spec = self._specs[record_type]
        if len(msg.data) > self._cfg.max_message_bytes:
            return dead(
                spec.name, "OVERSIZED", f"{len(msg.data)} bytes > {self._cfg.max_message_bytes}"
            )
        try:
            rec = self._decoders[record_type].decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return dead(spec.name, "DECODE_ERROR", f"as {record_type.__name__}: {exc}")
        try:
            spec.split(rec, "decimal")
        except RowError as exc:
            return dead(spec.name, exc.reason, exc.detail, getattr(rec, "instrument_id", None))
        return spec.name, rec


class _WriterPartition(StatelessSinkPartition[Any]):
    def __init__(self, writer: RecordWriter, accounting: Accounting) -> None:
        self.writer = writer
        self._acct = accounting

    def write_batch(self, items: list[Any]) -> None:
        records: list[Any] = []
        labels: Counter[str] = Counter()
        for it in items:
            # ``op.collect`` emits (table, [record, ...]).
            table, recs = it if isinstance(it, tuple) else (None, [it])
            records.extend(recs)
            if table is not None:
                labels[table] += len(recs)
        self.writer.write(records)
        # Delta raises here on a real failure (disk, permissions), which stops the flow
        # before the epoch closes; QuestDB returns False and holds the rows in its backlog.
        self.writer.flush()
        take = getattr(self.writer, "take_counts", None)
        if take is not None:
            self._acct.add(STAGE, take())
        else:  # QuestDB: accepted by the writer, de-duplicated on the server
            self._acct.add(STAGE, {(t, OUT): n for t, n in labels.items()})

    def close(self) -> None:
        self.writer.close()


class RecordWriterSink(DynamicSink[Any]):
    """Bytewax sink over a :class:`~sinks.questdb.RecordWriter`, one writer per worker.

    ``make_writer(worker_index)`` builds it (default: :func:`order_store_writer`).
    Every ``write_batch`` writes and flushes, because Bytewax only calls a sink when
    items arrive, so a timer-driven flush would never fire on a quiet stream.
    """

    def __init__(
        self,
        accounting: Accounting,
        make_writer: Callable[[int], RecordWriter] | None = None,
    ) -> None:
        self.accounting = accounting
        self.make_writer = make_writer or _default_writer
        self.writers: list[RecordWriter] = []

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        writer = self.make_writer(worker_index)
        self.writers.append(writer)
        return _WriterPartition(writer, self.accounting)


def _default_writer(worker_index: int) -> RecordWriter:
    from sinks.orderstore import order_store_writer

    return order_store_writer(worker_index=worker_index)


def _is_outgoing(item: object) -> TypeGuard[Outgoing]:
    return isinstance(item, Outgoing)


def build_flow(
    source: Source[Message] | Sequence[Source[Message]],
    dlq_sink: Sink[Outgoing],
    *,
    writer_sink: Sink[Any] | None = None,
    config: StoreFlowConfig | None = None,
    accounting: Accounting | None = None,
    flow_id: str = "store",
    batch_validators: Mapping[str, BatchValidator] | None = None,
) -> Dataflow:
    """Wire decode -> per-table batches -> writer; dead letters to ``dlq_sink``.

    ``batch_validators`` (table name -> the quality stage's
    :class:`~operators.quality.batch.BatchValidator`) runs the stage's batch suite over
    what the store takes; the per-record rules ran where the records were made (the
    orders flow), so nothing is judged or counted twice.
    """
    from sinks.orderstore import order_store_registry

    cfg = config or StoreFlowConfig()
    acct = accounting if accounting is not None else Accounting()
    sink = writer_sink if writer_sink is not None else RecordWriterSink(acct)
    flow = Dataflow(flow_id)
    msgs = merged_input(flow, source, hint="order-path sources")
    decoded = op.flat_map_batch(
        "decode", msgs, _Decode(cfg, order_store_registry(), acct, batch_validators)
    )
    split = op.branch("split_dead_letters", decoded, _is_outgoing)
    op.output("dlq", split.trues, dlq_sink)
    keyed: Any = split.falses  # already (table, record): a keyed stream
    batches = op.collect(
        "batch", keyed, timedelta(milliseconds=cfg.batch_ms), max_size=cfg.batch_rows
    )
    op.output("store", batches, sink)
    return flow


def _sources(ctx: RunContext) -> SourceGroup:
    """Every subject of :data:`SUBJECTS` from its stream, from the first message.

    A record published while the store was down is stored when it is back; with Bytewax
    recovery each partition resumes from its snapshot, and the tables' keys drop what a
    replayed epoch writes again.
    """
    from sources.nats import JetStreamSource
    from trade2026.orderclient import SourceGroup, ensure_order_path

    ensure_order_path(ctx.nats)
    return SourceGroup(
        *(
            JetStreamSource(stream, list(subjects), ctx.nats, stop_after=ctx.stop_after)
            for stream, subjects in STREAM_SUBJECTS
        ),
        idle_timeout_s=ctx.idle_timeout_s,
    )


def build_store(ctx: RunContext, root: str) -> tuple[Dataflow, SourceGroup]:
    """The store flow writing local Delta tables under ``<root>/orders/`` whatever the
    environment says (the demo's embedded default), and its sources, whose ``stats``
    hold one entry per subscribed subject once it listens."""
    from sinks.nats import NatsSink
    from sinks.orderstore import DeltaOrderWriter, OrderStoreConfig

    group = _sources(ctx)

    def make(_worker: int) -> RecordWriter:
        return DeltaOrderWriter(OrderStoreConfig(root=root))

    flow = build_flow(
        group.sources,
        NatsSink(ctx.nats),
        writer_sink=RecordWriterSink(ctx.accounting, make),
        accounting=ctx.accounting,
    )
    return flow, group


#: The quality stages whose batch suites run here instead of in the orders flow.
BATCH_SUITES: Final = ("order_events", "fills")


def production_flow(ctx: RunContext, *, batch_suites: bool = True) -> Dataflow:
    """``trade2026 run store``: QuestDB if ``QUESTDB_URL`` is set, else local Delta.

    With ``batch_suites`` the ``order_events`` and ``fills`` quality suites run here, on
    the records the store persists anyway, rather than in the orders process, where
    their validator threads took the GIL from the order path (docs/quality.md). A
    replayed epoch offers its records again, so a suite may see a record twice after a
    crash; the stored rows are de-duplicated, the suite results are not.
    """
    from sinks.nats import NatsSink

    validators: dict[str, BatchValidator] = {}
    if batch_suites:
        from flows.quality import production_quality

        quality = production_quality(ctx, *BATCH_SUITES)
        for stage in BATCH_SUITES:
            v = quality.validator(stage)
            if v is not None:
                validators[stage] = v
    return build_flow(
        _sources(ctx).sources,
        NatsSink(ctx.nats),
        accounting=ctx.accounting,
        batch_validators=validators,
    )
