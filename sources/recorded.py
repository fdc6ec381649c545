"""Recorded venue files: read them fast, merge them by receive time, and replay them.

A recording is text, gzip-compressed or not, one message a line::

    <local receive time, integer ns since the epoch> <raw websocket JSON>

Each line becomes a :class:`RecordedLine` carrying the raw JSON bytes *exactly as the
venue sent them* and the NATS subject they belong on, ``md.raw.<feed>.<symbol>``.
Everything downstream (the in-process :class:`RecordedSource`, the ``trade2026 replay``
command via :func:`replay_to_nats`) is built on :func:`iter_recorded`.

Which symbol a line belongs to
    Binance lines are combined-stream envelopes ``{"stream":"btcusdt@trade","data":...}``:
    the symbol is the stream name before its first ``@``. Coinbase lines name their
    ``product_id``. A REST depth snapshot (``{"lastUpdateId":...}``) names no symbol, so it
    is attributed to the symbol of the *next* enveloped message in the same file: a
    recorder fetches the snapshot for the stream it is about to record, so the message
    after it is from that stream. A symbol-less line at the very end of a file takes the
    symbol of the last enveloped message before it. The same rule applies to any line
    whose JSON names no symbol (including JSON that does not parse at all).

What is a reading error and what is not (the split)
    The recorder owns the ``<ns> `` prefix; the venue owns the JSON. A line whose
    *prefix* is broken (no space, a receive time that is not a non-negative integer, no
    JSON after it, a blank line) is a defect of the recording: it is counted and skipped,
    or raises :class:`RecordingError` with ``strict=True``. A line whose prefix is fine
    but whose JSON is bad is *venue data*: it is published byte for byte, and the
    normaliser dead-letters it. That is how bad venue data is tested end to end.
    A missing file and a corrupt gzip stream always raise.

Speed
    This feeds benchmarks of hundreds of thousands of messages a second, so the JSON is
    not decoded on the hot path: the symbol is sliced out of the ``"stream":"`` prefix
    with one ``bytes.find`` and routes are cached per distinct stream name. Lines that do
    not start with the envelope prefix (other key order, whitespace, snapshots) fall back
    to a msgspec decode of the few keys that matter.

Nothing here reads the wall clock: :class:`Pacer` and :func:`replay_to_nats` take a
clock and a sleep, so tests drive them with a fake clock and never sleep.
"""

from __future__ import annotations

import gzip
import heapq
import os
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from itertools import islice
from typing import IO, TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from schemas.transport import RECV_NS_HEADER, Message

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

__all__ = [
    "FEEDS",
    "BadLine",
    "BadLineLog",
    "Pacer",
    "ReadStats",
    "RecordedLine",
    "RecordedSource",
    "RecordingError",
    "ReplaySummary",
    "iter_recorded",
    "merge_recorded",
    "raw_subject",
    "replay_to_nats",
]

Feed = Literal["binance", "binance-usdm", "coinbase"]
#: Feeds a recording can come from; the middle token of ``md.raw.<feed>.<symbol>``.
FEEDS: tuple[str, ...] = ("binance", "binance-usdm", "coinbase")
#: Kind given to a REST depth snapshot line (``{"lastUpdateId": ...}``).
SNAPSHOT_KIND = "depthSnapshot"
#: Kind given to a line whose JSON does not decode (it is still published, see above).
UNDECODABLE_KIND = "undecodable"

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_BINANCE_PREFIX = b'{"stream":"'
_COINBASE_KEY = b'"product_id":"'
_COINBASE_TYPE_PREFIX = b'{"type":"'
_BAD_TOKEN_CHARS = frozenset(" \t\r\n.*>")
#: Symbol-less lines held back waiting for a symbol. A real recording has one snapshot
#: before its stream; this many in a row means the wrong feed, and holding them all
#: would buffer the whole file in memory.
MAX_UNATTRIBUTED = 10_000


class RecordingError(Exception):
    """A recording cannot be read: names the file and line, and ends with a hint.

    ``line_no`` is 1-based; 0 means the problem is with the file as a whole (missing).
    """

    def __init__(self, path: str, line_no: int, reason: str, hint: str) -> None:
        self.path = path
        self.line_no = line_no
        self.reason = reason
        self.hint = hint
        super().__init__(f"read recording: {path}:{line_no}: {reason}; hint: {hint}")


