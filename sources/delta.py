"""Replay from the Delta tick tables: one event-time order, the same every time.

The three tick tables (see :mod:`sinks.delta`) are read one UTC day (one ``date``
partition) at a time through polars ``scan_delta`` (partition pruning, then the
``ts_event``/instrument filters pushed into the scan), stacked into one wide frame
and sorted by a total key::

    ts_event, ts_recv, kind (trade < quote < book_delta), instrument_id, seq,
    trade_id, update_id, first_update_id, last_update_id

So the order depends only on the rows, never on file layout, compaction or scan
parallelism: two replays of the same range are identical. Memory is bounded by one day.

Three consumers:

- :func:`iter_frames` yields wide polars frames of ``batch_size`` rows in order: the
  columnar fast path for backtests and benchmarks;
- :func:`iter_ticks` yields lists of canonical ``Tick`` structs (exact ``Decimal``);
- :class:`DeltaReplaySource`, a Bytewax source over either, and
  :func:`replay_delta_to_nats`, which publishes canonical ticks back onto
  ``md.ticks.<instrument_id>`` as fast as possible or paced (``speed`` x real time)
  with an injected clock and sleep.

Decimals come back from ``decimal(38, 18)`` with the trailing zeros the storage scale
added removed, so ``65000.10`` is replayed as ``65000.1``: the same value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from schemas.canonical import BookDelta, BookLevel, Quote, Tick, TradeTick
from schemas.common import Aggressor
from schemas.transport import RECV_NS_HEADER
from sinks.delta import KINDS, NANOS_PER_DAY, storage_options_from_env, table_uri

if TYPE_CHECKING:
    import polars as pl

    from trade2026.natsconf import NatsConfig

__all__ = [
    "DeltaReplaySource",
    "Pacer",
    "ReplayStats",
    "iter_frames",
    "iter_ticks",
    "parse_time",
    "replay_delta_to_nats",
    "ticks_from_frame",
]

KIND_RANK = {"trade": 0, "quote": 1, "book_delta": 2}
SORT_KEY = [
    "ts_event",
    "ts_recv",
    "kind_rank",
    "instrument_id",
    "seq",
    "trade_id",
    "update_id",
    "first_update_id",
    "last_update_id",
]
_DEC_COLS = {
    "trade": ("price", "size"),
    "quote": ("bid_price", "bid_size", "ask_price", "ask_size"),
}
_AGGRESSOR = {a.value: a for a in Aggressor}
_ONE = Decimal(1)


def parse_time(text: str | int | None) -> int | None:
    """``--start/--end`` values: integer ns, or an ISO date/datetime (UTC when naive)."""
    if text is None or isinstance(text, int):
        return text
    s = text.strip()
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"replay from delta: cannot parse time {text!r}; hint: use integer ns or "
            "ISO 8601 such as 2024-05-01 or 2024-05-01T12:00:00Z"
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _trim(d: Decimal) -> Decimal:
    if d == d.to_integral_value():
        return d.quantize(_ONE)
    return d.normalize()


def _days(
    root: str, start: int | None, end: int | None, storage_options: dict[str, str] | None
) -> list[date]:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    found: set[date] = set()
    for kind in KINDS:
        try:
            dt = DeltaTable(table_uri(root, kind), storage_options=storage_options)
        except TableNotFoundError:
            continue
        for part in dt.partitions():
            raw = part.get("date")
            if raw is not None:
                found.add(date.fromisoformat(raw))
    lo = None if start is None else date(1970, 1, 1) + timedelta(days=start // NANOS_PER_DAY)
    hi = None if end is None else date(1970, 1, 1) + timedelta(days=(end - 1) // NANOS_PER_DAY)
    return sorted(d for d in found if (lo is None or d >= lo) and (hi is None or d <= hi))


def _day_frame(
    root: str,
    day: date,
    start: int | None,
    end: int | None,
    instruments: Sequence[str] | None,
    storage_options: dict[str, str] | None,
) -> pl.DataFrame:
    import polars as pl
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    frames = []
    for kind in KINDS:
        try:
            dt = DeltaTable(table_uri(root, kind), storage_options=storage_options)
        except TableNotFoundError:
            continue
        lf = pl.scan_delta(dt).filter(pl.col("date") == day)
        if start is not None:
            lf = lf.filter(pl.col("ts_event") >= start)
        if end is not None:
            lf = lf.filter(pl.col("ts_event") < end)
        if instruments:
            lf = lf.filter(pl.col("instrument_id").is_in(list(instruments)))
        lf = lf.with_columns(
            pl.lit(kind).alias("kind"), pl.lit(KIND_RANK[kind], pl.Int8).alias("kind_rank")
        )
        frames.append(lf.collect())
    if not frames:
        return pl.DataFrame()
    wide = pl.concat(frames, how="diagonal_relaxed")
    for col in SORT_KEY:
        if col not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Int64).alias(col))
    return wide.sort(SORT_KEY, nulls_last=True, maintain_order=True)


def iter_frames(
    root: str,
    *,
    start: int | None = None,
    end: int | None = None,
    instruments: Sequence[str] | None = None,
    batch_size: int = 100_000,
    storage_options: dict[str, str] | None = None,
) -> Iterator[pl.DataFrame]:
    """Wide frames of up to ``batch_size`` rows, in replay order (``start`` <= ts < ``end``)."""
    if storage_options is None:
        storage_options = storage_options_from_env(root)
    for day in _days(root, start, end, storage_options):
        frame = _day_frame(root, day, start, end, instruments, storage_options)
        for off in range(0, frame.height, batch_size):
            yield frame.slice(off, batch_size)


def _dec_strings(frame: pl.DataFrame, cols: Sequence[str]) -> dict[str, list[Decimal]]:
    import polars as pl

    exprs = []
    for c in cols:
        s = pl.col(c).cast(pl.String)
        exprs.append(
            pl.when(s.str.contains(".", literal=True))
            .then(s.str.strip_chars_end("0").str.strip_chars_end("."))
            .otherwise(s)
            .alias(c)
        )
    strs = frame.select(exprs)
    return {c: [Decimal(x) for x in strs[c].to_list()] for c in cols}


def _levels(raw: list[dict[str, Decimal]] | None) -> list[BookLevel]:
    return [BookLevel(_trim(lv["price"]), _trim(lv["size"])) for lv in raw or ()]


def ticks_from_frame(frame: pl.DataFrame) -> list[Tick]:
    """Canonical ticks for a wide replay frame, in the frame's order."""
    import polars as pl

    out: list[Any] = [None] * frame.height
    indexed = frame.with_row_index("_i")
    for kind in KINDS:
        sub = indexed.filter(pl.col("kind") == kind)
        if sub.height == 0:
            continue
        idx = sub["_i"].to_list()
        inst = sub["instrument_id"].to_list()
        tse = sub["ts_event"].to_list()
        tsr = sub["ts_recv"].to_list()
        if kind == "trade":
            d = _dec_strings(sub, _DEC_COLS[kind])
            agg = [_AGGRESSOR[a] for a in sub["aggressor"].to_list()]
            made: list[Any] = list(
                map(
                    TradeTick, inst, d["price"], d["size"], agg, sub["trade_id"].to_list(), tse, tsr
                )
            )
        elif kind == "quote":
            d = _dec_strings(sub, _DEC_COLS[kind])
            made = list(
                map(
                    Quote,
                    inst,
                    d["bid_price"],
                    d["bid_size"],
                    d["ask_price"],
                    d["ask_size"],
                    sub["update_id"].to_list(),
                    tse,
                    tsr,
                )
            )
        else:
            bids = [_levels(b) for b in sub["bids"].to_list()]
            asks = [_levels(a) for a in sub["asks"].to_list()]
            made = list(
                map(
                    BookDelta,
                    inst,
                    bids,
                    asks,
                    sub["first_update_id"].to_list(),
                    sub["last_update_id"].to_list(),
                    sub["is_snapshot"].to_list(),
                    tse,
                    tsr,
                )
            )
        for i, t in zip(idx, made, strict=True):
            out[i] = t
    return out


