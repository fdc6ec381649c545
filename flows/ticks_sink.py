"""``md.ticks.>`` from JetStream into the Delta tick tables.

Graph::

    JetStream md.ticks.>  ->  decode + schema check  ->  dead letters -> dlq.ticks_sink
                                                    \\->  key by writer shard
                                                         -> collect(rows, time)
                                                         -> DeltaTickSink (commits)

``collect`` is the micro-batcher (``batch_rows`` or ``batch_ms``, whichever first);
its buffer is Bytewax state, so it is part of the recovery snapshot. Subjects are
sharded by ``crc32(subject) % shards`` so one subject always meets the same writer,
which the per-subject application transaction ids rely on.
"""

from __future__ import annotations

import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from schemas.canonical import DeadLetter, Tick
from schemas.transport import Message, Outgoing
from sinks.delta import STAGE, DeltaTicksConfig, DeltaTickSink, Stamped, tick_misfit
from trade2026.accounting import DEAD_LETTERED, IN, UNKNOWN_INSTRUMENT, Accounting

__all__ = ["DLQ_SUBJECT", "build_flow", "check_message"]

DLQ_SUBJECT = f"dlq.{STAGE}"
_decoder = msgspec.json.Decoder(Tick)


def check_message(msg: Message, accounting: Accounting | None = None) -> Stamped | DeadLetter:
    """Decode one bus message and check it fits its table; never raises on bad input."""
    return _Check(accounting)([msg])[0]


class _Check:
    """Decode and schema-check a batch; accounting is updated once per batch, not per tick."""

    def __init__(self, accounting: Accounting | None) -> None:
        self._accounting = accounting

    def __call__(self, batch: list[Message]) -> list[Stamped | DeadLetter]:
        out: list[Stamped | DeadLetter] = []
        seen: Counter[str] = Counter()
        dead: Counter[str] = Counter()
        reasons: list[str] = []
        for msg in batch:
            try:
                tick = _decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                seen[UNKNOWN_INSTRUMENT] += 1
                dead[UNKNOWN_INSTRUMENT] += 1
                reasons.append("DECODE_ERROR")
                out.append(
                    DeadLetter(
                        STAGE, "DECODE_ERROR", str(exc), msg.data, msg.subject, None, msg.ts_recv
                    )
                )
                continue
            seen[tick.instrument_id] += 1
            why = tick_misfit(tick)
            if why is None:
                out.append(Stamped(msg.subject, msg.seq, tick))
                continue
            dead[tick.instrument_id] += 1
            reasons.append("SCHEMA_MISMATCH")
            out.append(
                DeadLetter(
                    STAGE,
                    "SCHEMA_MISMATCH",
                    why,
                    msg.data,
                    msg.subject,
                    tick.instrument_id,
                    msg.ts_recv,
                )
            )
        if self._accounting is not None:
            counts = {(inst, IN): n for inst, n in seen.items()}
            counts.update({(inst, DEAD_LETTERED): n for inst, n in dead.items()})
            self._accounting.add(STAGE, counts)
            if reasons:
                self._accounting.add_reasons(STAGE, reasons)
        return out


class _Grouped:
    """Check a source batch, then hand on its good ticks as one list per shard.

    Bytewax pays its per-item cost once per (batch, shard) instead of once per tick.
    A shard is a hash of the subject, so one subject always lands on one worker.
    """

    def __init__(self, check: _Check, shards: int) -> None:
        self._check = check
        self._shards = shards

    def __call__(self, batch: list[Message]) -> list[DeadLetter | tuple[str, list[Stamped]]]:
        out: list[DeadLetter | tuple[str, list[Stamped]]] = []
        groups: dict[str, list[Stamped]] = {}
        for rec in self._check(batch):
            if isinstance(rec, DeadLetter):
                out.append(rec)
            else:
                key = (
                    str(zlib.crc32(rec.origin.encode()) % self._shards) if self._shards > 1 else "0"
                )
                groups.setdefault(key, []).append(rec)
        out.extend(groups.items())
        return out


class _Batcher(StatefulBatchLogic[list[Stamped], list[Stamped], list[Stamped]]):
    """Accumulate ticks until ``rows`` or ``wait`` after the first, then emit one commit.

    The buffer is Bytewax state, so ticks the source has moved past are in the snapshot
    until they are committed: nothing is acknowledged that was not written.
    """

    def __init__(self, rows: int, wait: timedelta, state: list[Stamped] | None) -> None:
        self._rows = rows
        self._wait = wait
        self._buf: list[Stamped] = list(state or [])
        self._due: datetime | None = _utcnow() + wait if self._buf else None

    def on_batch(self, values: list[list[Stamped]]) -> tuple[list[list[Stamped]], bool]:
        for v in values:
            self._buf.extend(v)
        if self._due is None:
            self._due = _utcnow() + self._wait
        if len(self._buf) >= self._rows:
            return self._flush()
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[list[Stamped]], bool]:
        return self._flush()

    def on_eof(self) -> tuple[list[list[Stamped]], bool]:
        return self._flush()

    def notify_at(self) -> datetime | None:
        return self._due

    def snapshot(self) -> list[Stamped]:
        return list(self._buf)

    def _flush(self) -> tuple[list[list[Stamped]], bool]:
        out, self._buf, self._due = self._buf, [], None
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
) -> Dataflow:
    """The ticks-sink dataflow. ``source``/``dlq_sink`` default to JetStream/NATS from env."""
    if source is None or dlq_sink is None:
        from trade2026.natsconf import NatsConfig

        nats_config = NatsConfig.from_env()
        if source is None:
            from sources.nats import JetStreamSource

            source = JetStreamSource(stream, "md.ticks.>", nats_config)
        if dlq_sink is None:
            from sinks.nats import NatsSink

            dlq_sink = NatsSink(nats_config)

    flow = Dataflow(flow_id)
    msgs = op.input("md_ticks", flow, source)
    checked = op.flat_map_batch("check", msgs, _Grouped(_Check(accounting), max(shards, 1)))
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