class RecordedLine(msgspec.Struct, frozen=True, gc=False):
    """One recorded message. ``data`` is the venue's JSON, byte for byte.

    A msgspec Struct rather than a NamedTuple: it is built once per line, and a Struct
    constructs several times faster.
    """

    path: str
    line_no: int
    ts_recv: int
    subject: str
    data: bytes
    #: Stream kind: ``trade``, ``bookTicker``, ``depth@100ms``, ``depthSnapshot``,
    #: the Coinbase ``type``... For summaries only; nothing routes on it.
    kind: str = ""


class BadLine(NamedTuple):
    """A line skipped because its ``<ns> `` prefix is broken (see the module docstring)."""

    path: str
    line_no: int
    reason: str
    raw: bytes


class BadLineLog:
    """An ``on_bad_line`` callback that counts skipped lines and keeps the first few.

    The reader is a generator, so its caller cannot ask it afterwards how much it
    skipped; handing it this log gives the replay summary an exact count.
    """

    def __init__(self, keep: int = 10) -> None:
        self.count = 0
        self.examples: list[BadLine] = []
        self._keep = keep

    def __call__(self, bad: BadLine) -> None:
        self.count += 1
        if len(self.examples) < self._keep:
            self.examples.append(bad)


class ReadStats:
    """Progress of one or more readers, updated once per chunk (cheap enough for a bar).

    ``bytes_read`` counts bytes consumed *from disk* (compressed bytes for gzip), so it
    can drive a progress bar whose total is the files' sizes without a counting pass.
    """

    __slots__ = ("bad_lines", "bytes_read", "bytes_total", "lines")

    def __init__(self) -> None:
        self.lines = 0
        self.bad_lines = 0
        self.bytes_read = 0
        self.bytes_total = 0


class _Probe(msgspec.Struct):
    """The few top-level keys the slow path needs; everything else is skipped unparsed."""

    stream: str | None = None
    product_id: str | None = None
    type: str | None = None
    lastUpdateId: int | None = None


_probe_decoder = msgspec.json.Decoder(_Probe)

# (subject, kind, allowed by the symbol filter); None = the line names no symbol.
_Route = tuple[str, str, bool]


def raw_subject(feed: str, symbol: str) -> str:
    """``md.raw.<feed>.<symbol lowercase>``: where the raw bytes of one symbol travel."""
    return f"md.raw.{feed}.{symbol.lower()}"


def _parse_feed(feed: str) -> str:
    if feed not in FEEDS:
        raise ValueError(
            f"read recording: unknown feed {feed!r}; hint: use one of {', '.join(FEEDS)}"
        )
    return feed


class _Router:
    """Maps a line's JSON bytes to its route, caching per distinct stream/product."""

    def __init__(self, feed: str, symbols: Collection[str] | None) -> None:
        self.feed = _parse_feed(feed)
        self.binance = feed != "coinbase"
        self.symbols = None if symbols is None else frozenset(s.lower() for s in symbols)
        self.cache: dict[Any, _Route | str] = {}

    def make(self, symbol: str, kind: str) -> _Route | str:
        """A route, or a reason string when the symbol cannot be a subject token."""
        sym = symbol.lower()
        if not sym or any(c in _BAD_TOKEN_CHARS for c in sym):
            return f"symbol {symbol!r} cannot be a NATS subject token"
        allowed = self.symbols is None or sym in self.symbols
        return (raw_subject(self.feed, sym), kind, allowed)

    def from_stream(self, stream: bytes) -> _Route | str:
        hit = self.cache.get(stream)
        if hit is None:
            text = stream.decode("utf-8", "replace")
            sym, _, kind = text.partition("@")
            hit = self.cache[stream] = self.make(sym, kind)
        return hit

    def from_product(self, product: bytes, kind: bytes) -> _Route | str:
        key = (product, kind)
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self.make(
                product.decode("utf-8", "replace"), kind.decode("utf-8", "replace")
            )
        return hit

    def fast_coinbase(self, data: bytes) -> _Route | str | None:
        i = data.find(_COINBASE_KEY)
        if i < 0:
            return None
        i += len(_COINBASE_KEY)
        q = data.find(b'"', i)
        if q < 0:
            return None
        kind = b""
        if data.startswith(_COINBASE_TYPE_PREFIX):
            tq = data.find(b'"', len(_COINBASE_TYPE_PREFIX))
            if tq > 0:
                kind = data[len(_COINBASE_TYPE_PREFIX) : tq]
        return self.from_product(data[i:q], kind)

    def slow(self, data: bytes) -> tuple[_Route | str | None, str]:
        """Decode the few keys that matter: (route or None if unattributed, kind)."""
        try:
            probe = _probe_decoder.decode(data)
        except msgspec.DecodeError:
            return None, UNDECODABLE_KIND
        if self.binance:
            if probe.stream is not None:
                return self.from_stream(probe.stream.encode()), ""
        elif probe.product_id is not None:
            return self.make(probe.product_id, probe.type or ""), ""
        if probe.lastUpdateId is not None:
            return None, SNAPSHOT_KIND
        return None, probe.type or "unknown"


