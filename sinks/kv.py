"""The hot cache: latest quote per instrument and latest position (with P&L) per account,
kept in NATS JetStream key-value buckets, so no extra server is needed.

* bucket ``t26_quotes``: key = instrument id (``BTCUSDT.BINANCE``), value = the
  :class:`~schemas.canonical.Quote` as JSON (prices as exact decimal strings);
* bucket ``t26_positions``: key = ``<account>.<instrument>``, value = the
  :class:`~schemas.canonical.Position` as JSON (realized and unrealized P&L included).

"Latest" means latest by ``ts_event``, not by arrival: a batch is first reduced to
the newest record per key, and each key is then written with compare-and-set on the
revision last seen, so a late, older record never overwrites a newer one, even with
several writers. KV keys allow only ``[-/_=.A-Za-z0-9]``; any other character (and
``=`` itself) is escaped as ``=XX`` (hex), and ``.`` is escaped inside account ids
so ``<account>.>`` selects exactly one account's positions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.canonical import Position, Quote
from trade2026.natsconf import NatsConfig

__all__ = [
    "HotCache",
    "HotCacheConfig",
    "HotCacheSink",
    "decode_key_part",
    "encode_key_part",
    "position_key",
    "quote_key",
]

log = logging.getLogger(__name__)

_SAFE = frozenset("-/_.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


class HotCacheConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    quotes_bucket: str = "t26_quotes"
    positions_bucket: str = "t26_positions"
    #: Memory storage is faster; file storage survives a nats-server restart.
    storage: str = "file"
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.storage not in ("file", "memory"):
            raise ValueError("hot cache config: storage must be 'file' or 'memory'")


def encode_key_part(text: str, *, keep_dots: bool = True) -> str:
    """Escape a string into KV-key characters (reversible with :func:`decode_key_part`)."""
    out = []
    for ch in text:
        if ch in _SAFE and (keep_dots or ch != "."):
            out.append(ch)
        else:
            out.extend(f"={b:02X}" for b in ch.encode())
    encoded = "".join(out)
    # A key may not start or end with '.'.
    if encoded.startswith("."):
        encoded = "=2E" + encoded[1:]
    if encoded.endswith("."):
        encoded = encoded[:-1] + "=2E"
    return encoded


def decode_key_part(text: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "=":
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw += text[i].encode()
            i += 1
    return raw.decode()


def quote_key(instrument_id: str) -> str:
    return encode_key_part(instrument_id)


def position_key(account_id: str, instrument_id: str) -> str:
    return f"{encode_key_part(account_id, keep_dots=False)}.{encode_key_part(instrument_id)}"


_QUOTE = msgspec.json.Decoder(Quote)
_POSITION = msgspec.json.Decoder(Position)
_ENC = msgspec.json.Encoder()


class HotCache:
    """Async access to the buckets (one per NATS connection); see :meth:`open`."""

    def __init__(self, quotes: Any, positions: Any, config: HotCacheConfig) -> None:
        self.quotes = quotes
        self.positions = positions
        self.config = config
        # key -> (revision, ts_event) last written or read by this process
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}

    @classmethod
    async def open(
        cls, nc: Any, config: HotCacheConfig | None = None, *, create: bool = True
    ) -> HotCache:
        """Bind to the buckets, creating them when ``create`` (writers) is set."""
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError

        config = config or HotCacheConfig()
        js = nc.jetstream(timeout=config.timeout_s)
        storage = StorageType.FILE if config.storage == "file" else StorageType.MEMORY
        kvs = []
        for bucket in (config.quotes_bucket, config.positions_bucket):
            try:
                kvs.append(await js.key_value(bucket))
            except BucketNotFoundError:
                if not create:
                    raise
                kvs.append(
                    await js.create_key_value(
                        KeyValueConfig(bucket=bucket, history=1, storage=storage)
                    )
                )
        return cls(kvs[0], kvs[1], config)

    # -- writes ----------------------------------------------------------------------------
    async def put_quotes(self, quotes: Iterable[Quote]) -> int:
        latest: dict[str, Quote] = {}
        for q in quotes:
            key = quote_key(q.instrument_id)
            if key not in latest or q.ts_event >= latest[key].ts_event:
                latest[key] = q
        return await self._put_latest(self.quotes, self.config.quotes_bucket, latest)

    async def put_positions(self, positions: Iterable[Position]) -> int:
        latest: dict[str, Position] = {}
        for p in positions:
            key = position_key(p.account_id, p.instrument_id)
            if key not in latest or p.ts_event >= latest[key].ts_event:
                latest[key] = p
        return await self._put_latest(self.positions, self.config.positions_bucket, latest)

    async def _put_latest(self, kv: Any, bucket: str, latest: dict[str, Any]) -> int:
        """Write each key unless the stored value is newer; returns keys written."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        written = 0
        for key, record in latest.items():
            seen_key = (bucket, key)
            value = _ENC.encode(record)
            for _attempt in range(5):
                seen = self._seen.get(seen_key)
                if seen is None:
                    try:
                        entry = await kv.get(key)
                        stored = msgspec.json.decode(entry.value or b"{}")
                        seen = (entry.revision, int(stored.get("ts_event", 0)))
                    except KeyNotFoundError:
                        seen = (0, -1)
                    self._seen[seen_key] = seen
                revision, stored_ts = seen
                if stored_ts > record.ts_event:
                    break  # an older record: the cache already holds newer
                try:
                    new_rev = await kv.update(key, value, last=revision)
                except KeyWrongLastSequenceError:
                    self._seen.pop(seen_key, None)  # someone else wrote: look again
                    continue
                self._seen[seen_key] = (new_rev, record.ts_event)
                written += 1
                break
            else:
                raise RuntimeError(
                    f"hot cache put {key}: revision kept changing under us; "
                    "hint: is another writer hammering the same key?"
                )
        return written

    # -- reads -----------------------------------------------------------------------------
    async def get_quote(self, instrument_id: str) -> Quote | None:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.quotes.get(quote_key(instrument_id))
        except KeyNotFoundError:
            return None
        return _QUOTE.decode(entry.value) if entry.value else None

    async def get_positions(self, account_id: str) -> list[Position]:
        """Every instrument's latest position for one account, sorted by instrument."""
        prefix = encode_key_part(account_id, keep_dots=False)
        watcher = await self.positions.watch(f"{prefix}.>", ignore_deletes=True)
        out: list[Position] = []
        try:
            while True:
                entry = await watcher.updates(timeout=self.config.timeout_s)
                if entry is None:
                    break
                if entry.value:
                    out.append(_POSITION.decode(entry.value))
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()
        return sorted(out, key=lambda p: p.instrument_id)


