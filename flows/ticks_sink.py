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
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
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
    checked = op.flat_map_batch("check", msgs, _Check(accounting))
    split = op.branch("split", checked, lambda x: isinstance(x, Stamped))
    dead: Any = split.falses
    good: Any = split.trues
    op.output("dlq", op.map("dlq_encode", dead, _dead_out), dlq_sink)
    keyed = op.key_on("shard", good, lambda s: str(zlib.crc32(s.origin.encode()) % max(shards, 1)))
    batches = op.collect(
        "batch", keyed, timedelta(milliseconds=config.batch_ms), max_size=config.batch_rows
    )
    op.output(
        "delta",
        batches,
        DeltaTickSink(config, storage_options=storage_options, accounting=accounting),
    )
    return flow
