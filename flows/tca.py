"""The TCA flow: execution quality from fills, order events and quotes.

Inputs are ``fills.>``, ``orders.events.>`` and ``md.ticks.>``; outputs are
:class:`~operators.tca.FillQuality` on ``tca.fills.<account>``,
:class:`~operators.tca.OrderQuality` on ``tca.orders.<account>`` and
:class:`~operators.tca.TcaWindow` on ``tca.windows.<scope>.<key>`` (scope ``instrument``
or ``account``). The arithmetic and the tumbling windows are
:class:`operators.tca.ExecutionQuality`'s: event-time windows inside the operator, not a
Bytewax ``EventClock`` (bytewax issue #578), and this flow is separate from the order
path so nothing here can slow an order down.

One key
    The whole flow state lives under one key. A window per account sums fills of every
    instrument, and a window per instrument sums every account, so with any other key
    one of them would be split across keys and need a second, watermark-aware merge
    step. TCA is off the order path and its heavy input, quotes, costs one dict store
    each, so one worker keeps up; trades and book deltas are counted and skipped.

Orders
    An order is tracked from the first event seen for it that is not a risk denial
    (a denied order never reached a market and has no execution quality); its arrival
    mid is the mid of the last quote seen then. It is reported done when an event says
    it ended (filled, canceled, expired, rejected) *and* the fills behind the event's
    cumulative quantity have arrived: fills and order events travel on different
    subjects, so a final fill may arrive after the event that reports it.

Accounting (stage ``tca``)
    Every message is counted in once, then out (taken into the TCA state), duplicate (a
    fill whose exec id was seen already) or dead-lettered (``dlq.tca``, original bytes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Final, TypeGuard

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.inputs import merged_input
from operators.tca import (
    ExecutionQuality,
    FillQuality,
    OrderQuality,
    TcaConfig,
    TcaOutput,
    TcaState,
    TcaWindow,
)
from schemas.canonical import DeadLetter, Fill, Order, OrderEvent, Quote, Tick
from schemas.common import OrderStatus, OrderType
from schemas.transport import MSG_ID_HEADER, Message, Outgoing
from trade2026.accounting import (
    DEAD_LETTERED,
    DUPLICATE,
    IN,
    OUT,
    UNKNOWN_INSTRUMENT,
    Accounting,
)
from trade2026.orderclient import content_msg_id, dead_letter_out

if TYPE_CHECKING:
    from trade2026.flowregistry import RunContext
    from trade2026.orderclient import SourceGroup

STAGE: Final = "tca"
DLQ_SUBJECT: Final = f"dlq.{STAGE}"
FILL_SUBJECT_PREFIX: Final = "fills."
EVENT_SUBJECT_PREFIX: Final = "orders.events."
TICK_SUBJECT_PREFIX: Final = "md.ticks."
_ENDED = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)


class TcaFlowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tca: TcaConfig = TcaConfig()
    #: Exec ids and finished order ids remembered, to drop redeliveries.
    memory: Annotated[int, msgspec.Meta(gt=0)] = 100_000
    #: Larger payloads are dead-lettered unread (``OVERSIZED``).
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 65_536


class TcaFlowState(msgspec.Struct):
    tca: TcaState
    #: order id -> quantity filled so far, for orders being tracked
    filled: dict[str, Decimal] = msgspec.field(default_factory=dict)
    #: order id -> (cum qty the ending event reported, its event time)
    ending: dict[str, tuple[Decimal, int]] = msgspec.field(default_factory=dict)
    #: finished order ids and seen exec ids, oldest first
    finished: dict[str, None] = msgspec.field(default_factory=dict)
    exec_ids: dict[str, None] = msgspec.field(default_factory=dict)


class _In(msgspec.Struct, frozen=True, gc=False):
    record: Fill | OrderEvent | Quote | None
    raw: Message
    instrument_id: str


def _subject(out: TcaOutput) -> str:
    if isinstance(out, FillQuality):
        return f"tca.fills.{out.account_id}"
    if isinstance(out, OrderQuality):
        return f"tca.orders.{out.account_id}"
    return f"tca.windows.{out.scope}.{out.key}"


class _Decode:
    def __init__(self, config: TcaFlowConfig, accounting: Accounting) -> None:
        self._cfg = config
        self._acct = accounting
        self._encode = msgspec.json.Encoder().encode
        self._ticks = msgspec.json.Decoder(Tick)
        self._fills = msgspec.json.Decoder(Fill)
        self._events = msgspec.json.Decoder(OrderEvent)

    def __call__(self, batch: list[Message]) -> list[_In | Outgoing]:
        out: list[_In | Outgoing] = []
        counts: Counter[tuple[str, str]] = Counter()
        reasons: list[str] = []
        for msg in batch:
            rec = self._one(msg)
            if isinstance(rec, DeadLetter):
                counts[(UNKNOWN_INSTRUMENT, IN)] += 1
                counts[(UNKNOWN_INSTRUMENT, DEAD_LETTERED)] += 1
                reasons.append(rec.reason)
                out.append(dead_letter_out(STAGE, DLQ_SUBJECT, self._encode(rec), rec.reason, msg))
            elif rec.record is None:  # a trade or book delta: no mid in it
                counts[(rec.instrument_id, IN)] += 1
                counts[(rec.instrument_id, OUT)] += 1
            else:
                counts[(rec.instrument_id, IN)] += 1
                out.append(rec)
        self._acct.add(STAGE, counts)
        if reasons:
            self._acct.add_reasons(STAGE, reasons)
        return out

    def _one(self, msg: Message) -> _In | DeadLetter:
        def dead(reason: str, detail: str) -> DeadLetter:
            return DeadLetter(STAGE, reason, detail, msg.data, msg.subject, None, msg.ts_recv)

        if len(msg.data) > self._cfg.max_message_bytes:
            return dead("OVERSIZED", f"{len(msg.data)} bytes > {self._cfg.max_message_bytes}")
        subject = msg.subject
        try:
            if subject.startswith(TICK_SUBJECT_PREFIX):
                tick = self._ticks.decode(msg.data)
                rec = tick if isinstance(tick, Quote) else None
                return _In(rec, msg, tick.instrument_id)
            if subject.startswith(FILL_SUBJECT_PREFIX):
                fill = self._fills.decode(msg.data)
                return _In(fill, msg, fill.instrument_id)
            if subject.startswith(EVENT_SUBJECT_PREFIX):
                event = self._events.decode(msg.data)
                return _In(event, msg, event.instrument_id)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return dead("UNDECODABLE", str(exc))
        return dead("UNEXPECTED_SUBJECT", "tca takes fills.*, orders.events.* and md.ticks.*")


class _TcaLogic(StatefulBatchLogic[_In, Outgoing, TcaFlowState]):
    def __init__(
        self, config: TcaFlowConfig, accounting: Accounting, state: TcaFlowState | None
    ) -> None:
        self._cfg = config
        self._acct = accounting
        self._s = state if state is not None else TcaFlowState(TcaState())
        self._eq = ExecutionQuality(config.tca, self._s.tca)
        self._encode = msgspec.json.Encoder().encode

    def on_batch(self, values: list[_In]) -> tuple[Iterable[Outgoing], bool]:
        results: list[TcaOutput] = []
        counts: Counter[tuple[str, str]] = Counter()
        for item in values:
            rec = item.record
            if isinstance(rec, Quote):
                results.extend(self._eq.on_tick(rec))
            elif isinstance(rec, Fill):
                if rec.exec_id in self._s.exec_ids:
                    counts[(item.instrument_id, DUPLICATE)] += 1
                    continue
                self._remember(self._s.exec_ids, rec.exec_id)
                results.extend(self._on_fill(rec))
            elif isinstance(rec, OrderEvent):
                results.extend(self._on_event(rec))
            counts[(item.instrument_id, OUT)] += 1
        self._acct.add(STAGE, counts)
        return self._publish(results), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Outgoing], bool]:
        """The end of a finite input (a replay): close the windows still open."""
        return self._publish(self._eq.flush()), StatefulBatchLogic.RETAIN

    def _publish(self, results: list[TcaOutput]) -> list[Outgoing]:
        # Results are a function of the restored state and the resumed input, so a
        # replay repeats them byte for byte: their digest is their id.
        encode = self._encode
        out = []
        for r in results:
            subject, data = _subject(r), encode(r)
            out.append(Outgoing(subject, data, {MSG_ID_HEADER: content_msg_id(subject, data)}))
        return out

    def _on_fill(self, fill: Fill) -> list[TcaOutput]:
        s = self._s
        out = self._eq.on_fill(fill)
        oid = fill.order_id
        if oid in s.filled:
            s.filled[oid] += fill.quantity
            ending = s.ending.get(oid)
            if ending is not None and s.filled[oid] >= ending[0]:
                out.extend(self._done(oid, ending[1]))
        return out

    def _on_event(self, event: OrderEvent) -> list[TcaOutput]:
        s = self._s
        oid = event.order_id
        if oid in s.finished:
            return []
        out: list[TcaOutput] = []
        if oid not in s.filled:
            if event.status is OrderStatus.DENIED:
                return []
            order = Order(
                client_order_id=event.client_order_id,
                account_id=event.account_id,
                instrument_id=event.instrument_id,
                side=event.side,
                order_type=OrderType.LIMIT if event.price is not None else OrderType.MARKET,
                quantity=event.quantity,
                price=event.price,
            )
            out.extend(self._eq.on_order(order, oid, event.ts_event))
            s.filled[oid] = Decimal(0)
        if event.status in _ENDED:
            if s.filled[oid] >= event.cum_qty:
                out.extend(self._done(oid, event.ts_event))
            else:
                s.ending[oid] = (event.cum_qty, event.ts_event)
        return out

    def _done(self, oid: str, ts: int) -> list[TcaOutput]:
        s = self._s
        s.filled.pop(oid, None)
        s.ending.pop(oid, None)
        self._remember(s.finished, oid)
        return self._eq.on_order_done(oid, ts)

    def _remember(self, seen: dict[str, None], key: str) -> None:
        seen[key] = None
        if len(seen) > self._cfg.memory:
            del seen[next(iter(seen))]

    def snapshot(self) -> TcaFlowState:
        self._s.tca = self._eq.snapshot()
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._s), type=TcaFlowState)


def _is_input(item: _In | Outgoing) -> TypeGuard[_In]:
    return isinstance(item, _In)


def build_flow(
    sources: Source[Message] | Sequence[Source[Message]],
    sink: Sink[Outgoing],
    *,
    config: TcaFlowConfig | None = None,
    accounting: Accounting | None = None,
    flow_id: str = "tca",
) -> Dataflow:
    """Wire TCA between Message sources (fills, order events, ticks) and an Outgoing sink."""
    cfg = config or TcaFlowConfig()
    acct = accounting or Accounting()
    flow = Dataflow(flow_id)
    raw = merged_input(flow, sources, hint="fills, events and ticks")
    decoded = op.flat_map_batch("decode", raw, _Decode(cfg, acct))
    split = op.branch("split_dead_letters", decoded, _is_input)
    dead: op.Stream[Outgoing] = split.falses  # type: ignore[assignment]
    keyed = op.key_on("one_key", split.trues, lambda _r: "tca")
    measured = op.stateful_batch("measure", keyed, lambda state: _TcaLogic(cfg, acct, state))
    op.output("publish", op.merge("merge_out", op.key_rm("unkey", measured), dead), sink)
    return flow


def build_production(
    ctx: RunContext, config: TcaFlowConfig | None = None
) -> tuple[Dataflow, SourceGroup]:
    """The TCA flow on the order path's streams, and its sources.

    Fills and order events from ``ORDER_EVENTS`` from the first message, quotes from
    ``MD`` from the newest on a fresh start; with Bytewax recovery each resumes from its
    snapshot. Results are published with core NATS and stored by ``TCA``.
    """
    from sinks.nats import NatsSink
    from sources.nats import JetStreamSource
    from trade2026.orderclient import SourceGroup, ensure_order_path

    ensure_order_path(ctx.nats)
    records = JetStreamSource(
        "ORDER_EVENTS",
        [FILL_SUBJECT_PREFIX + ">", EVENT_SUBJECT_PREFIX + ">"],
        ctx.nats,
        stop_after=ctx.stop_after,
    )
    ticks = JetStreamSource(
        "MD", TICK_SUBJECT_PREFIX + ">", ctx.nats, deliver="new", stop_after=ctx.stop_after
    )
    group = SourceGroup(records, ticks, idle_timeout_s=ctx.idle_timeout_s)
    flow = build_flow(group.sources, NatsSink(ctx.nats), config=config, accounting=ctx.accounting)
    return flow, group


def production_flow(ctx: RunContext) -> Dataflow:
    """``trade2026 run tca``: execution quality against NATS."""
    return build_production(ctx)[0]


__all__ = [
    "DLQ_SUBJECT",
    "STAGE",
    "TcaFlowConfig",
    "TcaWindow",
    "build_flow",
    "build_production",
    "production_flow",
]
