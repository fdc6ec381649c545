"""The flows ``trade2026 run`` can launch, each a function that builds a production Dataflow.

The table is explicit code (no plugins found by name at run time): adding a flow means
adding a function here that wires its sources and sinks from a :class:`RunContext`.

Market data runs on JetStream by default (``normalize``, ``ticks-sink``): inputs resume
from the stream sequence after a crash and outputs carry ``Nats-Msg-Id``, so recovery
gives exactly-once effects (docs/recovery.md). ``normalize-core`` is the same flow on
core NATS: lower latency, but at-most-once and with nothing to resume from.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bytewax.dataflow import Dataflow

from trade2026.accounting import Accounting
from trade2026.natsconf import NatsConfig

if TYPE_CHECKING:
    from operators.quality.tap import Quality
    from sources.nats import NatsSource
    from trade2026.observability import FlowMetrics

#: Where local state lives by default (recovery snapshots, Delta tables, spill files).
STATE_DIR_ENV = "TRADE2026_STATE_DIR"
DELTA_ROOT_ENV = "TRADE2026_DELTA_ROOT"


def state_dir() -> str:
    return os.environ.get(STATE_DIR_ENV) or "var"


def delta_root() -> str:
    return os.environ.get(DELTA_ROOT_ENV) or os.path.join(state_dir(), "lake")


@dataclass(frozen=True)
class RunContext:
    nats: NatsConfig
    workers: int = 1
    accounting: Accounting = field(default_factory=Accounting)
    #: Stop after this many input messages (batch jobs, the demo); None runs forever.
    stop_after: int | None = None
    #: Stop when no input arrived for this long (seconds); None runs forever.
    idle_timeout_s: float | None = None
    #: Connector gauges (consumer lag, disconnects, sink backlog) for /metrics.
    metrics: FlowMetrics | None = None


def _ensure_market_streams(ctx: RunContext) -> None:
    from flows.pipeline import ensure_streams
    from trade2026.natsloop import NatsLoop

    loop = NatsLoop.acquire()
    try:
        nc = loop.connect(ctx.nats)
        loop.run(ensure_streams(nc.jetstream()))
        loop.run(nc.close())
    finally:
        NatsLoop.release(loop)


def build_normalize(
    ctx: RunContext, *, quality: Quality | None = None
) -> tuple[Dataflow, NatsSource]:
    """The normalize flow over core NATS, and its source (whose stats show when it subscribed)."""
    from flows.normalize import build_flow
    from sinks.nats import NatsSink
    from sources.nats import NatsSource

    source = NatsSource(
        "md.raw.>",
        ctx.nats,
        # One partition per worker, split by subject hash, so each instrument's
        # raw stream stays in order on one worker.
        hash_partitions=max(1, ctx.workers),
        stop_after=ctx.stop_after,
        idle_timeout_s=ctx.idle_timeout_s,
    )
    sink = NatsSink(ctx.nats)
    if ctx.metrics is not None:
        ctx.metrics.watch_source("md.raw", source)
        ctx.metrics.watch_sink("nats", sink)
    return build_flow(source, sink, accounting=ctx.accounting, quality=quality), source


def _quality(ctx: RunContext, *stages: str) -> Quality:
    """Per-record rules and per-batch suites for these stages (docs/quality.md)."""
    from flows.quality import production_quality

    return production_quality(ctx, *stages)


def _normalize_core(ctx: RunContext) -> Dataflow:
    return build_normalize(ctx, quality=_quality(ctx, "raw", "ticks"))[0]


def _normalize(ctx: RunContext) -> Dataflow:
    from flows.pipeline import build_normalize_jetstream

    _ensure_market_streams(ctx)
    flow, source, sink = build_normalize_jetstream(ctx, quality=_quality(ctx, "raw", "ticks"))
    if ctx.metrics is not None:
        ctx.metrics.watch_source("MD_RAW", source)
        ctx.metrics.watch_sink("jetstream", sink)
    return flow


def _ticks_sink(ctx: RunContext) -> Dataflow:
    from flows.pipeline import build_ticks_sink_jetstream

    _ensure_market_streams(ctx)
    flow, source = build_ticks_sink_jetstream(ctx, delta_root())
    if ctx.metrics is not None:
        ctx.metrics.watch_source("MD", source)
    return flow


def _alt_sink(ctx: RunContext) -> Dataflow:
    from flows.alt_sink import build_flow
    from sinks.alt import AltConfig
    from sinks.nats import NatsSink
    from sources.nats import NatsSource

    source = NatsSource(
        "alt.raw.>", ctx.nats, stop_after=ctx.stop_after, idle_timeout_s=ctx.idle_timeout_s
    )
    return build_flow(
        AltConfig(root=os.path.join(delta_root(), "alt")),
        source=source,
        dlq_sink=NatsSink(ctx.nats),
        accounting=ctx.accounting,
        quality=_quality(ctx, "alt"),
    )


def _features(ctx: RunContext) -> Dataflow:
    import msgspec

    from flows.features import FeatureOutputs, build_flow
    from schemas.transport import Outgoing
    from sinks.features import FeatureStoreSink
    from sinks.mapped import MappedSink
    from sinks.nats import NatsSink
    from sources.nats import NatsSource

    encode = msgspec.json.Encoder().encode
    nats_sink = NatsSink(ctx.nats)
    source = NatsSource(
        ["md.ticks.>", "fills.>", "positions.>"],
        ctx.nats,
        stop_after=ctx.stop_after,
        idle_timeout_s=ctx.idle_timeout_s,
    )
    store: Any = FeatureStoreSink()  # one sink takes bars and account windows alike
    outputs = FeatureOutputs(
        bars=store,
        late=MappedSink(nats_sink, lambda r: Outgoing("features.late", encode(r))),
        dead_letters=MappedSink(nats_sink, lambda r: Outgoing("dlq.features", encode(r))),
        accounts=store,
    )
    return build_flow(source, outputs, quality=_quality(ctx, "features"))


def _orders(ctx: RunContext) -> Dataflow:
    from flows.orders import production_flow

    return production_flow(ctx)


def _venue(ctx: RunContext) -> Dataflow:
    from flows.venue import production_flow

    return production_flow(ctx)


def _portfolio(ctx: RunContext) -> Dataflow:
    from flows.portfolio import production_flow

    return production_flow(ctx)


def _tca(ctx: RunContext) -> Dataflow:
    from flows.tca import production_flow

    return production_flow(ctx)


def _store(ctx: RunContext) -> Dataflow:
    from flows.store import production_flow

    return production_flow(ctx)


def _hotcache(ctx: RunContext) -> Dataflow:
    from flows.hotcache import production_flow

    return production_flow(ctx)


FLOWS: dict[str, Callable[[RunContext], Dataflow]] = {
    "normalize": _normalize,
    "normalize-core": _normalize_core,
    "ticks-sink": _ticks_sink,
    "alt-sink": _alt_sink,
    "features": _features,
    "orders": _orders,
    "venue": _venue,
    "portfolio": _portfolio,
    "tca": _tca,
    "store": _store,
    "hotcache": _hotcache,
}