def iter_ticks(
    root: str,
    *,
    start: int | None = None,
    end: int | None = None,
    instruments: Sequence[str] | None = None,
    batch_size: int = 100_000,
    storage_options: dict[str, str] | None = None,
) -> Iterator[list[Tick]]:
    """Lists of canonical ticks (exact ``Decimal``), in replay order."""
    for frame in iter_frames(
        root,
        start=start,
        end=end,
        instruments=instruments,
        batch_size=batch_size,
        storage_options=storage_options,
    ):
        yield ticks_from_frame(frame)


class _ReplayPartition(StatefulSourcePartition[Any, int]):
    def __init__(self, batches: Iterator[Any], skip: int, as_ticks: bool) -> None:
        self._batches = batches
        self._emitted = 0
        self._as_ticks = as_ticks
        self._skip = skip

    def next_batch(self) -> list[Any]:
        while True:
            frame = next(self._batches)  # StopIteration ends the partition
            n = frame.height
            if self._skip >= n:  # resuming: batches before the snapshot were emitted
                self._skip -= n
                self._emitted += n
                continue
            if self._skip:
                frame = frame.slice(self._skip)
                self._emitted += self._skip
                self._skip = 0
            self._emitted += frame.height
            return [ticks_from_frame(frame) if self._as_ticks else frame]

    def snapshot(self) -> int:
        return self._emitted


