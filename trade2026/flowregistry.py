"""The flows ``trade2026 run`` can launch, each a function that builds a production Dataflow.

The table is explicit code (no plugins found by name at run time): adding a flow means
adding a function here that wires its sources and sinks from a :class:`RunContext`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bytewax.dataflow import Dataflow

from trade2026.accounting import Accounting
from trade2026.natsconf import NatsConfig

if TYPE_CHECKING:
    from sources.nats import NatsSource


@dataclass(frozen=True)
class RunContext:
    nats: NatsConfig
    workers: int = 1
    accounting: Accounting = field(default_factory=Accounting)
    #: Stop after this many input messages (batch jobs, the demo); None runs forever.
    stop_after: int | None = None
    #: Stop when no input arrived for this long (seconds); None runs forever.
    idle_timeout_s: float | None = None


def build_normalize(ctx: RunContext) -> tuple[Dataflow, NatsSource]:
    """The normalize flow over NATS, and its source (whose stats show when it subscribed)."""
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
    return build_flow(source, NatsSink(ctx.nats), accounting=ctx.accounting), source


def _normalize(ctx: RunContext) -> Dataflow:
    return build_normalize(ctx)[0]


FLOWS: dict[str, Callable[[RunContext], Dataflow]] = {
    "normalize": _normalize,
}
