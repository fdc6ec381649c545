"""The portfolio flow: fills and ticks in, ``positions.<account>`` and ``pnl.<account>`` out.

Inputs are ``fills.>`` (:class:`~schemas.canonical.Fill`, from the orders flow) and
``md.ticks.>``. The netting, the P&L and the snapshot timing are
:class:`operators.portfolio.Portfolio`'s, one per account.

Shape::

    messages --decode--+--> dead letters -------------------------------------------+
                       +--> key by instrument --> fan out --> key by account --> book --+--> publish

How ticks reach every account holding an instrument
    The portfolio is keyed by account, a tick names only its instrument. The fan-out
    step is keyed by *instrument*: fills pass through it on their way to their account
    and leave behind the account's name, so the step knows every account that ever
    traded the instrument, and sends each tick on to each of them. Fills and ticks of
    one instrument go through one key, so an account sees them in arrival order. An
    account's first fill in an instrument is preceded by the instrument's latest quote
    and trade, so a new position is marked at once.

    Forwarding every tick to every account would multiply the tick rate by the number of
    accounts. Ticks are conflated instead: a tick is held, and replaced by the next tick
    of its kind (quote, trade), unless it is the first to reach a snapshot interval above
    everything already forwarded to some account; such a tick is forwarded at once,
    after everything held. Held ticks also go before a fill and at the end of each batch.
    A snapshot shows the marks just before the event that starts its interval, so the
    book publishes exactly what it would have with every tick, whatever the batch
    boundaries (which differ after a restart). Holding only while the tick stays within
    the intervals already forwarded matters because tick times are not monotonic
    (trades and quotes interleave): keying the hold on the held tick's own interval let
    a later quote stand in for an earlier one across a trade that started an interval,
    and the published marks depended on where batches ended.

Time
    Event time only: an account's snapshots fall due when its fills or ticks cross a
    ``snapshot_interval_ns`` boundary (see :mod:`operators.portfolio`), so replays give
    the same snapshots. An account whose instruments go quiet publishes nothing new.

Accounting (stage ``portfolio``)
    Each message is counted in once. A tick is out once the fan-out step has taken it
    (however many accounts it reaches), as is a book delta, which carries no mark. A fill
    is out when its account's book applied it, duplicate when its exec id was applied
    already (a redelivery), dead-lettered (``dlq.portfolio``, original bytes) otherwise.
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
from operators.portfolio import (
    AccountPnl,
    MarkSource,
    Portfolio,
    PortfolioConfig,
    PortfolioState,
)
from schemas.canonical import BookDelta, DeadLetter, Fill, Position, Quote, Tick, TradeTick
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
    from operators.quality.tap import Quality, QualityConfig
    from trade2026.flowregistry import RunContext
    from trade2026.orderclient import SourceGroup

STAGE: Final = "portfolio"
DLQ_SUBJECT: Final = f"dlq.{STAGE}"
FILL_SUBJECT_PREFIX: Final = "fills."
TICK_SUBJECT_PREFIX: Final = "md.ticks."
POSITION_SUBJECT_PREFIX: Final = "positions."
PNL_SUBJECT_PREFIX: Final = "pnl."


class PortfolioFlowConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    snapshot_interval_ns: Annotated[int, msgspec.Meta(gt=0)] = 1_000_000_000
    mark: MarkSource = MarkSource.MID
    #: Larger payloads are dead-lettered unread (``OVERSIZED``).
    max_message_bytes: Annotated[int, msgspec.Meta(gt=0)] = 65_536

    def for_account(self, account_id: str) -> PortfolioConfig:
        return PortfolioConfig(
            account_id=account_id, snapshot_interval_ns=self.snapshot_interval_ns, mark=self.mark
        )


class _FillIn(msgspec.Struct, frozen=True, gc=False):
    fill: Fill
    raw: Message


Mark = Quote | TradeTick
_Decoded = Mark | _FillIn | Outgoing


class FanOutState(msgspec.Struct):
    accounts: list[str] = msgspec.field(default_factory=list)
    last_quote: Quote | None = None
    last_trade: TradeTick | None = None
    #: Per account, the highest snapshot interval (``ts_event // interval``) of anything
    #: forwarded to it: a tick above it may make the account's book take a snapshot.
    forwarded_interval: dict[str, int] = msgspec.field(default_factory=dict)


# --- decode --------------------------------------------------------------------------------


class _Decode:
    def __init__(self, config: PortfolioFlowConfig, accounting: Accounting) -> None:
        self._cfg = config
        self._acct = accounting
        self._encode = msgspec.json.Encoder().encode
        self._ticks = msgspec.json.Decoder(Tick)
        self._fills = msgspec.json.Decoder(Fill)

    def __call__(self, batch: list[Message]) -> list[_Decoded]:
        out: list[_Decoded] = []
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
            elif isinstance(rec, BookDelta):
                counts[(rec.instrument_id, IN)] += 1
                counts[(rec.instrument_id, OUT)] += 1
            else:
                inst = rec.fill.instrument_id if isinstance(rec, _FillIn) else rec.instrument_id
                counts[(inst, IN)] += 1
                out.append(rec)
        self._acct.add(STAGE, counts)
        if reasons:
            self._acct.add_reasons(STAGE, reasons)
        return out

    def _one(self, msg: Message) -> Mark | BookDelta | _FillIn | DeadLetter:
        def dead(reason: str, detail: str) -> DeadLetter:
            return DeadLetter(STAGE, reason, detail, msg.data, msg.subject, None, msg.ts_recv)

        if len(msg.data) > self._cfg.max_message_bytes:
            return dead("OVERSIZED", f"{len(msg.data)} bytes > {self._cfg.max_message_bytes}")
        try:
            if msg.subject.startswith(FILL_SUBJECT_PREFIX):
                return _FillIn(self._fills.decode(msg.data), msg)
            if msg.subject.startswith(TICK_SUBJECT_PREFIX):
                return self._ticks.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            kind = "FILL" if msg.subject.startswith(FILL_SUBJECT_PREFIX) else "TICK"
            return dead(f"UNDECODABLE_{kind}", str(exc))
        return dead("UNEXPECTED_SUBJECT", "the portfolio takes fills.* and md.ticks.*")


# --- fan out (keyed by instrument) ---------------------------------------------------------


#: ``(account, (account, item))``: keyed by account, and the book learns its account
#: from the value, because bytewax does not tell a logic its key.
_Forward = tuple[str, tuple[str, "Mark | _FillIn"]]


class _FanOutLogic(StatefulBatchLogic[_Decoded, _Forward, FanOutState]):
    def __init__(
        self, config: PortfolioFlowConfig, accounting: Accounting, state: FanOutState | None
    ) -> None:
        self._interval = config.snapshot_interval_ns
        self._acct = accounting
        self._s = state if state is not None else FanOutState()

    def on_batch(self, values: list[_Decoded]) -> tuple[Iterable[_Forward], bool]:
        s = self._s
        interval = self._interval
        seen = s.forwarded_interval
        # At most the lowest interval forwarded to any account (lower is safe: a tick
        # above it is only forwarded rather than held), so a tick costs O(1), not
        # O(accounts), to classify.
        floor = min((seen.get(a, -1) for a in s.accounts), default=-1)
        out: list[_Forward] = []
        pending: dict[type, Mark] = {}
        ticks = 0
        inst = ""

        def send(account: str, item: Mark | _FillIn, at: int) -> None:
            out.append((account, (account, item)))
            if at > seen.get(account, -1):
                seen[account] = at

        def flush() -> None:
            for tick in sorted(pending.values(), key=lambda t: t.ts_event):
                at = tick.ts_event // interval
                for account in s.accounts:
                    send(account, tick, at)
            pending.clear()

        for item in values:
            if isinstance(item, _FillIn):
                inst = item.fill.instrument_id
                flush()
                account = item.fill.account_id
                if account not in s.accounts:
                    s.accounts.append(account)
                    s.accounts.sort()
                    for last in sorted(
                        (t for t in (s.last_quote, s.last_trade) if t is not None),
                        key=lambda t: t.ts_event,
                    ):
                        send(account, last, last.ts_event // interval)
                send(account, item, item.fill.ts_event // interval)
                floor = min(floor, seen[account])
                continue
            assert not isinstance(item, Outgoing)
            inst = item.instrument_id
            ticks += 1
            if isinstance(item, Quote):
                s.last_quote = item
            else:
                s.last_trade = item
            at = item.ts_event // interval
            if s.accounts and at > floor:
                # The tick may start a new snapshot interval for some account: what that
                # snapshot shows are the marks just before it, so everything held goes
                # first and this tick is not held (a later one must not stand in for it).
                flush()
                for account in s.accounts:
                    send(account, item, at)
                floor = at
                continue
            # Held, and replaced by the next tick of its kind: nothing in between can
            # start a snapshot, so only the last mark of each kind matters to the book.
            pending[type(item)] = item
        flush()
        if ticks:
            self._acct.add(STAGE, {(inst, OUT): ticks})
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> FanOutState:
        return msgspec.msgpack.decode(msgspec.msgpack.encode(self._s), type=FanOutState)


# --- book (keyed by account) ---------------------------------------------------------------


class _BookLogic(StatefulBatchLogic[tuple[str, Mark | _FillIn], Outgoing, PortfolioState]):
    def __init__(
        self, config: PortfolioFlowConfig, accounting: Accounting, state: PortfolioState | None
    ) -> None:
        self._cfg = config
        self._acct = accounting
        self._book: Portfolio | None = None
        if state is not None:
            self._book = Portfolio.restore(config.for_account(state.account_id), state)
        self._encode = msgspec.json.Encoder().encode

    def on_batch(self, values: list[tuple[str, Mark | _FillIn]]) -> tuple[Iterable[Outgoing], bool]:
        book = self._book
        if book is None:
            book = self._book = Portfolio(self._cfg.for_account(values[0][0]))
        account = book.config.account_id
        encode = self._encode
        out: list[Outgoing] = []
        counts: Counter[tuple[str, str]] = Counter()
        reasons: list[str] = []
        for _, item in values:
            if isinstance(item, _FillIn):
                due, rejected = book.on_fill(item.fill)
                inst = item.fill.instrument_id
                if rejected is None:
                    counts[(inst, OUT)] += 1
                elif rejected.reason == "DUPLICATE_EXEC_ID":
                    counts[(inst, DUPLICATE)] += 1
                else:
                    counts[(inst, DEAD_LETTERED)] += 1
                    reasons.append(rejected.reason)
                    raw = item.raw
                    dead = DeadLetter(
                        STAGE, rejected.reason, rejected.detail, raw.data, raw.subject, inst,
                        raw.ts_recv,
                    )  # fmt: skip
                    out.append(
                        dead_letter_out(STAGE, DLQ_SUBJECT, encode(dead), rejected.reason, raw)
                    )
            else:
                due = book.on_tick(item)
            for snap in due:
                out.append(self._publish(account, snap))
        self._acct.add(STAGE, counts)
        if reasons:
            self._acct.add_reasons(STAGE, reasons)
        return out, StatefulBatchLogic.RETAIN

    def _publish(self, account: str, snap: Position | AccountPnl) -> Outgoing:
        # One snapshot set per account per interval boundary (strictly increasing), so
        # account, instrument and boundary name a snapshot; a replay repeats the id.
        if isinstance(snap, Position):
            subject = POSITION_SUBJECT_PREFIX + account
            msg_id = f"pos:{account}:{snap.instrument_id}:{snap.ts_event}"
        else:
            subject = PNL_SUBJECT_PREFIX + account
            msg_id = f"pnl:{account}:{snap.ts_event}"
        return Outgoing(subject, self._encode(snap), {MSG_ID_HEADER: msg_id})

    def snapshot(self) -> PortfolioState:
        assert self._book is not None, "bytewax snapshots a logic only after it saw a batch"
        return self._book.snapshot()


# --- wiring --------------------------------------------------------------------------------


def _is_outgoing(item: _Decoded) -> TypeGuard[Outgoing]:
    return isinstance(item, Outgoing)


def _instrument(item: _Decoded) -> str:
    return item.fill.instrument_id if isinstance(item, _FillIn) else item.instrument_id  # type: ignore[union-attr]


def build_flow(
    sources: Source[Message] | Sequence[Source[Message]],
    sink: Sink[Outgoing],
    *,
    config: PortfolioFlowConfig | None = None,
    accounting: Accounting | None = None,
    flow_id: str = "portfolio",
    quality: QualityConfig | Quality | None = None,
) -> Dataflow:
    """Wire the portfolio between Message sources (fills and ticks) and an Outgoing sink.

    ``quality`` judges each published ``positions.*`` record (``dlq.positions``,
    accounting stage ``quality.positions``); None: no quality layer.
    """
    cfg = config or PortfolioFlowConfig()
    acct = accounting or Accounting()
    flow = Dataflow(flow_id)
    raw = merged_input(flow, sources, hint="fills and ticks sources")
    decoded = op.flat_map_batch("decode", raw, _Decode(cfg, acct))
    split = op.branch("split_dead_letters", decoded, _is_outgoing)
    dead: op.Stream[Outgoing] = split.trues
    by_instrument = op.key_on("by_instrument", split.falses, _instrument)
    fanned = op.stateful_batch(
        "fan_out", by_instrument, lambda state: _FanOutLogic(cfg, acct, state)
    )
    by_account = op.key_rm("unkey_instrument", fanned)
    booked = op.stateful_batch("book", by_account, lambda state: _BookLogic(cfg, acct, state))
    published = op.merge("merge_out", op.key_rm("unkey", booked), dead)
    if quality is not None:
        published = _quality_gate(published, quality, acct)
    op.output("publish", published, sink)
    return flow


def _quality_gate(
    stream: op.Stream[Outgoing], quality: QualityConfig | Quality, acct: Accounting
) -> op.Stream[Outgoing]:
    from flows.quality import OutgoingGate, Route, gate_outgoing
    from operators.quality.tap import build_quality
    from schemas.instruments import load_instruments

    q = build_quality(quality, load_instruments(), acct)
    assert q is not None
    decode = msgspec.json.Decoder(Position).decode
    gate = OutgoingGate(q, [Route(POSITION_SUBJECT_PREFIX, "positions", decode)])
    return gate_outgoing("quality_positions", stream, gate) if gate else stream


def build_production(
    ctx: RunContext,
    config: PortfolioFlowConfig | None = None,
    quality: QualityConfig | Quality | None = None,
) -> tuple[Dataflow, SourceGroup]:
    """The portfolio flow on the order path's streams, and its sources.

    Fills come from ``ORDER_EVENTS`` from its first message (a fill published while the
    portfolio was down is applied when it is back), ticks from ``MD`` from the newest
    on a fresh start; with Bytewax recovery both resume from their snapshot. Positions
    and P&L are published with core NATS and stored by ``PORTFOLIO``, each named by
    account, instrument and snapshot boundary.
    """
    from sinks.nats import NatsSink
    from sources.nats import JetStreamSource
    from trade2026.orderclient import SourceGroup, ensure_order_path

    ensure_order_path(ctx.nats)
    fills = JetStreamSource(
        "ORDER_EVENTS", FILL_SUBJECT_PREFIX + ">", ctx.nats, stop_after=ctx.stop_after
    )
    ticks = JetStreamSource(
        "MD", TICK_SUBJECT_PREFIX + ">", ctx.nats, deliver="new", stop_after=ctx.stop_after
    )
    group = SourceGroup(fills, ticks, idle_timeout_s=ctx.idle_timeout_s)
    flow = build_flow(
        group.sources,
        NatsSink(ctx.nats),
        config=config,
        accounting=ctx.accounting,
        quality=quality,
    )
    return flow, group


def production_flow(ctx: RunContext) -> Dataflow:
    """``trade2026 run portfolio``: positions and P&L against NATS, quality layer on."""
    from flows.quality import production_quality

    return build_production(ctx, quality=production_quality(ctx, "positions"))[0]


__all__ = [
    "DLQ_SUBJECT",
    "STAGE",
    "PortfolioFlowConfig",
    "build_flow",
    "build_production",
    "production_flow",
]
