"""The feature flow on Quix Streams: a Kafka ticks topic in, bars and late records out.

Windows are Quix's own grouped tumbling windows (``tumbling_window(..., grace_ms)``, one
per width, ``collect().final()``), keyed by the Kafka key, which is the instrument id.
The bar of a closed window is computed by :class:`operators.features.InstrumentBars`
from the window's collected ticks, so OHLC, volumes, VWAP and the rest are exactly the
Bytewax flow's (:mod:`flows.features`). That they also close the same windows and call
the same records late follows from the two rules matching:

* Bytewax operator: a window ``[s, e)`` closes once ``max(ts_event) - lateness >= e``;
  a record is late when its window's ``e <= max(ts_event) - lateness`` already.
* Quix, per key: a window closes and a record is late when ``e <= latest_ts - grace_ms``.

With ``grace_ms = lateness`` and millisecond-floored timestamps these are the same
condition, because widths and lateness are whole milliseconds (see
:func:`engines.quix.app.ns_to_ms`). ``grace_ms`` is what makes a replayed backlog work:
with 0, every record behind the newest of its key (quotes run ~1.3 s behind trades in
the sample) would be dropped as late.

Differences from the Bytewax engine, all deliberate:

* No end of stream on Kafka: a key's last windows stay open until newer data of that
  key arrives (Bytewax flushes them at EOF of a bounded input).
* ``LateRecord.watermark`` is millisecond precise (Quix tracks ms).
* Late records leave through a branch defined after the windows (Quix runs branches in
  definition order for each message), so they share the application's checkpoints.
* Account windows (fills/positions) are not run here: their running P&L crosses windows,
  which Quix's per-window aggregation does not carry. They stay on the Bytewax engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from engines.quix.app import KafkaConfig, attach_meter, make_application, ns_to_ms, topic_config
from flows.features import STAGE, decode
from operators.features import FeatureConfig, InstrumentBars, width_label
from schemas.canonical import DeadLetter, Quote, TradeTick
from schemas.common import NANOS_PER_MILLI
from schemas.features import Bar, LateRecord
from schemas.transport import Message

if TYPE_CHECKING:
    from quixstreams import Application

    from trade2026.observability import FlowMetrics

__all__ = [
    "BARS_TOPIC",
    "DLQ_TOPIC",
    "LATE_TOPIC",
    "TICKS_TOPIC",
    "bar_from_window",
    "build_app",
]

TICKS_TOPIC = "ticks"
BARS_TOPIC = "features.bars"
LATE_TOPIC = "features.late"
DLQ_TOPIC = f"dlq.{STAGE}"
KEY_MISMATCH = "KEY_MISMATCH"

_tick_decoder = msgspec.json.Decoder(TradeTick | Quote)


def bar_from_window(width_ns: int, collected: list[str]) -> Bar:
    """One closed window's bar, from its ticks (canonical JSON) in arrival order.

    The ticks are replayed, sorted by event time (stable, so equal times keep arrival
    order), through a fresh :class:`InstrumentBars` with no lateness: none can be late
    or close the window early, and ``flush`` yields exactly this window's bar.
    """
    ticks = [_tick_decoder.decode(s) for s in collected]
    ticks.sort(key=lambda t: t.ts_event)
    bars = InstrumentBars(ticks[0].instrument_id, width_ns, 0)
    for t in ticks:
        bars.on_tick(t)
    (bar,) = bars.flush()
    return bar


class _LateBuffer:
    """Late records seen by the window callbacks, drained by the branch after them."""

    def __init__(self) -> None:
        self.pending: list[LateRecord] = []

    def callback(self, width_ns: int) -> Any:
        stage = f"{STAGE}.bars.{width_label(width_ns)}"

        def on_late(
            value: Any,
            key: Any,
            timestamp_ms: int,
            late_by_ms: int,
            start: int,
            end: int,
            name: str,
            topic: str,
            partition: int,
            offset: int,
        ) -> bool:
            tick = _tick_decoder.decode(value)
            self.pending.append(
                LateRecord(
                    stage=stage,
                    key=key if isinstance(key, str) else bytes(key).decode(),
                    width_ns=width_ns,
                    ts_event=tick.ts_event,
                    watermark=(timestamp_ms + late_by_ms) * NANOS_PER_MILLI,
                    window_start_ns=start * NANOS_PER_MILLI,
                    record=msgspec.Raw(value.encode()),
                )
            )
            return False  # routed to the late topic; no warning per record

        return on_late

    def drain(self, _value: Any) -> list[bytes]:
        out = [msgspec.json.encode(r) for r in self.pending]
        self.pending.clear()
        return out


def build_app(
    kafka: KafkaConfig,
    config: FeatureConfig | None = None,
    *,
    topic: str = TICKS_TOPIC,
    bars_topic: str = BARS_TOPIC,
    late_topic: str = LATE_TOPIC,
    dlq_topic: str = DLQ_TOPIC,
    metrics: FlowMetrics | None = None,
) -> Application:
    """The feature application; ``app.run()`` runs it until interrupted.

    Input values are canonical records as JSON (``md.ticks.*`` payloads), keyed by
    instrument id. Trades and quotes are windowed; book deltas and data gaps are skipped
    on purpose, as in the Bytewax flow; undecodable bytes and ticks whose Kafka key is
    not their instrument id become dead letters (the latter would be windowed with
    another instrument's ticks).
    """
    cfg = config or FeatureConfig()
    grace_ms = ns_to_ms(cfg.allowed_lateness_ns)
    if grace_ms * NANOS_PER_MILLI != cfg.allowed_lateness_ns or any(
        w % NANOS_PER_MILLI for w in cfg.widths_ns
    ):
        raise ValueError(
            "features on quix: widths and allowed lateness must be whole milliseconds; "
            "hint: Kafka timestamps are ms, use e.g. 1_000_000_000 ns"
        )
    app = make_application(kafka)
    tc = topic_config(kafka)
    source = app.topic(topic, value_deserializer="bytes", key_deserializer="str", config=tc)
    out = {
        name: app.topic(name, value_serializer="bytes", key_serializer="str", config=tc)
        for name in (bars_topic, late_topic, dlq_topic)
    }

    def decode_one(value: bytes, key: Any, timestamp: int, headers: Any) -> Any:
        rec = decode(Message(topic, value, timestamp * NANOS_PER_MILLI))
        if isinstance(rec, TradeTick | Quote) and rec.instrument_id != key:
            return DeadLetter(
                stage=STAGE,
                reason=KEY_MISMATCH,
                detail=f"{STAGE}: Kafka key {key!r} is not instrument_id "
                f"{rec.instrument_id!r}; hint: key the topic by instrument id "
                "(trade2026 bridge does)",
                payload=value,
                subject=topic,
                instrument_id=rec.instrument_id,
                ts_recv=rec.ts_recv,
            )
        return rec

    sdf = app.dataframe(source).apply(decode_one, metadata=True)
    dead = sdf.filter(lambda v: isinstance(v, DeadLetter))
    dead.apply(msgspec.json.encode).to_topic(out[dlq_topic])

    ticks = sdf.filter(lambda v: isinstance(v, TradeTick | Quote))
    ticks = ticks.set_timestamp(lambda v, k, ts, h: ns_to_ms(v.ts_event))
    # Window state must be JSON: keep the canonical JSON text of each tick.
    ticks = ticks.apply(lambda t: msgspec.json.encode(t).decode())

    late = _LateBuffer()
    for width in cfg.widths_ns:
        windows = ticks.tumbling_window(
            duration_ms=width // NANOS_PER_MILLI,
            grace_ms=grace_ms,
            name=f"bars_{width_label(width)}",
            on_late=late.callback(width),
        )
        bars = windows.collect().final(closing_strategy="key")
        bars.apply(
            lambda w, width=width: msgspec.json.encode(bar_from_window(width, w["value"]))
        ).to_topic(out[bars_topic])
    # Defined after the windows, so it runs after them for every message (see module doc).
    ticks.apply(late.drain, expand=True).to_topic(out[late_topic])
    attach_meter(sdf, metrics, f"{STAGE}.{topic}")  # per checkpoint: see attach_meter
    return app
