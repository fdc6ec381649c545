"""Bytewax sources over core NATS and JetStream.

nats-py is asyncio only, and a Bytewax partition must never block in
``next_batch``. So every connection lives on the process-wide loop thread
(:class:`trade2026.natsloop.NatsLoop`); subscription callbacks turn each NATS
message into a :class:`~schemas.transport.Message` and append it to a
``collections.deque`` that the partition drains without blocking (``append`` and
``popleft`` are atomic under the GIL, so no lock is needed).

When a drain finds nothing, ``next_awake`` decides when Bytewax polls again. The
default, ``idle_wait=None``, keeps Bytewax's own back-off (1 ms after an empty batch);
a ``timedelta`` asks for a longer sleep. ``benchmarks/nats_throughput.py`` measured it
on this machine (2 shared cores; one worker, one partition, 100 msg/s):

==============  ===============  ==================  ===============
idle_wait       CPU of one core  latency median      latency p99
==============  ===============  ==================  ===============
None (1 ms)     4.1-5.9 %        0.9-1.1 ms          1.6-1.9 ms
2 ms            5.1-6.7 %        1.3-1.6 ms          2.8-3.8 ms
10 ms           5.6-6.4 %        5.3-5.8 ms          10.7-11.9 ms
==============  ===============  ==================  ===============

In a separate run with no traffic at all the process sat at 3.3-5.6 % for every
setting (None, 2, 10 and 50 ms): in Bytewax 0.21 the idle cost is the worker loop itself, not our
polls, so a longer wait buys no CPU and only adds latency. Hence the default ``None``;
the knob stays for flows whose partitions are many and mostly idle. Under load the
wait never applies: a non-empty batch asks to be called again at once.

Partitions
    One per subject filter by default. ``hash_partitions=N`` splits each filter into
    N partitions that all subscribe the filter but keep only the subjects whose
    ``zlib.crc32(subject) % N`` is their index, so each subject (each instrument)
    stays in order on one worker while N workers share the load. ``queue`` (core
    NATS) puts the subscriptions in a queue group so several *processes* share it.

``stop_after`` (messages per partition) and ``idle_timeout_s`` (seconds without a
message, on the monotonic clock) make a never-ending source finish, for tests and
batch jobs; both are off by default.

Fast path
    py-spy of the ticks sink showed nats-py's reader holding the GIL ~64 % of the time,
    a third of it in per-message work we do not need: building a ``Msg`` (decoding
    subject and reply, parsing every header), and handing it to the subscription's
    task through an asyncio queue before our async callback ran. So for core NATS and
    the ordered JetStream consumer each partition's connection routes its own
    subscriptions' deliveries straight from nats-py's protocol parser to a plain
    function (:func:`_install_dispatch`, which replaces ``Client._process_msg`` on that
    connection only). It works on the raw bytes: the ack subject is split once as
    bytes, headers are parsed only into the ``Message`` (or not at all with
    ``keep_headers=False``, which still reads ``T26-Recv-Ns``). When the feed is full
    the raw deliveries wait in order in an overflow queue (what nats-py's subscription
    queue did before), not counted as received; flow control, gap and heartbeat
    checks see them in the same order as before. It depends on a nats-py internal, so
    it is used only on the nats-py minor versions it was tested with
    (``_FAST_PATH_VERSIONS``) and otherwise, or with ``fast_path=False``, the public
    callback path runs instead; ``tests/sources/test_nats_fastpath.py`` checks both
    give the same messages. Measured with ``benchmarks/nats_throughput.py`` (see
    docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import inspect
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from schemas.transport import RECV_NS_HEADER, Message
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop, connect

__all__ = [
    "DEFAULT_IDLE_WAIT",
    "JetStreamSource",
    "NatsSource",
    "SourceStats",
    "subject_partition",
]

log = logging.getLogger(__name__)

#: How long an empty partition waits before Bytewax polls it again (see module doc);
#: None keeps Bytewax's 1 ms back-off, which measured cheapest in latency at equal CPU.
DEFAULT_IDLE_WAIT: timedelta | None = None
#: Messages buffered per partition before the subscription callback waits for Bytewax.
DEFAULT_MAX_PENDING = 200_000
#: nats-py's own queue for the ordered consumer: a safety net well above the server's
#: flow-control window (32 MiB at most, measured), so it never drops in normal running.
#: If it does, the gap is seen and the consumer is re-created, so nothing is lost.
_ORDERED_PENDING_BYTES = 64 * 1024 * 1024
_ORDERED_PENDING_MSGS = 1_000_000
_ACK_PREFIX = "$JS.ACK."
_CALL_TIMEOUT_S = 10.0
_ACK_PREFIX_B = _ACK_PREFIX.encode()
_RECV_NS_KEY_B = RECV_NS_HEADER.encode() + b":"
#: Core NATS: messages held back while the feed is full before we drop (and count) them,
#: the same bound nats-py's own subscription queue applies by default.
_CORE_OVERFLOW_MSGS = 512 * 1024
#: nats-py versions whose ``Client._process_msg`` the fast path was tested against.
_FAST_PATH_VERSIONS = ((2, 16),)

#: A raw delivery as nats-py's protocol parser hands it over: subject, reply, payload,
#: header block (None without headers).
RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]


def _fast_path_supported() -> bool:
    """Whether nats-py's per-message entry point looks like the one we hook.

    The fast path replaces ``Client._process_msg`` for our own subscriptions only (see
    :func:`_install_dispatch`), an internal of nats-py. It is used only on the minor
    versions it was tested with and when the signature still matches; anything else
    takes the public callback path, which is slower but equivalent.
    """
    try:
        version = importlib.metadata.version("nats-py")
        major_minor = tuple(int(x) for x in version.split(".")[:2])
        params = list(inspect.signature(Client._process_msg).parameters)
    except Exception:  # pragma: no cover - defensive: unknown packaging
        return False
    if params != ["self", "sid", "subject", "reply", "data", "headers"]:
        return False
    if major_minor not in _FAST_PATH_VERSIONS:
        log.info("nats-py %s not tested with the source fast path; using callbacks", version)
        return False
    return True


FAST_PATH_SUPPORTED = _fast_path_supported()


def _install_dispatch(nc: Client, handlers: dict[int, RawHandler]) -> None:
    """Route deliveries of the subscriptions in ``handlers`` (by sid) straight to them.

    nats-py turns every delivery into a ``Msg`` (decoding subject and reply, parsing
    headers) and hands it to the subscription's task through an asyncio queue; py-spy
    put that at ~26 % of the GIL in the ticks sink, on top of our async callback. Our
    handlers take the raw bytes synchronously on the loop thread instead and parse only
    what they need. Everything else (other subscriptions, requests, JetStream API
    replies) still goes through nats-py's own ``_process_msg``.
    """
    orig = nc._process_msg
    stats = nc.stats

    async def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = handlers.get(sid)
        if handler is None:
            await orig(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)

    nc._process_msg = process_msg  # type: ignore[method-assign]


_WS = " \t\r\n\x0b\x0c"  # what bytes.strip() strips, as nats-py strips the raw bytes


def _parse_headers(raw: bytes) -> dict[str, str] | None:
    """A NATS header block as nats-py would return it (inline status included).

    ``NATS/1.0[ <status>[ <description>]]\r\nName: value\r\n...\r\n\r\n``. One decode
    of the whole block and C-level string checks: per message this was 15 % of the
    GIL in the ticks sink with nats-py's line-by-line version.
    """
    lines = raw.decode("utf-8", "replace").split("\r\n")
    out: dict[str, str] = {}
    first = lines[0]
    if len(first) > 9:  # inline status, e.g. "NATS/1.0 100 Idle Heartbeat"
        status = first[9:12]
        if status.isdigit():
            out[js_api.Header.STATUS.value] = status
        desc = first[13:].strip(_WS)
        if desc:
            out[js_api.Header.DESCRIPTION.value] = desc
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip(_WS)
        # Names are ASCII tokens: nats-py skips undecodable ones and any with whitespace.
        if key and key.isascii() and key.isprintable() and " " not in key:
            out[key] = value.strip(_WS)
    return out or None


def _recv_ns_raw(raw: bytes | None, clock: Callable[[], int]) -> int:
    """``T26-Recv-Ns`` straight from the header block, without parsing the rest."""
    if raw:
        i = raw.find(_RECV_NS_KEY_B)
        if i >= 0:
            start = i + len(_RECV_NS_KEY_B)
            end = raw.find(b"\r\n", start)
            try:
                return int(raw[start : end if end >= 0 else len(raw)])
            except ValueError:
                pass
    return clock()


def subject_partition(subject: str, n: int) -> int:
    """The hash partition a subject belongs to; stable across processes and runs."""
    return zlib.crc32(subject.encode()) % n


def _recv_ns(headers: dict[str, str] | None, clock: Callable[[], int]) -> int:
    if headers:
        raw = headers.get(RECV_NS_HEADER)
        if raw is not None:
            try:
                return int(raw)
            except ValueError:
                pass
    return clock()


@dataclass
class SourceStats:
    """Counters one partition keeps; read them from ``source.stats[partition]``.

    ``disconnects`` matters for core NATS: anything published while the connection
    was down is gone (core NATS is at-most-once), so each disconnect is a possible gap.
    """

    received: int = 0
    delivered: int = 0
    skipped_other_partition: int = 0
    duplicates: int = 0
    disconnects: int = 0
    reconnects: int = 0
    slow_consumer_drops: int = 0
    resubscribes: int = 0
    errors: list[str] = field(default_factory=list)


def _split_parts(
    subjects: Sequence[str] | str, hash_partitions: int, step: str
) -> dict[str, tuple[str, int]]:
    if isinstance(subjects, str):
        subjects = [subjects]
    if not subjects:
        raise ValueError(f"{step}: no subjects given; hint: pass e.g. 'md.raw.>'")
    if hash_partitions < 1:
        raise ValueError(f"{step}: hash_partitions={hash_partitions}; hint: use 1 or more")
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"{step}: duplicate subjects {list(subjects)}; hint: list each once")
    parts: dict[str, tuple[str, int]] = {}
    for subj in subjects:
        if hash_partitions == 1:
            parts[subj] = (subj, 0)
        else:
            for i in range(hash_partitions):
                parts[f"{subj}@{i}/{hash_partitions}"] = (subj, i)
    return parts


class _PartitionBase:
    """Shared plumbing: the feed, backpressure, batching and the stop conditions."""

    def __init__(
        self,
        *,
        step: str,
        config: NatsConfig,
        subject: str,
        hash_index: int,
        hash_partitions: int,
        batch_size: int,
        clock: Callable[[], int],
        idle_wait: timedelta | None,
        stop_after: int | None,
        idle_timeout_s: float | None,
        max_pending: int,
        stats: SourceStats,
        keep_headers: bool = True,
        fast_path: bool = True,
    ) -> None:
        self._step = step
        self._config = config
        self._subject = subject
        self._hash_index = hash_index
        self._hash_n = hash_partitions
        self._batch_size = batch_size
        self._clock = clock
        self._idle_wait = idle_wait
        self._stop_after = stop_after
        self._idle_timeout_s = idle_timeout_s
        self._max_pending = max_pending
        self.stats = stats
        self._feed: deque[Message] = deque()
        self._keep_headers = keep_headers
        self._fast = fast_path and FAST_PATH_SUPPORTED
        # Fast path (loop side): sid -> raw handler of our subscriptions, and deliveries
        # held back, in order, while the feed is full (the role nats-py's subscription
        # queue plays on the callback path). ``_refill`` moves them on once it drains.
        self._handlers: dict[int, RawHandler] = {}
        self._overflow: deque[tuple[int, bytes, bytes, bytes, bytes | None]] = deque()
        self._refill_scheduled = False
        # Loop side: items ever appended to the feed (compared with stats.delivered).
        self._pushed = 0
        # Loop side: bumped by every callback and while a callback waits for room, so a
        # watchdog can tell a silent consumer from one we are holding back ourselves.
        self._activity = 0
        self._awake: datetime | None = None
        self._last_item_mono = time.monotonic()
        self._closed = False
        self._loop = NatsLoop.acquire()
        self._nc: Client | None = None

    # -- loop side -------------------------------------------------------------------------
    def _mine(self, subject: str) -> bool:
        return self._hash_n == 1 or subject_partition(subject, self._hash_n) == self._hash_index

    async def _push(self, item: Message) -> None:
        self._feed.append(item)
        self._pushed += 1
        # Backpressure: block only this subscription's callback task. For the ordered
        # JetStream consumer the flow-control reply waits for the worker anyway (see
        # _JetStreamPartition); for core NATS the client's pending queue fills and
        # nats-py drops (counted as slow consumer).
        while len(self._feed) > self._max_pending and not self._closed:
            self._activity += 1
            await asyncio.sleep(0.005)

    def _raw_handler(self, gen: int) -> RawHandler:
        """The fast-path entry for one subscription: hold back while the feed is full."""

        def on_raw(subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> None:
            self._activity += 1
            if self._overflow or len(self._feed) > self._max_pending:
                if self._hold(gen, subject, reply, data, hdr):
                    self._overflow.append((gen, subject, reply, data, hdr))
                return
            self._on_raw(gen, subject, reply, data, hdr)

        return on_raw

    def _hold(self, gen: int, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> bool:
        """Whether a delivery may wait in the overflow queue (else it is dropped)."""
        return True

    def _on_raw(
        self, gen: int, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None
    ) -> None:
        raise NotImplementedError

    def _refill(self) -> None:
        """Loop side: move held-back deliveries into the feed, in order, while there is room."""
        self._refill_scheduled = False
        overflow, feed = self._overflow, self._feed
        while overflow and len(feed) <= self._max_pending and not self._closed:
            self._on_raw(*overflow.popleft())

    def _message(
        self, subject: str, data: bytes, reply: str | None, hdr: bytes | None, seq: int | None
    ) -> Message:
        if self._keep_headers:
            headers = _parse_headers(hdr) if hdr else None
            return Message(subject, data, _recv_ns(headers, self._clock), headers, reply, seq)
        return Message(subject, data, _recv_ns_raw(hdr, self._clock), None, reply, seq)

    async def _on_disconnected(self) -> None:
        if self._closed:
            return
        self.stats.disconnects += 1
        log.warning("%s [%s]: disconnected from NATS", self._step, self._subject)

    async def _on_reconnected(self) -> None:
        self.stats.reconnects += 1
        log.warning("%s [%s]: reconnected to NATS", self._step, self._subject)

    async def _on_error(self, exc: Exception) -> None:
        name = type(exc).__name__
        if name == "SlowConsumerError":
            self.stats.slow_consumer_drops += 1
            if self.stats.slow_consumer_drops in (1, 10, 100, 1000, 10_000):
                log.warning("%s [%s]: slow consumer, dropping messages", self._step, self._subject)
            return
        if len(self.stats.errors) < 100:
            self.stats.errors.append(f"{name}: {exc}")
        log.warning("%s [%s]: %s: %s", self._step, self._subject, name, exc)

    async def _connect(self) -> Client:
        return await connect(
            self._config,
            step=self._step,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    # -- worker side -----------------------------------------------------------------------
    def _drain(self) -> list[Message]:
        feed = self._feed
        n = min(len(feed), self._batch_size)
        if self._stop_after is not None:
            n = min(n, self._stop_after - self.stats.delivered)
        popleft = feed.popleft
        batch = [popleft() for _ in range(n)]
        if self._overflow and not self._refill_scheduled:
            self._refill_scheduled = True
            self._loop.call_soon(self._refill)
        now_mono = time.monotonic()
        if batch:
            self.stats.delivered += len(batch)
            self._last_item_mono = now_mono
            self._awake = None
        else:
            if self._idle_timeout_s is not None and (
                now_mono - self._last_item_mono >= self._idle_timeout_s
            ):
                raise StopIteration
            # Bytewax's API takes an absolute UTC time; this is scheduling, not data.
            # None leaves Bytewax's own 1 ms back-off.
            idle = self._idle_wait
            self._awake = None if idle is None else datetime.now(UTC) + idle
        return batch

    def _check_stop(self) -> None:
        if self._stop_after is not None and self.stats.delivered >= self._stop_after:
            raise StopIteration

    def next_awake(self) -> datetime | None:
        return self._awake

    async def _aclose(self) -> None:
        nc = self._nc
        if nc is not None and not nc.is_closed:
            # Flush first so a durable consumer's last batch ack reaches the server.
            with contextlib.suppress(Exception):
                if nc.is_connected:
                    await asyncio.sleep(0)  # let queued ack tasks publish
                    await asyncio.wait_for(nc.flush(), 2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._loop.alive:
                self._loop.run(self._aclose(), timeout_s=_CALL_TIMEOUT_S)
        finally:
            NatsLoop.release(self._loop)

    def __del__(self) -> None:
        # Bytewax does not call close() on abort; do not leak the shared loop user.
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()


# ---------------------------------------------------------------------------------------
# core NATS
# ---------------------------------------------------------------------------------------
class _CorePartition(_PartitionBase, StatefulSourcePartition[Message, None]):
    def __init__(self, *, queue: str | None, **kw: Any) -> None:
        super().__init__(**kw)
        self._queue = queue
        self._sub: Subscription | None = None
        try:
            self._loop.run(
                self._start(), timeout_s=_CALL_TIMEOUT_S + self._config.connect_timeout_s
            )
        except BaseException:
            self.close()
            raise

    async def _start(self) -> None:
        self._nc = await self._connect()
        self._sub = await self._nc.subscribe(
            self._subject, queue=self._queue or "", cb=self._on_msg
        )
        if self._fast:
            _install_dispatch(self._nc, self._handlers)
            self._handlers[self._sub._id] = self._raw_handler(0)
        # The subscription is live on the server once the PONG is back, so nothing
        # published after build_part returns is missed.
        await self._nc.flush(int(max(1, self._config.connect_timeout_s)))

    async def _on_msg(self, msg: Msg) -> None:
        """The public callback path (nats-py versions without the fast path)."""
        stats = self.stats
        stats.received += 1
        subject = msg.subject
        if not self._mine(subject):
            stats.skipped_other_partition += 1
            return
        headers = msg.headers if self._keep_headers else None
        await self._push(
            Message(
                subject=subject,
                data=msg.data,
                ts_recv=_recv_ns(msg.headers, self._clock),
                headers=headers,
                reply=msg.reply or None,
            )
        )

    def _hold(self, gen: int, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None) -> bool:
        # Core NATS cannot hold the publisher back: past nats-py's usual queue bound we
        # drop, as nats-py would (a slow consumer).
        if len(self._overflow) < _CORE_OVERFLOW_MSGS:
            return True
        self.stats.received += 1
        self.stats.slow_consumer_drops += 1
        if self.stats.slow_consumer_drops in (1, 10, 100, 1000, 10_000):
            log.warning("%s [%s]: slow consumer, dropping messages", self._step, self._subject)
        return False

    def _on_raw(
        self, gen: int, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None
    ) -> None:
        stats = self.stats
        stats.received += 1
        subj = subject.decode()
        if self._hash_n != 1 and not self._mine(subj):
            stats.skipped_other_partition += 1
            return
        self._feed.append(self._message(subj, data, reply.decode() or None, hdr, None))
        self._pushed += 1

    async def _on_disconnected(self) -> None:
        await super()._on_disconnected()
        if self._closed:
            return
        log.warning(
            "%s [%s]: core NATS is at-most-once: messages published during the outage are lost",
            self._step,
            self._subject,
        )

    def next_batch(self) -> list[Message]:
        self._check_stop()
        return self._drain()

    def snapshot(self) -> None:
        return None


class NatsSource(FixedPartitionedSource[Message, None]):
    """Core NATS subscription(s) as a Bytewax input; at-most-once, no resume state.

    See the module docstring for partitioning, the idle wait and the stop options.
    ``stats`` maps each partition built in this process to its :class:`SourceStats`.
    """

    def __init__(
        self,
        subjects: Sequence[str] | str,
        config: NatsConfig,
        *,
        hash_partitions: int = 1,
        queue: str | None = None,
        batch_size: int = 1000,
        clock: Callable[[], int] = time.time_ns,
        idle_wait: timedelta | None = DEFAULT_IDLE_WAIT,
        stop_after: int | None = None,
        idle_timeout_s: float | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        keep_headers: bool = True,
        fast_path: bool = True,
    ) -> None:
        self._parts = _split_parts(subjects, hash_partitions, "NatsSource")
        self.config = config
        self.hash_partitions = hash_partitions
        self.queue = queue
        self.batch_size = batch_size
        self.clock = clock
        self.idle_wait = idle_wait
        self.stop_after = stop_after
        self.idle_timeout_s = idle_timeout_s
        self.max_pending = max_pending
        self.keep_headers = keep_headers
        self.fast_path = fast_path
        self.stats: dict[str, SourceStats] = {}
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> StatefulSourcePartition[Message, None]:
        subject, index = self._parts[for_part]
        stats = SourceStats()
        part = _CorePartition(
            step=f"{step_id} nats source {for_part}",
            config=self.config,
            subject=subject,
            hash_index=index,
            hash_partitions=self.hash_partitions,
            queue=self.queue,
            batch_size=self.batch_size,
            clock=self.clock,
            idle_wait=self.idle_wait,
            stop_after=self.stop_after,
            idle_timeout_s=self.idle_timeout_s,
            max_pending=self.max_pending,
            stats=stats,
            keep_headers=self.keep_headers,
            fast_path=self.fast_path,
        )
        # Registered once subscribed, so a caller that sees it can publish safely.
        with self._lock:
            self.stats[for_part] = stats
        return part


# ---------------------------------------------------------------------------------------
# JetStream
# ---------------------------------------------------------------------------------------
def _js_seqs(reply: str | bytes) -> tuple[int, int]:
    """(stream seq, consumer seq) from a JetStream ack subject, v1 or v2 layout.

    v1: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>`` (9
    tokens); v2 adds ``<domain>.<account hash>`` after ``ACK`` (and maybe a token at
    the end). ``int`` takes the bytes tokens as they are, so the fast path never
    decodes the subject for this.
    """
    tokens = reply.split(".") if isinstance(reply, str) else reply.split(b".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[6])
    return int(tokens[7]), int(tokens[8])


class _JetStreamPartition(_PartitionBase, StatefulSourcePartition[Message, int]):
    def __init__(
        self,
        *,
        stream: str,
        durable: str | None,
        deliver: Literal["all", "new"],
        resume_state: int | None,
        idle_heartbeat_s: float,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._stream = stream
        self._durable = durable
        self._hb = idle_heartbeat_s
        self._sub: Any = None
        # Ordered mode: the server-side name of our ephemeral consumer, the pending
        # flow-control reply as (feed items that must be drained first, reply subject),
        # and the heartbeat watchdog.
        self._consumer: str | None = None
        self._fc: tuple[int, str] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # Worker side: last stream seq handed to Bytewax (the resume state).
        self._delivered_seq = 0
        # Loop side: last stream seq put in the feed; a new consumer starts after it.
        self._last_seq = 0
        self._expect_dseq: int | None = None
        # Bumped on every (re)subscribe: callbacks of an abandoned consumer are ignored.
        self._gen = 0
        self._resub_lock: asyncio.Lock | None = None
        try:
            self._loop.run(
                self._start(resume_state, deliver),
                timeout_s=_CALL_TIMEOUT_S + self._config.connect_timeout_s,
            )
        except BaseException:
            self.close()
            raise

    async def _start(self, resume_state: int | None, deliver: str) -> None:
        self._resub_lock = asyncio.Lock()
        self._nc = await self._connect()
        js = self._nc.jetstream()
        try:
            info = await js.stream_info(self._stream)
        except NotFoundError:
            raise LookupError(
                f"{self._step}: stream {self._stream!r} does not exist; "
                "hint: create it first (e.g. `trade2026 streams` or js.add_stream)"
            ) from None
        if resume_state is not None:
            start = resume_state
        elif self._durable is not None and (pos := await self._durable_position(js)) is not None:
            start = pos
        elif deliver == "new":
            start = info.state.last_seq
        else:
            start = 0
        self._delivered_seq = self._last_seq = start
        if self._fast and self._durable is None:
            _install_dispatch(self._nc, self._handlers)
        else:
            self._fast = False  # a durable's flow control is nats-py's own
        await self._subscribe()
        if self._durable is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _durable_position(self, js: Any) -> int | None:
        assert self._durable is not None
        try:
            ci = await js.consumer_info(self._stream, self._durable)
        except NotFoundError:
            return None
        return int(ci.ack_floor.stream_seq) if ci.ack_floor else 0

    async def _subscribe(self) -> None:
        """(Re)create the consumer so it starts right after the last seq we hold."""
        assert self._nc is not None
        js = self._nc.jetstream()
        config = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._last_seq + 1,
            filter_subject=self._subject,
        )
        self._expect_dseq = None
        self._gen += 1
        gen = self._gen

        if self._durable is None:
            await self._subscribe_ordered(js, config, gen)
        else:

            async def on_msg(msg: Msg) -> None:
                if gen == self._gen:
                    await self._on_msg(msg)

            # A durable consumer always restarts from *our* position (resume state or
            # ack floor), so drop any old definition and re-create it from last_seq + 1.
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(self._stream, self._durable)
            config.durable_name = self._durable
            # Ack "all" lets one ack per drained batch cover every message before it.
            config.ack_policy = js_api.AckPolicy.ALL
            config.max_ack_pending = max(self._max_pending, 10 * self._batch_size)
            self._sub = await js.subscribe(
                self._subject,
                stream=self._stream,
                durable=self._durable,
                config=config,
                cb=on_msg,
                manual_ack=True,
                flow_control=True,
                idle_heartbeat=self._hb,
            )

    async def _subscribe_ordered(self, js: Any, config: js_api.ConsumerConfig, gen: int) -> None:
        """Our own ordered push consumer on a plain subscription (see the class docstring).

        The subscription exists before the consumer, and both requests go out on one
        connection in order, so the first delivery cannot beat it.
        """
        assert self._nc is not None
        old = self._consumer
        if old is not None:
            # Best effort: an abandoned ephemeral consumer also expires by itself.
            asyncio.get_running_loop().create_task(self._delete_consumer(js, old))
        self._consumer = None
        self._fc = None
        self._expect_dseq = 1
        inbox = self._nc.new_inbox()

        async def on_raw(msg: Msg) -> None:
            if gen == self._gen:
                await self._on_ordered(msg)

        self._sub = await self._nc.subscribe(
            inbox,
            cb=on_raw,
            pending_msgs_limit=_ORDERED_PENDING_MSGS,
            pending_bytes_limit=_ORDERED_PENDING_BYTES,
        )
        if self._fast:
            self._handlers[self._sub._id] = self._raw_handler(gen)
        config.deliver_subject = inbox
        config.ack_policy = js_api.AckPolicy.NONE
        config.flow_control = True
        config.idle_heartbeat = self._hb
        config.max_deliver = 1
        config.mem_storage = True
        config.num_replicas = 1
        config.inactive_threshold = max(5.0, 5 * self._hb)
        info = await js.add_consumer(self._stream, config=config)
        if gen == self._gen:
            self._consumer = info.name
        else:  # superseded while we waited for the server
            asyncio.get_running_loop().create_task(self._delete_consumer(js, info.name))

    async def _delete_consumer(self, js: Any, name: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(js.delete_consumer(self._stream, name), 2.0)

    def _on_raw(
        self, gen: int, subject: bytes, reply: bytes, data: bytes, hdr: bytes | None
    ) -> None:
        """Fast path of :meth:`_on_ordered`: the same checks on nats-py's raw bytes."""
        if gen != self._gen:
            return
        if reply.startswith(_ACK_PREFIX_B):
            seq, dseq = _js_seqs(reply)
            if dseq != self._expect_dseq:
                self._restart(f"delivery gap (consumer seq {dseq}, expected {self._expect_dseq})")
                return
            self._expect_dseq = dseq + 1
            stats = self.stats
            stats.received += 1
            if seq <= self._last_seq:
                stats.duplicates += 1
                return
            self._last_seq = seq
            subj = subject.decode()
            if self._hash_n != 1 and not self._mine(subj):
                stats.skipped_other_partition += 1
                return
            self._feed.append(self._message(subj, data, reply.decode(), hdr, seq))
            self._pushed += 1
            return
        self._on_control(reply.decode(), (_parse_headers(hdr) if hdr else None) or {})

    async def _on_ordered(self, msg: Msg) -> None:
        """Data, flow-control requests and heartbeats of the ordered consumer, in order."""
        self._activity += 1
        reply = msg.reply
        if reply.startswith(_ACK_PREFIX):
            seq, dseq = _js_seqs(reply)
            if dseq != self._expect_dseq:
                self._restart(f"delivery gap (consumer seq {dseq}, expected {self._expect_dseq})")
                return
            self._expect_dseq = dseq + 1
            await self._accept(msg, seq)
            return
        self._on_control(reply, msg.headers or {})

    def _on_control(self, reply: str, headers: dict[str, str]) -> None:
        """A flow-control request (it has a reply subject) or an idle heartbeat."""
        if reply:  # "100 FlowControl Request": answer once the worker took what came before
            self._flow_control(reply)
            return
        # "100 Idle Heartbeat": while the server waits for a flow-control answer it names
        # the reply subject again; it also tells which delivery it sent last.
        stalled = headers.get(js_api.Header.CONSUMER_STALLED.value)
        if stalled:
            self._flow_control(stalled)
        last = headers.get(js_api.Header.LAST_CONSUMER.value)
        if last is not None and self._expect_dseq is not None:
            with contextlib.suppress(ValueError):
                if int(last) != self._expect_dseq - 1:
                    self._restart(f"heartbeat says consumer seq {last} was sent")

    def _flow_control(self, reply: str) -> None:
        """Answer now if the worker has drained everything before the request, else later.

        This is the backpressure: the server sends at most its flow-control window
        beyond the last answered request, so the unanswered request caps what this
        process holds. ``next_batch`` answers it once ``stats.delivered`` catches up.
        """
        need = self._pushed
        if self.stats.delivered >= need:
            self._fc = None
            self._send_fc(reply)
        else:
            self._fc = (need, reply)

    def _send_fc(self, reply: str) -> None:
        nc = self._nc
        if nc is not None and nc.is_connected:
            asyncio.get_running_loop().create_task(nc.publish(reply, b""))

    def _restart(self, why: str) -> None:
        self._gen += 1
        asyncio.get_running_loop().create_task(self._resubscribe(why))

    async def _watch(self) -> None:
        """Re-create a consumer that went silent (no delivery, heartbeat or wait for room).

        Heartbeats come every ``idle_heartbeat_s`` even while the server waits for a
        flow-control answer, so two missed ones mean the consumer is gone (e.g. the
        server lost its in-memory state without dropping our connection).
        """
        period = max(0.2, 2 * self._hb)
        seen = self._activity
        while not self._closed:
            await asyncio.sleep(period)
            nc = self._nc
            if self._closed or nc is None or not nc.is_connected:
                seen = self._activity
                continue
            if self._activity == seen and not self._overflow:
                self._restart(f"no heartbeat for {period:g} s")
            seen = self._activity

    async def _aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        nc, name = self._nc, self._consumer
        if name is not None and nc is not None and nc.is_connected:
            await self._delete_consumer(nc.jetstream(), name)
        await super()._aclose()

    async def _resubscribe(self, why: str) -> None:
        assert self._resub_lock is not None
        async with self._resub_lock:
            if self._closed or self._nc is None or self._nc.is_closed:
                return
            self.stats.resubscribes += 1
            log.warning(
                "%s [%s]: %s; re-creating consumer from seq %d",
                self._step,
                self._subject,
                why,
                self._last_seq + 1,
            )
            if self._sub is not None:
                self._handlers.pop(getattr(self._sub, "_id", -1), None)
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
            try:
                await self._subscribe()
            except Exception as exc:
                await self._on_error(exc)
                # JetStream may still be recovering after a restart; try again shortly.
                await asyncio.sleep(max(0.2, self._config.reconnect_wait_s))
                asyncio.get_running_loop().create_task(self._resubscribe("retry after error"))

    async def _on_reconnected(self) -> None:
        await super()._on_reconnected()
        # Messages in flight when the server went down are lost. An ordered consumer
        # (in memory) is gone after a restart and nats-py would notice only after two
        # missed heartbeats; a durable one would go on past the lost messages, and with
        # ack "all" a later ack would cover them. So start over, at once, from what we
        # hold, and ignore whatever the old consumer still pushes until then.
        self._gen += 1
        asyncio.get_running_loop().create_task(self._resubscribe("reconnected"))

    async def _on_msg(self, msg: Msg) -> None:
        """A durable consumer's delivery (nats-py handles its flow control)."""
        seq, dseq = _js_seqs(msg.reply)
        expect = self._expect_dseq
        if expect is not None and dseq != expect and dseq > expect:
            # The server skipped deliveries (lost in flight): rewind.
            self.stats.received += 1
            self._restart("delivery gap")
            return
        self._expect_dseq = dseq + 1
        await self._accept(msg, seq)

    async def _accept(self, msg: Msg, seq: int) -> None:
        stats = self.stats
        stats.received += 1
        if seq <= self._last_seq:
            stats.duplicates += 1
            return
        self._last_seq = seq
        subject = msg.subject
        if not self._mine(subject):
            stats.skipped_other_partition += 1
            return
        headers = msg.headers
        await self._push(
            Message(
                subject=subject,
                data=msg.data,
                ts_recv=_recv_ns(headers, self._clock),
                headers=headers if self._keep_headers else None,
                reply=msg.reply,
                seq=seq,
            )
        )

    def next_batch(self) -> list[Message]:
        self._check_stop()
        batch = self._drain()
        fc = self._fc
        if fc is not None and self.stats.delivered >= fc[0]:
            self._fc = None
            self._loop.call_soon(self._send_fc, fc[1])
        if batch:
            last = batch[-1]
            assert last.seq is not None
            self._delivered_seq = last.seq
            if self._durable is not None and last.reply:
                self._loop.call_soon(self._ack, last.reply)
        return batch

    def _ack(self, reply: str) -> None:
        nc = self._nc
        if nc is not None and nc.is_connected:
            asyncio.get_running_loop().create_task(nc.publish(reply, b"+ACK"))

    def snapshot(self) -> int:
        return self._delivered_seq


