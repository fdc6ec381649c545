"""The production wiring of the market-data path on JetStream, resumable and idempotent.

Why this exists beside :func:`trade2026.flowregistry.build_normalize`: that one reads
core NATS (``md.raw.>``), which is at-most-once and has no position to resume from, and
publishes with core NATS, which cannot de-duplicate. Bytewax recovery replays the output
of the epoch a crash interrupted, so for recovery to give exactly-once *effects* both
ends must be on JetStream:

* input: :class:`~sources.nats.JetStreamSource` on the ``MD_RAW`` stream; its resume
  state is the stream sequence, so a restarted flow continues where the snapshot was;
* output: :class:`~sinks.nats.JetStreamSink` with a ``Nats-Msg-Id`` derived from the
  record itself (:func:`normalize_msg_id`), so a replayed publish is dropped by the
  stream's duplicate window instead of stored twice.

Streams (:data:`STREAMS`): ``MD_RAW`` (``md.raw.>``), ``MD`` (``md.ticks.>``,
``md.gaps.>``; what :mod:`flows.ticks_sink` reads) and ``DLQ`` (``dlq.>``). Every subject
the normalize flow publishes must land in one of them, or the sink cannot get an ack.

``python -m flows.pipeline normalize|ticks-sink ...`` runs one flow with recovery; the
kill -9 test drives it. It is a runner for tests and operators, not a second CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from schemas.transport import Outgoing
from trade2026.accounting import Accounting
from trade2026.natsconf import NatsConfig

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow

    from operators.quality.tap import Quality
    from sinks.nats import JetStreamSink
    from sources.nats import JetStreamSource
    from trade2026.flowregistry import RunContext

__all__ = [
    "DUPLICATE_WINDOW",
    "STREAMS",
    "build_normalize_jetstream",
    "build_ticks_sink_jetstream",
    "ensure_streams",
    "main",
    "normalize_msg_id",
]

#: Stream name -> subjects it captures.
STREAMS: dict[str, list[str]] = {
    "MD_RAW": ["md.raw.>"],
    "MD": ["md.ticks.>", "md.gaps.>"],
    "DLQ": ["dlq.>"],
}
#: How long the output streams remember a Nats-Msg-Id. A replay after a crash repeats
#: publishes first made up to one epoch before the crash, *plus the downtime*: a flow
#: down longer than this window would store its replayed output twice. Ten minutes
#: covers a restart by a supervisor with a wide margin; the cost is the server keeping
#: the ids of ten minutes of output in memory.
DUPLICATE_WINDOW = timedelta(minutes=10)


class _Ids(msgspec.Struct, frozen=True):
    """Just the identifying fields of any normalize output (unknown fields are ignored)."""

    kind: str = ""
    instrument_id: str | None = None
    trade_id: str | None = None
    update_id: int | None = None
    first_update_id: int | None = None
    last_update_id: int | None = None
    is_snapshot: bool = False
    stream: str | None = None
    problem: str | None = None
    expected: int | None = None
    received: int | None = None


_ids_decoder = msgspec.json.Decoder(_Ids)


def _digest(item: Outgoing) -> str:
    h = hashlib.blake2b(item.subject.encode(), digest_size=16)
    h.update(b"\0")
    h.update(item.data)
    return h.hexdigest()


def normalize_msg_id(item: Outgoing) -> str:
    """A deterministic ``Nats-Msg-Id`` for one output of the normalize flow.

    Ticks are named by what the venue calls them (instrument, kind and venue id), the
    same identity the normalizer de-duplicates on, so a replayed tick gets the id it had
    the first time even if its receive time was re-stamped. Gap reports are named by
    what they report. Anything else (dead letters) is named by a hash of subject and
    bytes: a dead letter repeats byte for byte when its input carried the
    ``T26-Recv-Ns`` header, which JetStream-recorded raw data does.
    """
    try:
        ids = _ids_decoder.decode(item.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return f"h:{_digest(item)}"
    iid = ids.instrument_id
    if ids.kind == "trade" and iid and ids.trade_id is not None:
        return f"t:{iid}:{ids.trade_id}"
    if ids.kind == "quote" and iid and ids.update_id is not None:
        return f"q:{iid}:{ids.update_id}"
    if ids.kind == "book_delta" and iid and ids.last_update_id is not None:
        snap = "s" if ids.is_snapshot else "d"
        return f"b:{iid}:{ids.first_update_id}-{ids.last_update_id}:{snap}"
    if ids.kind == "data_gap" and iid:
        return f"g:{iid}:{ids.stream}:{ids.problem}:{ids.expected}:{ids.received}"
    return f"h:{_digest(item)}"


async def ensure_streams(
    js: Any,
    streams: dict[str, list[str]] | None = None,
    *,
    duplicate_window: timedelta = DUPLICATE_WINDOW,
    max_age_s: float = 0.0,
    max_bytes: int = 0,
) -> None:
    """Create the pipeline's streams if missing (file storage, the duplicate window set).

    ``max_age_s``/``max_bytes`` (0: unlimited) bound each new stream, the oldest messages
    discarded first; the order path passes its :class:`~trade2026.orderclient.StreamLimits`.
    An existing stream is left as it is.
    """
    from nats.js import api
    from nats.js.errors import BadRequestError, NotFoundError

    for name, subjects in (streams or STREAMS).items():
        try:
            await js.stream_info(name)
            continue
        except NotFoundError:
            pass
        config = api.StreamConfig(
            name=name,
            subjects=subjects,
            storage=api.StorageType.FILE,
            duplicate_window=duplicate_window.total_seconds(),
            max_age=max_age_s or None,
            max_bytes=max_bytes or None,
            discard=api.DiscardPolicy.OLD,
        )
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            # Another process made it between our look and our create (flows start
            # together): fine. Anything else (an overlapping stream) is raised.
            try:
                await js.stream_info(name)
            except NotFoundError:
                raise exc from None


def build_normalize_jetstream(
    ctx: RunContext, *, raw_stream: str = "MD_RAW", quality: Quality | None = None
) -> tuple[Dataflow, JetStreamSource, JetStreamSink]:
    """The normalize flow from the raw stream to JetStream, with its source and sink.

    The drop-in replacement proposed for ``build_normalize`` (see docs/recovery.md).
    """
    from flows.normalize import build_flow
    from sinks.nats import JetStreamSink
    from sources.nats import JetStreamSource

    source = JetStreamSource(
        raw_stream,
        "md.raw.>",
        ctx.nats,
        hash_partitions=max(1, ctx.workers),
        stop_after=ctx.stop_after,
        idle_timeout_s=ctx.idle_timeout_s,
    )
    # Every output carries its own Nats-Msg-Id (build_flow(msg_ids=True)); the function
    # here only backs up anything that arrives without one.
    sink = JetStreamSink(ctx.nats, msg_id=normalize_msg_id)
    flow = build_flow(source, sink, accounting=ctx.accounting, msg_ids=True, quality=quality)
    return flow, source, sink


def build_ticks_sink_jetstream(
    ctx: RunContext, root: str, *, stream: str = "MD"
) -> tuple[Dataflow, JetStreamSource]:
    """The Delta tick sink over the ``MD`` stream, dead letters to JetStream ``DLQ``."""
    from flows.ticks_sink import build_flow
    from sinks.delta import DeltaTicksConfig
    from sinks.nats import JetStreamSink
    from sources.nats import JetStreamSource

    source = JetStreamSource(
        stream,
        "md.ticks.>",
        ctx.nats,
        keep_headers=False,  # nothing downstream reads them: ~14 % more ticks/s
        stop_after=ctx.stop_after,
        idle_timeout_s=ctx.idle_timeout_s,
    )
    dlq = JetStreamSink(ctx.nats, msg_id=_digest)
    flow = build_flow(
        DeltaTicksConfig(root=root, batch_rows=50_000, batch_ms=1_000),
        source=source,
        dlq_sink=dlq,
        accounting=ctx.accounting,
        stream=stream,
    )
    return flow, source


class _ResumeLogger:
    """Prints each source partition's resume state, so a test can see recovery happen."""

    def __init__(self, source: JetStreamSource) -> None:
        original = source.build_part

        def build_part(step_id: str, for_part: str, resume_state: int | None) -> Any:
            print(f"resume {for_part} {resume_state}", file=sys.stderr, flush=True)
            return original(step_id, for_part, resume_state)

        source.build_part = build_part  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one pipeline flow with recovery until its input is idle (see module doc)."""
    from bytewax.run import cli_main

    from trade2026.flowregistry import RunContext
    from trade2026.recovery import RecoverySettings, run_kwargs

    p = argparse.ArgumentParser(prog="python -m flows.pipeline")
    p.add_argument("flow", choices=["normalize", "ticks-sink"])
    p.add_argument("--nats-url", required=True)
    p.add_argument("--recovery-dir", type=Path)
    p.add_argument("--epoch-interval", type=float, default=1.0)
    p.add_argument("--idle-timeout", type=float, default=None)
    p.add_argument("--delta-root", default="var/lake")
    args = p.parse_args(argv)

    config = NatsConfig(servers=(args.nats_url,), reconnect_wait_s=0.1)

    async def setup() -> None:
        from trade2026.natsloop import connect

        nc = await connect(config, step="pipeline streams")
        try:
            await ensure_streams(nc.jetstream())
        finally:
            await nc.close()

    asyncio.run(setup())
    ctx = RunContext(nats=config, accounting=Accounting(), idle_timeout_s=args.idle_timeout)
    if args.flow == "normalize":
        flow, source, _ = build_normalize_jetstream(ctx)
    else:
        flow, source = build_ticks_sink_jetstream(ctx, args.delta_root)
    _ResumeLogger(source)
    interval = timedelta(seconds=args.epoch_interval)
    settings = (
        RecoverySettings(args.recovery_dir, epoch_interval=interval) if args.recovery_dir else None
    )
    cli_main(flow, **run_kwargs(settings, interval))
    counts = {
        stage: {
            "in": c.records_in,
            "out": c.out,
            "dead_lettered": c.dead_lettered,
            "duplicates": c.duplicates,
        }
        for stage in ctx.accounting.stages()
        for c in [ctx.accounting.stage(stage)]
    }
    print(msgspec.json.encode({"accounting": counts}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
