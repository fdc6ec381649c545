"""The venue flow: a simulated exchange that fills our orders against the live canonical ticks.

Inputs are ``venue.commands.>`` (``SubmitOrder`` / ``CancelOrder`` / ``ReplaceOrder``
from the orders flow, with our order id in header ``T26-Order-Id``) and ``md.ticks.>``.
The orders flow addresses each command to the instrument's listing venue
(``venue.commands.BINANCE``); the simulator stands in for every venue it is sent
commands for (``VenueFlowConfig.command_subject`` narrows that). Output is an
:class:`~schemas.orders.ExecutionReport` per venue event on ``exec.reports.<venue>``
(``SIM`` by default), the same contract a real venue adapter speaks, so the orders flow
cannot tell simulation from production. In production both inputs come, already
interleaved, from the ``VENUE_IN`` stream (:func:`build_production`).

Shape::

    messages --decode (stateless)--+--> dead letters ------------------------------+
                                   +--> route (one key: arrival order kept) --+     |
                                          | immediate rejects --------------------+-> publish
                                          +--> key by instrument --> match -------+

Why a single-key route step
    A cancel or a replace names only the order, not its instrument, and the matching
    engine is keyed by instrument. The route step remembers which instrument each order
    id was submitted for (the newest ``route_memory`` ids) and tags cancels and replaces
    with it; a cancel for an order it never saw is answered at once with
    ``CANCEL_REJECTED``/``UNKNOWN_ORDER`` (what a real venue does). Ticks pass through
    the same step, untouched, so every instrument's ticks and commands reach the
    matching engine in exactly the order they arrived: the order is what makes a replay
    reproduce its fills. The route step does a dict lookup per record; the matching,
    the costly part, is spread over workers by instrument. When the orders flow sends
    header ``T26-Instrument-Id`` the lookup is skipped, which also covers orders
    submitted before a restart without recovery.

Time
    The venue runs on event time only (see :mod:`operators.matching`). A command
    arrives at ``ts_submit`` when that lies within ``max_ahead_ns`` of the venue's own
    event time (the latest tick of the instrument); otherwise, for example a command
    stamped with today's wall clock against replayed market data, it arrives at the
    venue's current event time, as it would at a real exchange, whose clock is the one
    that counts. It then takes effect ``latency_ns`` later, when a tick carries event
    time past that point. So a command needs ticks after it to execute: with no market
    data there is no simulated market.

Fees and latency
    ``VenueFlowConfig.venues`` (``trade2026/config/venue.toml`` by default) is looked up
    under the flow's venue name first, then under the instrument's listing venue
    (``BINANCE`` for ``BTCUSDT.BINANCE``), so a simulation charges what the real
    venue would.

Accounting (stage ``venue``)
    Every message is counted in once, then exactly once as out (a tick or command the
    engine processed, a book delta it does not use, a command answered by the route
    step), dead-lettered (``dlq.venue``, original bytes) or duplicate (a submit for an
    order id already seen: a redelivery, dropped without a second report).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Final, TypeGuard

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.inputs import merged_input
from operators.matching import (
    SimulatedVenue,
    VenueConfig,
    VenueFileConfig,
    VenueOutput,
    VenueState,
)
from operators.matching import to_execution_report as _to_report
from schemas.canonical import BookDelta, DeadLetter, Quote, Tick, TradeTick
from schemas.instruments import InstrumentRegistry, load_instruments
from schemas.orders import CancelOrder, ExecType, ExecutionReport, ReplaceOrder, SubmitOrder
from schemas.transport import MSG_ID_HEADER, Message, Outgoing
from trade2026.accounting import (
    DEAD_LETTERED,
    DUPLICATE,
    IN,
    OUT,
    UNKNOWN_INSTRUMENT,
    Accounting,
)
from trade2026.orderclient import dead_letter_out

if TYPE_CHECKING:
    from trade2026.flowregistry import RunContext
    from trade2026.orderclient import SourceGroup

STAGE: Final = "venue"
DLQ_SUBJECT: Final = f"dlq.{STAGE}"
DEFAULT_VENUE: Final = "SIM"
COMMAND_SUBJECT_PREFIX: Final = "venue.commands."
REPORT_SUBJECT_PREFIX: Final = "exec.reports."
TICK_SUBJECT_PREFIX: Final = "md.ticks."
ORDER_ID_HEADER: Final = "T26-Order-Id"
#: Optional: lets a cancel or replace skip the route lookup.
INSTRUMENT_HEADER: Final = "T26-Instrument-Id"

Command = SubmitOrder | CancelOrder | ReplaceOrder


class VenueFlowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: The venue name on reports and their subject ``exec.reports.<venue>``.
    venue: str = DEFAULT_VENUE
    #: Which commands to execute: every venue's by default.
    command_subject: str = COMMAND_SUBJECT_PREFIX + ">"
    #: How far ahead of the venue's event time a command's ``ts_submit`` is believed.
    max_ahead_ns: Annotated[int, msgspec.Meta(ge=0)] = 1_000_000_000
    #: Order ids the route step remembers for routing cancels and replaces.
    route_memory: Annotated[int, msgspec.Meta(gt=0)] = 1_000_000
    #: Larger payloads are dead-lettered unread (``OVERSIZED``).
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 65_536
    #: Fees and latency by venue name; None loads ``trade2026/config/venue.toml``.
    venues: VenueFileConfig | None = None


# --- records between steps -----------------------------------------------------------------


class _Cmd(msgspec.Struct, frozen=True, gc=False):
    command: Command
    order_id: str
    instrument_id: str | None
    raw: Message


class _Routed(msgspec.Struct, frozen=True, gc=False):
    instrument_id: str
    item: Quote | TradeTick | _Cmd


class RouteState(msgspec.Struct):
    """Order id -> instrument, oldest first (dicts keep insertion order)."""

    instruments: dict[str, str] = msgspec.field(default_factory=dict)
    rejects: int = 0


def _dead(reason: str, detail: str, msg: Message, instrument: str | None = None) -> DeadLetter:
    return DeadLetter(
        stage=STAGE,
        reason=reason,
        detail=detail,
        payload=msg.data,
        subject=msg.subject,
        instrument_id=instrument,
        ts_recv=msg.ts_recv,
    )


# --- decode (stateless) --------------------------------------------------------------------


class _Decode:
    def __init__(self, config: VenueFlowConfig, accounting: Accounting) -> None:
        self._cfg = config
        self._acct = accounting
        self._encode = msgspec.json.Encoder().encode
        self._ticks = msgspec.json.Decoder(Tick)
        self._commands = msgspec.json.Decoder(Command)
        prefix = config.command_subject.removesuffix(">")
        self._is_command = (
            (lambda subj: subj.startswith(prefix))
            if config.command_subject.endswith(">")
            else (lambda subj: subj == config.command_subject)
        )

    def __call__(self, batch: list[Message]) -> list[Quote | TradeTick | _Cmd | Outgoing]:
        out: list[Quote | TradeTick | _Cmd | Outgoing] = []
        counts: Counter[tuple[str, str]] = Counter()
        reasons: list[str] = []
        for msg in batch:
            rec = self._one(msg)
            if isinstance(rec, DeadLetter):
                inst = rec.instrument_id or UNKNOWN_INSTRUMENT
                counts[(inst, IN)] += 1
                counts[(inst, DEAD_LETTERED)] += 1
                reasons.append(rec.reason)
                out.append(dead_letter_out(STAGE, DLQ_SUBJECT, self._encode(rec), rec.reason, msg))
            elif isinstance(rec, BookDelta):  # not used by a top-of-book venue
                counts[(rec.instrument_id, IN)] += 1
                counts[(rec.instrument_id, OUT)] += 1
            else:
                inst = (
                    rec.instrument_id
                    if not isinstance(rec, _Cmd)
                    else rec.instrument_id or UNKNOWN_INSTRUMENT
                )
                counts[(inst, IN)] += 1
                out.append(rec)
        self._acct.add(STAGE, counts)
        if reasons:
            self._acct.add_reasons(STAGE, reasons)
        return out

    def _one(self, msg: Message) -> Quote | TradeTick | BookDelta | _Cmd | DeadLetter:
        if len(msg.data) > self._cfg.max_message_bytes:
            return _dead("OVERSIZED", f"{len(msg.data)} bytes > {self._cfg.max_message_bytes}", msg)
        if msg.subject.startswith(TICK_SUBJECT_PREFIX):
            try:
                tick = self._ticks.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return _dead("UNDECODABLE_TICK", str(exc), msg)
            return tick
        if self._is_command(msg.subject):
            try:
                cmd = self._commands.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return _dead("UNDECODABLE_COMMAND", str(exc), msg)
            headers = msg.headers or {}
            order_id = headers.get(ORDER_ID_HEADER, "")
            inst = cmd.instrument_id if isinstance(cmd, SubmitOrder) else None
            if not order_id:
                return _dead("MISSING_ORDER_ID", f"header {ORDER_ID_HEADER} is required", msg, inst)
            return _Cmd(cmd, order_id, inst or headers.get(INSTRUMENT_HEADER) or None, msg)
        return _dead(
            "UNEXPECTED_SUBJECT",
            f"venue {self._cfg.venue} takes {self._cfg.command_subject} and {TICK_SUBJECT_PREFIX}*",
            msg,
        )


# --- route (one key) -----------------------------------------------------------------------


_Decoded = Quote | TradeTick | _Cmd | Outgoing


class _RouteLogic(StatefulBatchLogic[_Decoded, "_Routed | Outgoing", RouteState]):
    def __init__(
        self,
        config: VenueFlowConfig,
        registry: InstrumentRegistry,
        accounting: Accounting,
        state: RouteState | None,
    ) -> None:
        self._cfg = config
        self._registry = registry
        self._acct = accounting
        self._s = state if state is not None else RouteState()
        self._encode = msgspec.json.Encoder().encode
        self._subject = REPORT_SUBJECT_PREFIX + config.venue

    def on_batch(self, values: list[_Decoded]) -> tuple[Iterable[_Routed | Outgoing], bool]:
        out: list[_Routed | Outgoing] = []
        counts: Counter[tuple[str, str]] = Counter()
        reasons: list[str] = []
        known = self._s.instruments
        for item in values:
            if not isinstance(item, _Cmd):
                assert isinstance(item, Quote | TradeTick)
                if item.instrument_id in self._registry:
                    out.append(_Routed(item.instrument_id, item))
                else:
                    counts[(item.instrument_id, DEAD_LETTERED)] += 1
                    reasons.append("UNKNOWN_INSTRUMENT")
                    dead = DeadLetter(
                        STAGE,
                        "UNKNOWN_INSTRUMENT",
                        f"{item.instrument_id} is not in the instruments config",
                        msgspec.json.encode(item),
                        TICK_SUBJECT_PREFIX + item.instrument_id,
                        item.instrument_id,
                        item.ts_recv,
                    )
                    # A tick's dead letter repeats byte for byte (its fields are the tick's).
                    out.append(dead_letter_out(STAGE, DLQ_SUBJECT, self._encode(dead), dead.reason))
                continue
            cmd = item.command
            label = item.instrument_id or UNKNOWN_INSTRUMENT
            if isinstance(cmd, SubmitOrder):
                if item.order_id in known:
                    counts[(label, DUPLICATE)] += 1
                    continue
                if cmd.instrument_id not in self._registry:
                    counts[(label, OUT)] += 1
                    out.append(self._reject(item, ExecType.REJECTED, "UNKNOWN_INSTRUMENT"))
                    continue
                known[item.order_id] = cmd.instrument_id
                if len(known) > self._cfg.route_memory:
                    del known[next(iter(known))]
                out.append(_Routed(cmd.instrument_id, item))
                continue
            inst = item.instrument_id or known.get(item.order_id)
            if inst is None:
                counts[(label, OUT)] += 1
                kind = (
                    ExecType.CANCEL_REJECTED
                    if isinstance(cmd, CancelOrder)
                    else ExecType.REPLACE_REJECTED
                )
                out.append(self._reject(item, kind, "UNKNOWN_ORDER"))
                continue
            out.append(_Routed(inst, _Cmd(cmd, item.order_id, inst, item.raw)))
        self._acct.add(STAGE, counts)
        if reasons:
            self._acct.add_reasons(STAGE, reasons)
        return out, StatefulBatchLogic.RETAIN

    def _reject(self, item: _Cmd, kind: ExecType, reason: str) -> Outgoing:
        """Answer a command the venue cannot route, so the order never hangs pending."""
        self._s.rejects += 1
        exec_id = f"{self._cfg.venue}-r{self._s.rejects}"
        cmd = item.command
        report = ExecutionReport(
            venue=self._cfg.venue,
            exec_id=exec_id,
            exec_type=kind,
            ts_event=cmd.ts_submit,
            venue_order_id=item.order_id,
            client_order_id=cmd.client_order_id,
            account_id=cmd.account_id,
            instrument_id=item.instrument_id,
            reason=reason,
        )
        return _report_out(self._subject, self._encode(report), item.order_id, self._cfg, exec_id)

    def snapshot(self) -> RouteState:
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._s), type=RouteState)


def _report_out(
    subject: str, data: bytes, order_id: str, cfg: VenueFlowConfig, exec_id: str
) -> Outgoing:
    # Nats-Msg-Id lets a JetStream sink drop a re-sent report; exec ids are deterministic.
    return Outgoing(
        subject, data, {ORDER_ID_HEADER: order_id, MSG_ID_HEADER: f"{cfg.venue}:{exec_id}"}
    )


# --- match (keyed by instrument) -----------------------------------------------------------


class _MatchLogic(StatefulBatchLogic[_Routed, Outgoing, VenueState]):
    """One :class:`SimulatedVenue`; bytewax does not pass the key, so the first record names it."""

    def __init__(
        self,
        config: VenueFlowConfig,
        venues: VenueFileConfig,
        registry: InstrumentRegistry,
        accounting: Accounting,
        state: VenueState | None,
    ) -> None:
        self._cfg = config
        self._venues = venues
        self._registry = registry
        self._acct = accounting
        self._state = state
        self._venue: SimulatedVenue | None = None
        self._encode = msgspec.json.Encoder().encode
        self._subject = REPORT_SUBJECT_PREFIX + config.venue

    def _bind(self, instrument_id: str) -> SimulatedVenue:
        inst = self._registry.get(instrument_id)
        assert inst is not None, "the route step forwards known instruments only"
        table = self._venues.venues
        vcfg = table.get(self._cfg.venue) or table.get(inst.venue) or VenueConfig()
        if self._state is not None:
            venue = SimulatedVenue.restore(vcfg, instrument_id, inst.quote, self._state)
        else:
            venue = SimulatedVenue(vcfg, instrument_id, inst.quote)
        self._venue = venue
        return venue

    def on_batch(self, values: list[_Routed]) -> tuple[Iterable[Outgoing], bool]:
        venue = self._venue or self._bind(values[0].instrument_id)
        out: list[Outgoing] = []
        for routed in values:
            item = routed.item
            results = self._command(venue, item) if isinstance(item, _Cmd) else venue.on_tick(item)
            for r in results:
                report = _to_report(r, self._cfg.venue)
                out.append(
                    _report_out(
                        self._subject, self._encode(report), r.order_id, self._cfg, r.exec_id
                    )
                )
        self._acct.add(STAGE, {(venue.instrument_id, OUT): len(values)})
        return out, StatefulBatchLogic.RETAIN

    def _command(self, venue: SimulatedVenue, item: _Cmd) -> list[VenueOutput]:
        cmd = item.command
        now = venue.now_ns
        ts = cmd.ts_submit
        arrival = max(now, ts) if ts <= now + self._cfg.max_ahead_ns else now
        if isinstance(cmd, SubmitOrder):
            return venue.submit(cmd, item.order_id, arrival)
        if isinstance(cmd, CancelOrder):
            return venue.cancel(item.order_id, arrival)
        return venue.replace(item.order_id, arrival, quantity=cmd.quantity, price=cmd.price)

    def snapshot(self) -> VenueState:
        assert self._venue is not None, "bytewax snapshots a logic only after it saw a batch"
        return self._venue.snapshot()


# --- wiring --------------------------------------------------------------------------------


def _is_outgoing(item: _Decoded) -> TypeGuard[Outgoing]:
    return isinstance(item, Outgoing)


def _is_routed(item: _Routed | Outgoing) -> TypeGuard[_Routed]:
    return isinstance(item, _Routed)


def build_flow(
    sources: Source[Message] | Sequence[Source[Message]],
    sink: Sink[Outgoing],
    *,
    config: VenueFlowConfig | None = None,
    instruments: InstrumentRegistry | None = None,
    accounting: Accounting | None = None,
    flow_id: str = "venue",
) -> Dataflow:
    """Wire the venue between Message sources (commands and ticks) and an Outgoing sink.

    Several sources are merged; one source carrying both subjects keeps their exact
    interleaving, which is what a reproducible test wants.
    """
    from operators.matching import load_venue_config

    cfg = config or VenueFlowConfig()
    registry = instruments or load_instruments()
    venues = cfg.venues or load_venue_config()
    acct = accounting or Accounting()
    flow = Dataflow(flow_id)
    raw = merged_input(flow, sources, hint="commands and ticks sources")
    decoded = op.flat_map_batch("decode", raw, _Decode(cfg, acct))
    split = op.branch("split_dead_letters", decoded, _is_outgoing)
    dead: op.Stream[Outgoing] = split.trues
    keyed_all = op.key_on("one_route_key", split.falses, lambda _item: "route")
    routed = op.stateful_batch(
        "route", keyed_all, lambda state: _RouteLogic(cfg, registry, acct, state)
    )
    routed_split = op.branch("split_answered", op.key_rm("unkey_route", routed), _is_routed)
    answered: op.Stream[Outgoing] = routed_split.falses  # type: ignore[assignment]
    by_instrument = op.key_on("by_instrument", routed_split.trues, lambda r: r.instrument_id)
    matched = op.stateful_batch(
        "match", by_instrument, lambda state: _MatchLogic(cfg, venues, registry, acct, state)
    )
    published = op.merge("merge_out", op.key_rm("unkey", matched), answered, dead)
    op.output("publish", published, sink)
    return flow


def build_production(
    ctx: RunContext, config: VenueFlowConfig | None = None
) -> tuple[Dataflow, SourceGroup]:
    """The venue flow on the order path's streams, and its source.

    One input, the ``VENUE_IN`` stream, which the server fills from ``VENUE`` (commands)
    and ``MD`` (ticks) in arrival order (trade2026/orderclient.py ``VENUE_IN_STREAM``),
    read from its first message as one partition: a command sent while the venue was
    down is executed when it is back, and with Bytewax recovery a restart reads the
    commands and ticks after its snapshot in the order it read them the first time, so
    it repeats the same executions with the same exec ids. Reports are published with
    core NATS and stored by ``EXEC``, named ``<venue>:<exec id>``.
    """
    from sinks.nats import NatsSink
    from sources.nats import JetStreamSource
    from trade2026.orderclient import VENUE_IN_STREAM, SourceGroup, ensure_order_path

    ensure_order_path(ctx.nats)
    cfg = config or VenueFlowConfig()
    source = JetStreamSource(VENUE_IN_STREAM, ">", ctx.nats, stop_after=ctx.stop_after)
    group = SourceGroup(
        source, idle_timeout_s=ctx.idle_timeout_s, carries=("venue.commands", "md.ticks")
    )
    flow = build_flow(group.sources, NatsSink(ctx.nats), config=cfg, accounting=ctx.accounting)
    return flow, group


def production_flow(ctx: RunContext) -> Dataflow:
    """``trade2026 run venue``: the simulated venue ``SIM`` for every venue, against NATS."""
    return build_production(ctx)[0]


__all__ = [
    "DEFAULT_VENUE",
    "DLQ_SUBJECT",
    "INSTRUMENT_HEADER",
    "ORDER_ID_HEADER",
    "STAGE",
    "VenueFlowConfig",
    "build_flow",
    "build_production",
    "production_flow",
]