def _chunks(path: str, stats: ReadStats | None) -> Iterator[bytes]:
    """Decompressed chunks of a file; gzip is detected by its magic bytes, not the name."""
    try:
        raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed in finally below
    except FileNotFoundError:
        raise RecordingError(
            path, 0, "no such file", "check the path; recordings live under data/"
        ) from None
    except IsADirectoryError:
        raise RecordingError(
            path, 0, "is a directory", "pass the recording files, e.g. data/binance/*.gz"
        ) from None
    except OSError as exc:
        raise RecordingError(
            path, 0, f"cannot open: {exc.strerror}", "check the file's permissions"
        ) from None
    try:
        if stats is not None:
            stats.bytes_total += os.fstat(raw.fileno()).st_size
        head = raw.read(2)
        raw.seek(0)
        stream: IO[bytes] | gzip.GzipFile = raw
        if head == _GZIP_MAGIC:
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        done = 0
        while True:
            chunk = stream.read(_CHUNK)
            if stats is not None:
                pos = raw.tell()
                stats.bytes_read += pos - done
                done = pos
            if not chunk:
                return
            yield chunk
    finally:
        raw.close()


_CORRUPT = (gzip.BadGzipFile, zlib.error, EOFError)


def iter_recorded(
    path: str | os.PathLike[str],
    *,
    feed: str = "binance",
    start_ns: int | None = None,
    end_ns: int | None = None,
    symbols: Collection[str] | None = None,
    strict: bool = False,
    on_bad_line: Callable[[BadLine], None] | None = None,
    skip_lines: int = 0,
    stats: ReadStats | None = None,
) -> Iterator[RecordedLine]:
    """Yield a recording's messages in file order, with their subjects.

    ``start_ns`` is inclusive and ``end_ns`` exclusive, both on the recorded receive time.
    ``symbols`` keeps only those symbols (case-insensitive). ``skip_lines`` skips the
    first physical lines without parsing them: that is how a resumed source continues
    after the last line it emitted. Symbol-less lines (REST snapshots) are attributed as
    the module docstring says, so they are yielded just before the line that named
    their symbol; the order of line numbers is preserved. (After a resume, skipped lines
    are not looked at, so a snapshot that is the file's last line and follows the resume
    point has no earlier symbol to fall back on and is reported as a bad line.)

    Raises :class:`RecordingError` for a missing file, a corrupt gzip stream, and (with
    ``strict=True``) a line with a broken ``<ns> `` prefix; otherwise such a line is
    reported to ``on_bad_line`` and skipped.
    """
    p = os.fspath(path)
    router = _Router(feed, symbols)
    binance = router.binance
    cache = router.cache
    from_stream = router.from_stream
    plen = len(_BINANCE_PREFIX)
    lo = -1 if start_ns is None else start_ns
    hi = (1 << 127) if end_ns is None else end_ns
    # Symbol-less lines waiting for the next line that names one: (line_no, ts, data, kind).
    pending: list[tuple[int, int, bytes, str]] = []
    last_route: _Route | None = None
    line_no = 0

    def bad(n: int, reason: str, raw: bytes) -> None:
        if strict:
            raise RecordingError(
                p,
                n,
                reason,
                "fix or drop the line, or replay without --strict to skip bad lines",
            )
        if stats is not None:
            stats.bad_lines += 1
        if on_bad_line is not None:
            on_bad_line(BadLine(p, n, reason, raw))

    def blocks() -> Iterator[bytes]:
        """Runs of complete lines; the bytes after the last newline wait for the next chunk."""
        nonlocal line_no
        rest = b""
        chunks = _chunks(p, stats)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                break
            except _CORRUPT as exc:
                raise RecordingError(
                    p,
                    line_no + 1,
                    f"corrupt gzip stream ({exc})",
                    "the file is damaged or truncated; re-download or re-record it",
                ) from None
            cut = chunk.rfind(b"\n")
            if cut < 0:
                rest += chunk
                continue
            block = rest + chunk[:cut] if rest else chunk[:cut]
            rest = chunk[cut + 1 :]
            yield block
        if rest:
            yield rest

    for block in blocks():
        # splitlines folds CRLF; JSON cannot hold a raw CR, so a CR is never data.
        lines = block.splitlines()
        base = line_no
        line_no += len(lines)
        if stats is not None:
            stats.lines += len(lines)
        if skip_lines >= line_no:
            continue
        n = base
        if skip_lines > base:
            # Resume: step over the lines already consumed without parsing them.
            lines = lines[skip_lines - base :]
            n = skip_lines
        for line in lines:
            n += 1
            head, _, data = line.partition(b" ")
            if not data or not head.isdigit():
                bad(n, _prefix_problem(line), line)
                continue
            ts = int(head)
            route: _Route | str | None
            if binance and data.startswith(_BINANCE_PREFIX):
                q = data.find(b'"', plen)
                if q > 0:
                    key = data[plen:q]
                    route = cache.get(key)
                    if route is None:
                        route = from_stream(key)
                    if not isinstance(route, str):
                        subject, kind, allowed = route
                        if pending:
                            yield from _flush_pending(pending, subject, allowed, lo, hi, p)
                        last_route = route
                        if allowed and lo <= ts < hi:
                            yield RecordedLine(p, n, ts, subject, data, kind)
                        continue
            if data.isspace():
                bad(n, "no JSON after the receive time", line)
                continue
            kind = ""
            if binance:
                route, kind = router.slow(data)
            else:
                route = router.fast_coinbase(data)
                if route is None:
                    route, kind = router.slow(data)
            if route is None:
                pending.append((n, ts, data, kind))
                if len(pending) >= MAX_UNATTRIBUTED:
                    raise RecordingError(
                        p,
                        pending[0][0],
                        f"{len(pending):,} lines in a row name no symbol",
                        f"is this a {router.feed} recording? pick the feed/--venue it came from",
                    )
                continue
            if isinstance(route, str):
                bad(n, route, line)
                continue
            subject, rkind, allowed = route
            if pending:
                yield from _flush_pending(pending, subject, allowed, lo, hi, p)
            last_route = route
            if allowed and lo <= ts < hi:
                yield RecordedLine(p, n, ts, subject, data, rkind)
    if pending:
        if last_route is None:
            for pn, _pts, pdata, _pkind in pending:
                bad(pn, "no line in the file names a symbol to attribute this line to", pdata)
        else:
            subject, _rkind, allowed = last_route
            yield from _flush_pending(pending, subject, allowed, lo, hi, p)


