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
    try:
        tick = _decoder.decode(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        if accounting is not None:
            accounting.add(
                STAGE, {(UNKNOWN_INSTRUMENT, IN): 1, (UNKNOWN_INSTRUMENT, DEAD_LETTERED): 1}
            )
            accounting.add_reasons(STAGE, ["DECODE_ERROR"])
        return DeadLetter(STAGE, "DECODE_ERROR", str(exc), msg.data, msg.subject, None, msg.ts_recv)
    why = tick_misfit(tick)
    counts: Counter[tuple[str, str]] = Counter({(tick.instrument_id, IN): 1})
    if why is not None:
        counts[(tick.instrument_id, DEAD_LETTERED)] += 1
        if accounting is not None:
            accounting.add(STAGE, counts)
            accounting.add_reasons(STAGE, ["SCHEMA_MISMATCH"])
        return DeadLetter(
            STAGE, "SCHEMA_MISMATCH", why, msg.data, msg.subject, tick.instrument_id, msg.ts_recv
        )
    if accounting is not None:
        accounting.add(STAGE, counts)
    return Stamped(msg.subject, msg.seq, tick)


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
    checked = op.map("check", msgs, lambda m: check_message(m, accounting))
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
