"""``md.ticks.>`` from JetStream into the Delta tick tables.

Graph::

    JetStream md.ticks.>  ->  check (decode, fit, quality)  ->  dead letters -> dlq.ticks_sink
                                                           \\->  chunks keyed by shard
                                                                -> batch(rows, time)
                                                                -> DeltaTickSink (commits)

The check turns a whole source batch into arrow columns (see :func:`sinks.delta.decode_ticks`:
no ``Decimal`` per value, one exact cast per column, the ``ticks`` quality rules as a few
vectorised checks); a small batch goes record by record, where that is cheaper. The
batcher flushes after ``batch_rows`` rows or ``batch_ms`` after the first, whichever comes
first; its buffer is Bytewax state, so it is part of the recovery snapshot. Subjects are
sharded by ``crc32(subject) % shards`` so one subject always meets the same writer,
which the per-subject application transaction ids rely on.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.quality.rules import Rule, RulesConfig, build_rule
from schemas.canonical import DeadLetter, Tick
from schemas.transport import Message, Outgoing
from sinks.delta import (
    STAGE,
    Chunk,
    DecodedBatch,
    DeltaTicksConfig,
    DeltaTickSink,
    Stamped,
    TickRules,
    decode_ticks,
    tick_misfit,
)
from trade2026.accounting import DEAD_LETTERED, IN, UNKNOWN_INSTRUMENT, Accounting

__all__ = ["DEFAULT_RULES", "DLQ_SUBJECT", "SMALL_BATCH", "build_flow", "check_message"]

DLQ_SUBJECT = f"dlq.{STAGE}"
#: The sink's input gate: order is the sequencer's business upstream (see TickRules).
DEFAULT_RULES = RulesConfig(check_order=False)
_decoder = msgspec.json.Decoder(Tick)


def check_message(msg: Message, accounting: Accounting | None = None) -> Stamped | DeadLetter:
    """Decode one bus message and check it fits its table; never raises on bad input."""
    return _check_one(msg, accounting)


#: Below this many messages a source batch is checked record by record. The batch path
#: makes ~30 arrow calls per chunk (10-30 us each here), which a small batch does not
#: earn back: on this machine 1-message batches cost ~1 ms a tick that way against ~18 us
#: record by record, and the two broke even at a few hundred messages.
SMALL_BATCH = 256
#: What a source batch becomes: dead letters, then per shard a chunk or a list of ticks.
_Item = DeadLetter | tuple[str, Chunk] | tuple[str, list[Stamped]]


class _Everything:
    """Every instrument is known (the sink has no reference data unless given some)."""

    def __contains__(self, item: object) -> bool:
        return True


class _Check:
    """Decode, fit-check and quality-check a source batch; accounting once per batch.

    A large batch goes the arrow way (:func:`sinks.delta.decode_ticks` and the vectorised
    :class:`~sinks.delta.TickRules`); a small one record by record (the canonical decoder,
    :func:`~sinks.delta.tick_misfit` and the per-record ``ticks`` rule). Both judge alike.
    """

    def __init__(
        self,
        accounting: Accounting | None,
        rules: RulesConfig | None = None,
        instruments: Collection[str] | None = None,
        small_batch: int = SMALL_BATCH,
    ) -> None:
        self._accounting = accounting
        self._rules = None if rules is None else TickRules(rules, instruments)
        self._rule: Rule | None = None
        if rules is not None:
            self._rule = build_rule(
                "ticks", _Everything() if instruments is None else instruments, rules
            )
        self.small_batch = small_batch

    def columns(self, batch: list[Message]) -> DecodedBatch:
        decoded = decode_ticks(batch, self._rules)
        self._account(decoded.counts, decoded.reasons)
        return decoded

    def records(self, batch: list[Message]) -> tuple[list[Stamped], list[DeadLetter]]:
        good: list[Stamped] = []
        dead: list[DeadLetter] = []
        counts: Counter[tuple[str, str]] = Counter()
        rule = self._rule
        for msg in batch:
            rec = _judge_one(msg)
            if isinstance(rec, Stamped) and rule is not None:
                reason = rule.check(rec.tick)
                if reason is not None:
                    rec = DeadLetter(
                        STAGE,
                        reason,
                        f"quality rule ticks: {reason}",
                        msg.data,
                        msg.subject,
                        rec.tick.instrument_id,
                        msg.ts_recv,
                    )
            if isinstance(rec, Stamped):
                good.append(rec)
                counts[(rec.tick.instrument_id, IN)] += 1
            else:
                dead.append(rec)
                inst = rec.instrument_id or UNKNOWN_INSTRUMENT
                counts[(inst, IN)] += 1
                counts[(inst, DEAD_LETTERED)] += 1
        self._account(counts, [d.reason for d in dead])
        return good, dead

    def _account(self, counts: Mapping[tuple[str, str], int], reasons: list[str]) -> None:
        if self._accounting is not None:
            self._accounting.add(STAGE, counts)
            if reasons:
                self._accounting.add_reasons(STAGE, reasons)


def _judge_one(msg: Message) -> Stamped | DeadLetter:
    """The canonical decode and :func:`tick_misfit` of one message; never raises."""
    try:
        tick = _decoder.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return DeadLetter(STAGE, "DECODE_ERROR", str(exc), msg.data, msg.subject, None, msg.ts_recv)
    why = tick_misfit(tick)
    if why is None:
        return Stamped(msg.subject, msg.seq, tick)
    return DeadLetter(
        STAGE, "SCHEMA_MISMATCH", why, msg.data, msg.subject, tick.instrument_id, msg.ts_recv
    )


def _check_one(msg: Message, accounting: Accounting | None) -> Stamped | DeadLetter:
    """The per-record path of the Quix engine (no quality gate), counted."""
    rec = _judge_one(msg)
    if accounting is not None:
        if isinstance(rec, Stamped):
            accounting.add(STAGE, {(rec.tick.instrument_id, IN): 1})
        else:
            inst = rec.instrument_id or UNKNOWN_INSTRUMENT
            accounting.add(STAGE, {(inst, IN): 1, (inst, DEAD_LETTERED): 1})
            accounting.add_reasons(STAGE, [rec.reason])
    return rec


class _Grouped:
    """Check a source batch, then hand on its good rows keyed by shard: an arrow chunk
    per kind (large batches) or one list of ticks (small ones).

    Bytewax pays its per-item cost once per (batch, shard, kind) instead of once per
    tick. A shard is a hash of the subject, so one subject always lands on one worker.
    """

    def __init__(self, check: _Check, shards: int) -> None:
        self._check = check
        self._shards = shards
        self._shard_of: dict[str, str] = {}

    def _shard(self, origin: str) -> str:
        k = self._shard_of.get(origin)
        if k is None:
            k = self._shard_of[origin] = str(zlib.crc32(origin.encode()) % self._shards)
        return k

    def __call__(self, batch: list[Message]) -> list[_Item]:
        out: list[_Item] = []
        if len(batch) < self._check.small_batch:
            good, dead = self._check.records(batch)
            out.extend(dead)
            if self._shards == 1:
                if good:
                    out.append(("0", good))
                return out
            groups: dict[str, list[Stamped]] = {}
            for st in good:
                groups.setdefault(self._shard(st.origin), []).append(st)
            out.extend(groups.items())
            return out
        decoded = self._check.columns(batch)
        out.extend(decoded.dead)
        if self._shards == 1:
            out.extend(("0", chunk) for chunk in decoded.chunks)
            return out
        import pyarrow as pa

        for kind, table in decoded.chunks:
            keys = [self._shard(o) for o in table.column("origin").to_pylist()]
            for k in sorted(set(keys)):
                part = table.filter(pa.array([x == k for x in keys], pa.bool_()))
                out.append((k, (kind, part)))
        return out


#: What the batcher holds and emits: arrow chunks and (from small batches) ticks.
_Buffered = Chunk | Stamped


def _rows(item: _Buffered) -> int:
    return 1 if isinstance(item, Stamped) else item[1].num_rows


class _Batcher(StatefulBatchLogic[Any, list[_Buffered], list[_Buffered]]):
    """Accumulate rows until ``rows`` or ``wait`` after the first, then emit one commit.

    The buffer is Bytewax state, so rows the source has moved past are in the snapshot
    until they are committed: nothing is acknowledged that was not written. Chunks are
    arrow tables, which pickle as columns rather than as one object per tick.
    """

    def __init__(self, rows: int, wait: timedelta, state: list[_Buffered] | None) -> None:
        self._rows = rows
        self._wait = wait
        self._buf: list[_Buffered] = list(state or [])  # older snapshots hold only Stamped
        self._n = sum(map(_rows, self._buf))
        self._due: datetime | None = _utcnow() + wait if self._buf else None

    def on_batch(self, values: list[Any]) -> tuple[list[list[_Buffered]], bool]:
        for v in values:
            if isinstance(v, list):  # ticks of a small source batch
                self._buf.extend(v)
                self._n += len(v)
            else:
                self._buf.append(v)
                self._n += v[1].num_rows
        if self._due is None:
            self._due = _utcnow() + self._wait
        if self._n >= self._rows:
            return self._flush()
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[list[_Buffered]], bool]:
        return self._flush()

    def on_eof(self) -> tuple[list[list[_Buffered]], bool]:
        return self._flush()

    def notify_at(self) -> datetime | None:
        return self._due

    def snapshot(self) -> list[_Buffered]:
        return list(self._buf)

    def _flush(self) -> tuple[list[list[_Buffered]], bool]:
        out, self._buf, self._n, self._due = self._buf, [], 0, None
        return ([out] if out else []), StatefulBatchLogic.RETAIN


def _utcnow() -> datetime:
    # A flush timer in the engine's own time, as bytewax's collect uses; not operator logic.
    return datetime.now(UTC)


def _dead_out(dl: DeadLetter) -> Outgoing:
    return Outgoing(DLQ_SUBJECT, msgspec.json.encode(dl))


def build_flow(
    config: DeltaTicksConfig,
    *,
    source: Source[Message] | None = None,
    dlq_sink: Sink[Outgoing] | None = None,
    storage_options: dict[str, str] | None = None,
    accounting: Accounting | None = None,
    shards: int = 1,
    stream: str = "MD",
    flow_id: str = "ticks_sink",
    rules: RulesConfig | None = DEFAULT_RULES,
    instruments: Collection[str] | None = None,
    small_batch: int = SMALL_BATCH,
) -> Dataflow:
    """The ticks-sink dataflow. ``source``/``dlq_sink`` default to JetStream/NATS from env.

    ``rules`` is the input quality gate (the ``ticks`` rules without order checks, see
    :class:`sinks.delta.TickRules`); None turns it off. ``instruments`` also refuses
    unknown instruments; None knows them all. Source batches under ``small_batch``
    messages are checked record by record (see :data:`SMALL_BATCH`).
    """
    if source is None or dlq_sink is None:
        from trade2026.natsconf import NatsConfig

        nats_config = NatsConfig.from_env()
        if source is None:
            from sources.nats import JetStreamSource

            # Nothing here reads headers (the receive time still comes from T26-Recv-Ns):
            # skipping their parse is ~14 % more ticks/s (docs/benchmarks.md).
            source = JetStreamSource(stream, "md.ticks.>", nats_config, keep_headers=False)
        if dlq_sink is None:
            from sinks.nats import NatsSink

            dlq_sink = NatsSink(nats_config)

    flow = Dataflow(flow_id)
    msgs = op.input("md_ticks", flow, source)
    check = _Check(accounting, rules, instruments, small_batch)
    checked = op.flat_map_batch("check", msgs, _Grouped(check, max(shards, 1)))
    split = op.branch("split", checked, lambda x: isinstance(x, DeadLetter))
    dead: Any = split.trues
    good: Any = split.falses
    op.output("dlq", op.map("dlq_encode", dead, _dead_out), dlq_sink)
    wait = timedelta(milliseconds=config.batch_ms)
    batches = op.stateful_batch(
        "batch", good, lambda state: _Batcher(config.batch_rows, wait, state)
    )
    op.output(
        "delta",
        batches,
        DeltaTickSink(config, storage_options=storage_options, accounting=accounting),
    )
    return flow