class DeltaReplaySource(FixedPartitionedSource[Any, int]):
    """The tick tables as a Bytewax input: each item is one batch, max speed.

    ``output="frames"`` emits wide polars frames (columnar, the fast path);
    ``output="ticks"`` emits lists of canonical ticks. The resume state is the number
    of rows emitted, which is enough because the order is deterministic.
    """

    def __init__(
        self,
        root: str,
        *,
        start: int | None = None,
        end: int | None = None,
        instruments: Sequence[str] | None = None,
        batch_size: int = 100_000,
        output: Literal["frames", "ticks"] = "frames",
        storage_options: dict[str, str] | None = None,
    ) -> None:
        if output not in ("frames", "ticks"):
            raise ValueError(f"DeltaReplaySource: output={output!r}; hint: 'frames' or 'ticks'")
        self.root = root
        self.start = start
        self.end = end
        self.instruments = list(instruments) if instruments else None
        self.batch_size = batch_size
        self.output = output
        self.storage_options = storage_options

    def list_parts(self) -> list[str]:
        return ["replay"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[Any, int]:
        frames = iter_frames(
            self.root,
            start=self.start,
            end=self.end,
            instruments=self.instruments,
            batch_size=self.batch_size,
            storage_options=self.storage_options,
        )
        return _ReplayPartition(frames, resume_state or 0, self.output == "ticks")


class Pacer:
    """Spaces events by their event time divided by ``speed``; ``None``/0 = max speed.

    ``clock`` returns monotonic ns and ``sleep`` waits seconds; both are injected so
    pacing is tested without waiting.
    """

    def __init__(
        self,
        speed: float | None,
        clock: Callable[[], int],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.speed = speed if speed and speed > 0 else None
        self._clock = clock
        self._sleep = sleep
        self._t0: int | None = None
        self._e0 = 0

    async def wait_for(self, ts_event: int) -> None:
        if self.speed is None:
            return
        now = self._clock()
        if self._t0 is None:
            self._t0, self._e0 = now, ts_event
            return
        due = self._t0 + int((ts_event - self._e0) / self.speed)
        if due > now:
            await self._sleep((due - now) / 1e9)


class ReplayStats(msgspec.Struct):
    published: int = 0
    first_ts_event: int | None = None
    last_ts_event: int | None = None


def replay_delta_to_nats(
    root: str,
    config: NatsConfig,
    *,
    start: int | str | None = None,
    end: int | str | None = None,
    instruments: Sequence[str] | None = None,
    speed: float | None = None,
    subject_prefix: str = "md.ticks",
    batch_size: int = 50_000,
    storage_options: dict[str, str] | None = None,
    clock: Callable[[], int] = time.monotonic_ns,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ReplayStats:
    """Publish the stored ticks in ``[start, end)`` back onto ``<subject_prefix>.<instrument>``.

    Payloads are canonical msgspec JSON (what ``md.ticks.>`` carries live), with the
    original receive time in the ``T26-Recv-Ns`` header. ``speed=None`` is as fast as
    possible; ``speed=1`` is real time, ``10`` ten times faster.
    """
    return asyncio.run(
        _replay(
            root,
            config,
            parse_time(start),
            parse_time(end),
            instruments,
            speed,
            subject_prefix,
            batch_size,
            storage_options,
            clock,
            sleep,
        )
    )


async def publish_ticks(
    nc: Any,
    batches: Iterable[Sequence[Tick]],
    pacer: Pacer,
    stats: ReplayStats,
    *,
    prefix: str = "md.ticks",
    on_published: Callable[[Tick], None] | None = None,
) -> ReplayStats:
    """Publish stored ticks in order, paced on event time, with their receive time header.

    The one publishing loop behind :func:`replay_delta_to_nats` and the CLI's
    ``replay --from-delta`` (which passes ``on_published`` for its progress bar).
    """
    encode = msgspec.json.Encoder().encode
    for ticks in batches:
        for t in ticks:
            await pacer.wait_for(t.ts_event)
            await nc.publish(
                f"{prefix}.{t.instrument_id}", encode(t), headers={RECV_NS_HEADER: str(t.ts_recv)}
            )
            if stats.first_ts_event is None:
                stats.first_ts_event = t.ts_event
            stats.last_ts_event = t.ts_event
            stats.published += 1
            if on_published is not None:
                on_published(t)
        await nc.flush()
    await nc.flush()
    return stats


async def _replay(
    root: str,
    config: NatsConfig,
    start: int | None,
    end: int | None,
    instruments: Sequence[str] | None,
    speed: float | None,
    prefix: str,
    batch_size: int,
    storage_options: dict[str, str] | None,
    clock: Callable[[], int],
    sleep: Callable[[float], Awaitable[None]],
) -> ReplayStats:
    import nats

    stats = ReplayStats()
    pacer = Pacer(speed, clock, sleep)
    try:
        nc = await nats.connect(**config.connect_kwargs())
    except Exception as exc:
        raise RuntimeError(
            f"replay from delta: connect to {config.url} failed: {exc}; "
            "hint: start nats-server or set NATS_URL"
        ) from exc
    try:
        await publish_ticks(
            nc,
            iter_ticks(
                root,
                start=start,
                end=end,
                instruments=instruments,
                batch_size=batch_size,
                storage_options=storage_options,
            ),
            pacer,
            stats,
            prefix=prefix,
        )
    finally:
        await nc.drain()
    return stats
