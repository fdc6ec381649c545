"""``alt.raw.<source>`` into ``<root>/alt/<source>`` Delta tables.

Graph: NATS ``alt.raw.>`` -> validate against the source's declared schema
(dead letters -> ``dlq.alt_sink``) -> key by source -> collect (rows, time) ->
:class:`sinks.alt.AltDeltaSink`, which commits synchronously in ``write_batch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from schemas.alt import ALT_SOURCES, AltSource
from schemas.canonical import DeadLetter
from schemas.transport import Message, Outgoing
from sinks.alt import STAGE, AltConfig, AltDeltaSink, AltRecord, AltTableWriter
from trade2026.accounting import Accounting

if TYPE_CHECKING:
    from operators.quality.tap import Quality, QualityConfig

__all__ = ["DLQ_SUBJECT", "build_flow"]

DLQ_SUBJECT = f"dlq.{STAGE}"


def build_flow(
    config: AltConfig,
    *,
    source: Source[Message] | None = None,
    dlq_sink: Sink[Outgoing] | None = None,
    storage_options: dict[str, str] | None = None,
    accounting: Accounting | None = None,
    sources: Mapping[str, AltSource] = ALT_SOURCES,
    flow_id: str = "alt_sink",
    quality: QualityConfig | Quality | None = None,
) -> Dataflow:
    """``quality`` judges each valid record before it is written (``dlq.alt``, accounting
    ``quality.alt``; its dead letters also count as the alt sink's own)."""
    if source is None or dlq_sink is None:
        from trade2026.natsconf import NatsConfig

        nats_config = NatsConfig.from_env()
        if source is None:
            from sources.nats import NatsSource

            source = NatsSource("alt.raw.>", nats_config)
        if dlq_sink is None:
            from sinks.nats import NatsSink

            dlq_sink = NatsSink(nats_config)
    sink = AltDeltaSink(config, storage_options=storage_options, sources=sources)

    def check(msg: Message) -> AltRecord | DeadLetter:
        parts = msg.subject.split(".")
        name = parts[2] if len(parts) == 3 else ""
        if name not in sources:
            if accounting is not None:
                accounting.add(STAGE, {("-", "in"): 1, ("-", "dead_lettered"): 1})
                accounting.add_reasons(STAGE, ["UNKNOWN_SOURCE"])
            return DeadLetter(
                STAGE,
                "UNKNOWN_SOURCE",
                f"no declared schema for {msg.subject!r}",
                msg.data,
                msg.subject,
                None,
                msg.ts_recv,
            )
        writer: AltTableWriter = sink.writer(name)
        writer.accounting = accounting
        return writer.check(msg.data, origin=msg.subject, seq=msg.seq, ts_recv=msg.ts_recv)

    flow = Dataflow(flow_id)
    msgs = op.input("alt_raw", flow, source)
    checked = op.map("check", msgs, check)
    split = op.branch("split", checked, lambda x: isinstance(x, AltRecord))
    dead: Any = split.falses
    good: Any = split.trues
    op.output(
        "dlq",
        op.map("dlq_encode", dead, lambda d: Outgoing(DLQ_SUBJECT, msgspec.json.encode(d))),
        dlq_sink,
    )
    if quality is not None:
        good = _quality_tap(good, quality, accounting, dlq_sink)
    keyed = op.key_on("by_source", good, lambda r: r.source)
    batches = op.collect(
        "batch", keyed, timedelta(milliseconds=config.batch_ms), max_size=config.batch_rows
    )
    op.output("delta", batches, sink)
    return flow


def _alt_view(record: AltRecord) -> dict[str, Any]:
    """What the alt rule and suite judge: the row with its source."""
    return {**record.row, "source": record.source}


def _quality_tap(
    good: Any,
    quality: QualityConfig | Quality,
    accounting: Accounting | None,
    dlq_sink: Sink[Outgoing],
) -> Any:
    from flows.quality import dead_letter_out, quality_tap
    from operators.quality.tap import build_quality
    from schemas.instruments import load_instruments

    q = build_quality(quality, load_instruments(), accounting)
    if q is None or not q.enabled("alt"):
        return good
    tap = q.tap("alt", view=_alt_view, host_stage=STAGE if accounting is not None else None)
    ok, dead = quality_tap("quality_alt", good, tap)
    op.output("quality_dlq", op.map("quality_dlq_encode", dead, dead_letter_out), dlq_sink)
    return ok