class JetStreamSource(FixedPartitionedSource[Message, int]):
    """JetStream stream filters as a Bytewax input that resumes exactly where it left.

    The resume state of each partition is the last stream sequence handed to Bytewax;
    on recovery the partition's consumer starts at that sequence + 1. ``Message.seq``
    carries the stream sequence.

    Consumer style. Measured on this machine with plain nats-py: ordered push
    consumer ~106k msg/s, push consumer with explicit acks ~61k/s, pull consumer
    fetching 1,000 at a time 13-17k/s, so both modes here are push consumers (a pull
    consumer fetching only when there is room would bound memory too, at a tenth of
    the rate). Through this source (``benchmarks/nats_throughput.py``, one partition,
    50k x 100 B) the ordered consumer drained 150-180k msg/s and the durable one
    134-180k msg/s (it acks once per batch with ack policy "all", not per message).

    Default: the **ordered push consumer**. It needs no acks and leaves no state on the
    server, and the position already lives in Bytewax's recovery store. Pass
    ``durable="name"`` for a durable push consumer ``name-<partition index>`` when the
    position should also be kept (and be visible) on the server, e.g. for a flow run
    without Bytewax recovery: it then continues from the durable's ack floor.
    Either way, a resume state wins: the consumer is (re)created at state + 1.

    Backpressure (a stalled sink stops the worker, so it stops draining the source):

    * durable: ``max_ack_pending`` = max(max_pending, 10 x batch) holds the server back.
    * ordered: the ordered consumer is our own, on a plain subscription, not nats-py's
      ``ordered_consumer=True``. nats-py answers the server's flow-control requests
      as soon as a callback subscription has *received* the messages before them (and
      answers a stalled heartbeat at once), so the server never waited: with the sink
      stalled, the whole stream landed in nats-py's queue (10,000 x 8 KB: +96 MB,
      server pending 0). Here a flow-control request (or the reply subject a stalled
      heartbeat repeats) is answered only once the worker has *drained* every message
      delivered before it. The server sends at most one flow-control window past the
      last answer (2 MiB at first, doubling per answer to 32 MiB, measured with
      nats-server 2.15), so a stalled flow holds at most that window plus one batch in
      memory and the rest stays on the server as the consumer's pending count
      (same test: +0 MB, 9,740 of 10,000 pending). On the fast path the messages of
      that window which do not fit under ``max_pending`` wait, raw and in order, in
      the partition's overflow queue (on the callback path: in nats-py's
      subscription queue) until the worker drains. A running flow answers at once, so
      the cost is nil: interleaved runs of the old and this consumer (100k x 100 B,
      one partition) drained a median 109k vs 159k msg/s on this noisy 2-core box,
      and ``benchmarks/nats_throughput.py`` measured 172k msg/s afterwards.
      We also check delivery sequences and the heartbeats' last-delivered sequence and
      re-create the consumer from the last stream sequence held on a gap or after
      2 x ``idle_heartbeat_s`` of silence, as nats-py's ordered consumer did.

    After a nats-server restart both styles continue from the last sequence received
    (the stream is on disk), so nothing is lost; duplicates are dropped by sequence.
    ``deliver`` ("all" or "new") applies only when there is no resume state or durable.
    """

    def __init__(
        self,
        stream: str,
        subjects: Sequence[str] | str,
        config: NatsConfig,
        *,
        hash_partitions: int = 1,
        durable: str | None = None,
        deliver: Literal["all", "new"] = "all",
        batch_size: int = 1000,
        clock: Callable[[], int] = time.time_ns,
        idle_wait: timedelta | None = DEFAULT_IDLE_WAIT,
        idle_heartbeat_s: float = 1.0,
        stop_after: int | None = None,
        idle_timeout_s: float | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        keep_headers: bool = True,
        fast_path: bool = True,
    ) -> None:
        if deliver not in ("all", "new"):
            raise ValueError(f"JetStreamSource: deliver={deliver!r}; hint: use 'all' or 'new'")
        self._parts = _split_parts(subjects, hash_partitions, "JetStreamSource")
        self.stream = stream
        self.config = config
        self.hash_partitions = hash_partitions
        self.durable = durable
        self.deliver = deliver
        self.batch_size = batch_size
        self.clock = clock
        self.idle_wait = idle_wait
        self.idle_heartbeat_s = idle_heartbeat_s
        self.stop_after = stop_after
        self.idle_timeout_s = idle_timeout_s
        self.max_pending = max_pending
        self.keep_headers = keep_headers
        self.fast_path = fast_path
        self.stats: dict[str, SourceStats] = {}
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[Message, int]:
        subject, index = self._parts[for_part]
        durable = None
        if self.durable is not None:
            durable = f"{self.durable}-{list(self._parts).index(for_part)}"
        stats = SourceStats()
        part = _JetStreamPartition(
            step=f"{step_id} jetstream source {self.stream}/{for_part}",
            config=self.config,
            stream=self.stream,
            subject=subject,
            hash_index=index,
            hash_partitions=self.hash_partitions,
            durable=durable,
            deliver=self.deliver,
            resume_state=resume_state,
            idle_heartbeat_s=self.idle_heartbeat_s,
            batch_size=self.batch_size,
            clock=self.clock,
            idle_wait=self.idle_wait,
            stop_after=self.stop_after,
            idle_timeout_s=self.idle_timeout_s,
            max_pending=self.max_pending,
            stats=stats,
            keep_headers=self.keep_headers,
            fast_path=self.fast_path,
        )
        with self._lock:
            self.stats[for_part] = stats
        return part
