"""The hot-cache flow: latest quote per instrument, latest position and P&L per account.

Inputs are ``md.ticks.>`` (only quotes are cached), ``positions.>`` and ``pnl.>``;
outputs are the JetStream key-value buckets of :mod:`sinks.kv` (``t26_quotes``,
``t26_positions``) and ``t26_pnl`` (key: the account id, value: the latest
:class:`~operators.portfolio.AccountPnl` as JSON), so ``trade2026 get`` answers
without a database.

Why it conflates before the sink: quotes arrive by the thousand per second and only
the newest per instrument matters. Each batch is reduced to the latest record per key
(by ``ts_event``) and the sink writes each key with compare-and-set on its revision,
so an older record never overwrites a newer one, whatever the arrival order.

``t26_pnl`` is written here because :class:`sinks.kv.HotCache` has no P&L bucket yet;
it reuses that class's compare-and-set write, and belongs there (``put_pnl``) once
sinks/kv.py grows one.

Accounting (stage ``hotcache``, per instrument, or per account for P&L): every message
is in once; a quote, position or P&L snapshot is out when handed to the cache (a newer
one already stored simply wins); trades and book deltas are out too, taken and not
needed; anything undecodable is dead-lettered on ``dlq.hotcache`` with its bytes.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Final, TypeGuard

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from operators.portfolio import AccountPnl
from schemas.canonical import DeadLetter, Position, Quote, Tick
from schemas.transport import Message, Outgoing
from sinks.kv import HotCache, HotCacheConfig, HotCacheSink, encode_key_part
from trade2026.accounting import DEAD_LETTERED, IN, OUT, UNKNOWN_INSTRUMENT, Accounting
from trade2026.natsconf import NatsConfig

if TYPE_CHECKING:
    from sources.nats import NatsSource
    from trade2026.flowregistry import RunContext

__all__ = [
    "DLQ_SUBJECT",
    "PNL_BUCKET",
    "STAGE",
    "SUBJECTS",
    "PnlCacheSink",
    "build_flow",
    "build_hotcache",
    "pnl_key",
    "production_flow",
]

STAGE: Final = "hotcache"
DLQ_SUBJECT: Final = f"dlq.{STAGE}"
PNL_BUCKET: Final = "t26_pnl"
SUBJECTS: Final = ("md.ticks.>", "positions.>", "pnl.>")
_MAX_BYTES = 65_536


def pnl_key(account_id: str) -> str:
    return encode_key_part(account_id, keep_dots=False)


class _Decode:
    def __init__(self, accounting: Accounting) -> None:
        self._acct = accounting
        self._encode = msgspec.json.Encoder().encode
        self._ticks = msgspec.json.Decoder(Tick)
        self._positions = msgspec.json.Decoder(Position)
        self._pnl = msgspec.json.Decoder(AccountPnl)

    def __call__(self, batch: list[Message]) -> list[Quote | Position | AccountPnl | Outgoing]:
        out: list[Quote | Position | AccountPnl | Outgoing] = []
        counts: Counter[tuple[str, str]] = Counter()
        reasons: list[str] = []
        for msg in batch:
            rec = self._one(msg)
            if isinstance(rec, DeadLetter):
                label = rec.instrument_id or UNKNOWN_INSTRUMENT
                counts[(label, IN)] += 1
                counts[(label, DEAD_LETTERED)] += 1
                reasons.append(rec.reason)
                out.append(Outgoing(DLQ_SUBJECT, self._encode(rec)))
                continue
            label = rec.account_id if isinstance(rec, AccountPnl) else rec.instrument_id
            counts[(label, IN)] += 1
            counts[(label, OUT)] += 1
            if isinstance(rec, Quote | Position | AccountPnl):
                out.append(rec)
        self._acct.add(STAGE, counts)
        if reasons:
            self._acct.add_reasons(STAGE, reasons)
        return out

    def _one(self, msg: Message) -> Tick | Position | AccountPnl | DeadLetter:
        def dead(reason: str, detail: str) -> DeadLetter:
            return DeadLetter(STAGE, reason, detail, msg.data, msg.subject, None, msg.ts_recv)

        if len(msg.data) > _MAX_BYTES:
            return dead("OVERSIZED", f"{len(msg.data)} bytes > {_MAX_BYTES}")
        try:
            if msg.subject.startswith("md.ticks."):
                return self._ticks.decode(msg.data)
            if msg.subject.startswith("positions."):
                return self._positions.decode(msg.data)
            if msg.subject.startswith("pnl."):
                return self._pnl.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return dead("DECODE_ERROR", str(exc))
        return dead("UNEXPECTED_SUBJECT", f"the hot cache takes {', '.join(SUBJECTS)}")


class PnlCacheSink(DynamicSink[Any]):
    """Latest :class:`AccountPnl` per account into bucket ``t26_pnl`` (compare-and-set)."""

    def __init__(self, nats: NatsConfig, config: HotCacheConfig | None = None) -> None:
        self.nats = nats
        self.config = config or HotCacheConfig()

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        from trade2026.natsloop import NatsLoop

        loop = NatsLoop.acquire()
        nc = loop.connect(self.nats)
        kv = loop.run(_open_pnl_bucket(nc, self.config))
        return _PnlPartition(loop, nc, kv, self.config)


async def _open_pnl_bucket(nc: Any, config: HotCacheConfig) -> Any:
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError

    js = nc.jetstream(timeout=config.timeout_s)
    try:
        return await js.key_value(PNL_BUCKET)
    except BucketNotFoundError:
        storage = StorageType.FILE if config.storage == "file" else StorageType.MEMORY
        return await js.create_key_value(
            KeyValueConfig(bucket=PNL_BUCKET, history=1, storage=storage)
        )


class _PnlPartition(StatelessSinkPartition[Any]):
    def __init__(self, loop: Any, nc: Any, kv: Any, config: HotCacheConfig) -> None:
        self._loop = loop
        self._nc = nc
        self._kv = kv
        self._timeout = config.timeout_s
        # The compare-and-set write of sinks.kv.HotCache, on the P&L bucket.
        self._cache = HotCache(kv, kv, config)

    def write_batch(self, items: list[Any]) -> None:
        latest: dict[str, AccountPnl] = {}
        for p in items:
            key = pnl_key(p.account_id)
            if key not in latest or p.ts_event >= latest[key].ts_event:
                latest[key] = p
        self._loop.run(
            self._cache._put_latest(self._kv, PNL_BUCKET, latest), timeout_s=self._timeout * 4
        )

    def close(self) -> None:
        from trade2026.natsloop import NatsLoop

        try:
            self._loop.run(self._nc.close(), timeout_s=self._timeout)
        finally:
            NatsLoop.release(self._loop)


def _is_outgoing(item: object) -> TypeGuard[Outgoing]:
    return isinstance(item, Outgoing)


def _is_pnl(item: object) -> TypeGuard[AccountPnl]:
    return isinstance(item, AccountPnl)


def build_flow(
    source: Source[Message],
    cache_sink: Sink[Any],
    pnl_sink: Sink[Any],
    dlq_sink: Sink[Outgoing],
    *,
    accounting: Accounting | None = None,
    flow_id: str = "hotcache",
) -> Dataflow:
    """Wire decode -> (quotes, positions) to ``cache_sink``, P&L to ``pnl_sink``."""
    acct = accounting if accounting is not None else Accounting()
    flow = Dataflow(flow_id)
    msgs = op.input("in", flow, source)
    decoded = op.flat_map_batch("decode", msgs, _Decode(acct))
    split = op.branch("split_dead_letters", decoded, _is_outgoing)
    op.output("dlq", split.trues, dlq_sink)
    records: Any = split.falses
    by_kind = op.branch("split_pnl", records, _is_pnl)
    op.output("pnl", by_kind.trues, pnl_sink)
    op.output("cache", by_kind.falses, cache_sink)
    return flow


def build_hotcache(
    ctx: RunContext, config: HotCacheConfig | None = None
) -> tuple[Dataflow, NatsSource]:
    """The hot-cache flow over NATS, and its source (``stats`` fill once subscribed)."""
    from sinks.nats import NatsSink
    from sources.nats import NatsSource

    source = NatsSource(
        list(SUBJECTS), ctx.nats, stop_after=ctx.stop_after, idle_timeout_s=ctx.idle_timeout_s
    )
    flow = build_flow(
        source,
        HotCacheSink(ctx.nats, config),
        PnlCacheSink(ctx.nats, config),
        NatsSink(ctx.nats),
        accounting=ctx.accounting,
    )
    return flow, source


def production_flow(ctx: RunContext) -> Dataflow:
    """``trade2026 run hotcache``: keep the key-value buckets current."""
    return build_hotcache(ctx)[0]