class HotCacheSink(DynamicSink[Any]):
    """Bytewax sink: items are :class:`Quote` or :class:`Position`; others are ignored
    and counted in ``ignored`` (the flow decides what to send here)."""

    def __init__(self, nats: NatsConfig | None = None, config: HotCacheConfig | None = None):
        self.nats = nats or NatsConfig.from_env()
        self.config = config or HotCacheConfig()

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        from trade2026.natsloop import NatsLoop

        loop = NatsLoop.acquire()
        nc = loop.connect(self.nats)
        cache = loop.run(HotCache.open(nc, self.config))
        return _HotCachePartition(loop, nc, cache, self.config.timeout_s)


class _HotCachePartition(StatelessSinkPartition[Any]):
    def __init__(self, loop: Any, nc: Any, cache: HotCache, timeout_s: float) -> None:
        self._loop = loop
        self._nc = nc
        self._cache = cache
        self._timeout = timeout_s
        self.ignored = 0

    def write_batch(self, items: list[Any]) -> None:
        quotes = [i for i in items if isinstance(i, Quote)]
        positions = [i for i in items if isinstance(i, Position)]
        self.ignored += len(items) - len(quotes) - len(positions)

        async def _put() -> None:
            if quotes:
                await self._cache.put_quotes(quotes)
            if positions:
                await self._cache.put_positions(positions)

        self._loop.run(_put(), timeout_s=self._timeout * 4)

    def close(self) -> None:
        from trade2026.natsloop import NatsLoop

        try:
            self._loop.run(self._nc.close(), timeout_s=self._timeout)
        finally:
            NatsLoop.release(self._loop)