def _prefix_problem(line: bytes) -> str:
    """Why a line's ``<ns> `` prefix is unusable (only called for lines that failed)."""
    head, sep, _ = line.partition(b" ")
    if not line.strip():
        return "blank line"
    if not head:
        return "line starts with a space, not a receive time"
    if not sep:
        return "no '<receive ns> ' prefix"
    if not head.isdigit():
        return f"receive time {head[:40]!r} is not a non-negative integer"
    return "no JSON after the receive time"


def _flush_pending(
    pending: list[tuple[int, int, bytes, str]],
    subject: str,
    allowed: bool,
    lo: int,
    hi: int,
    path: str,
) -> Iterator[RecordedLine]:
    """Yield the symbol-less lines held back, now that a line named their symbol."""
    for n, ts, data, kind in pending:
        if allowed and lo <= ts < hi:
            yield RecordedLine(path, n, ts, subject, data, kind)
    pending.clear()


def _recv_key(line: RecordedLine) -> int:
    return line.ts_recv


def merge_recorded(
    paths: Sequence[str | os.PathLike[str]],
    *,
    feed: str = "binance",
    start_ns: int | None = None,
    end_ns: int | None = None,
    symbols: Collection[str] | None = None,
    strict: bool = False,
    on_bad_line: Callable[[BadLine], None] | None = None,
    stats: ReadStats | None = None,
) -> Iterator[RecordedLine]:
    """Merge several recordings into one stream ordered by receive time.

    Each file's own order is kept even where its receive times go backwards (a merge
    never reorders within one input). Equal receive times from different files come
    out in the order the files were given, so a replay is reproducible.
    """
    iters = [
        iter_recorded(
            p,
            feed=feed,
            start_ns=start_ns,
            end_ns=end_ns,
            symbols=symbols,
            strict=strict,
            on_bad_line=on_bad_line,
            stats=stats,
        )
        for p in paths
    ]
    if len(iters) == 1:
        return iters[0]
    # heapq.merge is stable: on equal keys the earlier iterable wins.
    return heapq.merge(*iters, key=_recv_key)


# --------------------------------------------------------------------------- bytewax


class _RecordedPartition(StatefulSourcePartition[Message, int]):
    def __init__(self, it: Iterator[RecordedLine], batch_size: int, consumed: int) -> None:
        self._it = it
        self._batch_size = batch_size
        self._consumed = consumed
        self._done = False

    def next_batch(self) -> list[Message]:
        if self._done:
            raise StopIteration
        lines = list(islice(self._it, self._batch_size))
        if len(lines) < self._batch_size:
            self._done = True
            if not lines:
                raise StopIteration
        self._consumed = lines[-1].line_no
        return [Message(ln.subject, ln.data, ln.ts_recv, None, None, ln.line_no) for ln in lines]

    def snapshot(self) -> int:
        return self._consumed

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class RecordedSource(FixedPartitionedSource[Message, int]):
    """Recorded files as a Bytewax source: one partition per file, as fast as it can read.

    For backtests and benchmarks, so it does not pace and reads no clock; use
    ``trade2026 replay`` to publish at recorded speed. The resume state of a partition is
    the line number of the last line it emitted, so a recovered flow continues with the
    next line instead of re-reading the file. Each :class:`~schemas.transport.Message`
    carries the recorded receive time in ``ts_recv`` and the line number in ``seq``.
    Lines with a broken ``<ns> `` prefix are skipped; pass ``on_bad_line`` (for example
    a :class:`BadLineLog`) to account for them.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        feed: str = "binance",
        start_ns: int | None = None,
        end_ns: int | None = None,
        symbols: Collection[str] | None = None,
        strict: bool = False,
        batch_size: int = 1000,
        on_bad_line: Callable[[BadLine], None] | None = None,
    ) -> None:
        self._paths = [os.fspath(p) for p in paths]
        if len(set(self._paths)) != len(self._paths):
            raise ValueError(
                "RecordedSource: a file is listed twice; hint: each file is one partition, "
                "list it once"
            )
        if batch_size < 1:
            raise ValueError("RecordedSource: batch_size must be >= 1; hint: the default is 1000")
        self._feed = _parse_feed(feed)
        self._start_ns = start_ns
        self._end_ns = end_ns
        self._symbols = None if symbols is None else frozenset(s.lower() for s in symbols)
        self._strict = strict
        self._batch_size = batch_size
        self._on_bad_line = on_bad_line

    def list_parts(self) -> list[str]:
        return list(self._paths)

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _RecordedPartition:
        consumed = resume_state or 0
        it = iter_recorded(
            for_part,
            feed=self._feed,
            start_ns=self._start_ns,
            end_ns=self._end_ns,
            symbols=self._symbols,
            strict=self._strict,
            on_bad_line=self._on_bad_line,
            skip_lines=consumed,
        )
        return _RecordedPartition(it, self._batch_size, consumed)


# --------------------------------------------------------------------------- replay


class Pacer:
    """Keeps recorded inter-arrival gaps, scaled by ``speed``, against an injected clock.

    Every message's due time is computed from the *first* message's (recorded time,
    clock time) pair, never by adding up sleeps, so oversleeping and publish costs do not
    accumulate into drift: a late message makes the following waits shorter. ``speed``
    ``None`` means as fast as possible (no waiting at all). Gaps shorter than
    ``min_sleep_s`` are not slept (an event loop cannot sleep that precisely); such
    messages go out up to that much early but never late relative to the schedule.
    """

    def __init__(
        self,
        speed: float | None,
        clock: Callable[[], int],
        sleep: Callable[[float], Awaitable[object]],
        *,
        min_sleep_s: float = 0.001,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"replay: speed must be > 0, got {speed}; hint: use 1, 10 or max")
        self.speed = speed
        self.clock = clock
        self._sleep = sleep
        self._min_sleep_ns = int(min_sleep_s * 1e9)
        self._anchor: tuple[int, int] | None = None  # (recorded ns, clock ns)

    def due(self, ts_recv: int) -> int:
        """Clock time (ns) at which the message recorded at ``ts_recv`` should go out."""
        if self._anchor is None:
            self._anchor = (ts_recv, self.clock())
        rec0, clk0 = self._anchor
        if self.speed is None:
            return clk0
        return clk0 + round((ts_recv - rec0) / self.speed)

    def delay_ns(self, ts_recv: int) -> int:
        """How long to wait now before sending the message recorded at ``ts_recv``."""
        return self.due(ts_recv) - self.clock()

    async def wait(self, ts_recv: int) -> bool:
        """Sleep until the message is due; True if it slept (a chance to flush first)."""
        if self.speed is None:
            return False
        wait = self.delay_ns(ts_recv)
        if wait < self._min_sleep_ns:
            return False
        await self._sleep(wait / 1e9)
        return True


class ReplaySummary(msgspec.Struct, frozen=True):
    """What a replay published: counts by subject and stream kind, span and rate."""

    messages: int
    #: subject -> stream kind -> messages
    counts: dict[str, dict[str, int]]
    bad_lines: int
    first_ts: int | None
    last_ts: int | None
    elapsed_s: float

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def by_subject(self) -> dict[str, int]:
        return {s: sum(k.values()) for s, k in self.counts.items()}

    @property
    def span_ns(self) -> int:
        if self.first_ts is None or self.last_ts is None:
            return 0
        return self.last_ts - self.first_ts


async def replay_to_nats(
    lines: Iterable[RecordedLine],
    nc: NatsClient,
    *,
    pacer: Pacer,
    progress: Callable[[int], None] | None = None,
    bad_lines: BadLineLog | ReadStats | None = None,
    flush_every: int = 10_000,
) -> ReplaySummary:
    """Publish recorded lines to core NATS, raw bytes and ``T26-Recv-Ns`` header.

    Flushes every ``flush_every`` messages (a PING/PONG round trip, which is also the
    back-pressure that keeps the client's buffer bounded) and once at the end; never per
    message, which would cap the rate at one round trip each. When pacing, each sleep
    lets the client write what is pending, so paced messages leave on time without a
    flush. ``progress`` is called with the count published so far after each flush and
    each pacing sleep. ``bad_lines`` (the log or stats the reader was given) supplies
    the skipped count for the summary.
    """
    clock = pacer.clock
    counts: Counter[tuple[str, str]] = Counter()
    first_ts: int | None = None
    last_ts: int | None = None
    n = 0
    since_flush = 0
    paced = pacer.speed is not None
    publish = nc.publish
    t0 = clock()
    for line in lines:
        # Sleeping yields to the event loop, so the client's flusher task writes what is
        # pending during the gap: no round trip is needed to get paced messages out.
        if paced and await pacer.wait(line.ts_recv) and progress is not None:
            progress(n)
        ts = line.ts_recv
        await publish(line.subject, line.data, headers={RECV_NS_HEADER: str(ts)})
        counts[(line.subject, line.kind)] += 1
        if first_ts is None:
            first_ts = ts
        last_ts = ts
        n += 1
        since_flush += 1
        if since_flush >= flush_every:
            await nc.flush()
            since_flush = 0
            if progress is not None:
                progress(n)
    await nc.flush()
    elapsed = (clock() - t0) / 1e9
    if progress is not None:
        progress(n)
    nested: dict[str, dict[str, int]] = {}
    for (subject, kind), c in sorted(counts.items()):
        nested.setdefault(subject, {})[kind] = c
    skipped = 0
    if isinstance(bad_lines, BadLineLog):
        skipped = bad_lines.count
    elif isinstance(bad_lines, ReadStats):
        skipped = bad_lines.bad_lines
    return ReplaySummary(
        messages=n,
        counts=nested,
        bad_lines=skipped,
        first_ts=first_ts,
        last_ts=last_ts,
        elapsed_s=elapsed,
    )
