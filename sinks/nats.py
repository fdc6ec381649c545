"""Bytewax sinks that publish :class:`~schemas.transport.Outgoing` to NATS and JetStream.

Each worker gets its own connection on the shared loop thread
(:class:`trade2026.natsloop.NatsLoop`); ``write_batch`` hands the whole batch to
that loop in one call and blocks until the batch is out (for the pipelined sink: until
the previous batch is out, and at the epoch's end until all are), so Bytewax never
commits an epoch with its messages still sitting in a client buffer.

* :class:`NatsSink` (core NATS, at-most-once) publishes the batch and then flushes
  once (one PING/PONG round trip per batch, not per message). If the connection is
  down it waits for the reconnect rather than filling the client's reconnect buffer.
* :class:`PipelinedNatsSink` (core NATS too) does not wait for a batch's flush in
  ``write_batch``, only for the previous batch's, and waits for the last one when the
  epoch closes (``snapshot()``), so the round trip overlaps the worker's next batch
  while no epoch is committed ahead of its messages. It is a partitioned sink (items
  are ``(key, Outgoing)``) because only those get that epoch-end hook; see its
  docstring.
* :class:`JetStreamSink` publishes every message of a batch with its ``Nats-Msg-Id``
  without waiting, then waits for all the publish acks together. Only when JetStream
  has acknowledged storing every message does ``write_batch`` return, so nothing is
  acknowledged upstream that is not on disk. Unacknowledged messages (a server restart,
  a timeout) are published again with the same id: the stream's duplicate window makes
  the retry safe.

Throughput (``benchmarks/nats_throughput.py``, one worker, ``write_batch`` of 1,000 x
100 B, 2 cores shared with other work, three runs of the script): the core sink
published 230-330k msg/s, the JetStream sink 28-34k msg/s with every ack awaited (file
storage). In the same runs the median bare nats-py relay moved 65-145k msg/s and the
NatsSource -> NatsSink Bytewax relay 74-120k msg/s (0.83-1.13 of bare: batching on
both ends pays for Bytewax's overhead). Load from other processes moves these a lot.
On a loaded session later (sinks one run, relays medians of 3): core sink 127k msg/s,
the pipelined sink alone 83k (nothing to overlap: its gain is a worker that has other
work meanwhile), the relay 40k with NatsSink and 43k with PipelinedNatsSink (bare 50k).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from schemas.transport import MSG_ID_HEADER, Outgoing
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop, connect

__all__ = ["JetStreamSink", "NatsSink", "PipelinedNatsSink", "SinkStats"]

log = logging.getLogger(__name__)


@dataclass
class SinkStats:
    """Counters one sink partition keeps; read them from ``sink.stats[worker_index]``."""

    published: int = 0
    batches: int = 0
    #: JetStream said it already stored this Nats-Msg-Id (a redelivery upstream).
    duplicates: int = 0
    #: Messages published again after a missing ack (restart or timeout).
    retried: int = 0
    disconnects: int = 0
    reconnects: int = 0


class _SinkPartition:
    """One NATS connection on the shared loop; publishing is up to the subclasses."""

    def __init__(self, step: str, config: NatsConfig, outage_timeout_s: float, stats: SinkStats):
        self._step = step
        self._config = config
        self._outage_timeout_s = outage_timeout_s
        self.stats = stats
        self._closed = False
        self._loop = NatsLoop.acquire()
        self._nc: Client | None = None
        try:
            self._nc = self._loop.run(
                connect(
                    config,
                    step=step,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                timeout_s=config.connect_timeout_s + 10.0,
            )
        except BaseException:
            self.close()
            raise

    async def _on_disconnected(self) -> None:
        if self._closed:
            return
        self.stats.disconnects += 1
        log.warning("%s: disconnected from NATS; publishing waits for the reconnect", self._step)

    async def _on_reconnected(self) -> None:
        self.stats.reconnects += 1
        log.warning("%s: reconnected to NATS", self._step)

    async def _wait_connected(self, deadline: float) -> None:
        nc = self._nc
        assert nc is not None
        while not nc.is_connected:
            if nc.is_closed:
                raise ConnectionError(
                    f"{self._step}: NATS connection is closed; "
                    "hint: the server refused us or max_reconnect_attempts ran out"
                )
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"{self._step}: NATS still down after {self._outage_timeout_s:.0f}s; "
                    "hint: check the server at " + ", ".join(self._config.servers)
                )
            await asyncio.sleep(0.01)

    async def _aclose(self) -> None:
        nc = self._nc
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                if nc.is_connected:
                    await asyncio.wait_for(nc.flush(), 5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5.0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._loop.alive:
                self._loop.run(self._aclose(), timeout_s=15.0)
        finally:
            NatsLoop.release(self._loop)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()


class _CoreSinkPartition(_SinkPartition, StatelessSinkPartition[Outgoing]):
    async def _publish(self, items: list[Outgoing]) -> None:
        nc = self._nc
        assert nc is not None
        deadline = time.monotonic() + self._outage_timeout_s
        publish = nc.publish
        while True:
            await self._wait_connected(deadline)
            # Bytes written to a socket that then dies are gone without an error, and a
            # flush only vouches for the connection it runs on. So a batch that saw a
            # reconnect is published again (receivers de-duplicate on Nats-Msg-Id) until
            # one connection carried all of it and answered the flush.
            # nats-py counts a reconnect before it reports connected again (our callback
            # runs later), so its own counter tells whether this batch's connection died.
            reconnects = nc.stats["reconnects"]
            for item in items:
                await publish(item.subject, item.data, headers=item.headers)
            await self._wait_connected(deadline)
            try:
                await nc.flush(int(max(1, deadline - time.monotonic())))
            except Exception:
                if time.monotonic() > deadline:
                    raise
                continue
            if nc.stats["reconnects"] == reconnects:
                break
            self.stats.retried += len(items)
        self.stats.published += len(items)
        self.stats.batches += 1

    def write_batch(self, items: list[Outgoing]) -> None:
        if items:
            self._loop.run(self._publish(items), timeout_s=self._outage_timeout_s + 10.0)


class NatsSink(DynamicSink[Outgoing]):
    """Publish each :class:`Outgoing` with core NATS; one flush per batch.

    A batch that saw a reconnect before its flush answered is published again, so
    what reaches the server is at-least-once (a capturing stream drops the repeats by
    ``Nats-Msg-Id``; a plain core subscriber may see them twice). Core NATS itself is
    at-most-once: if the server dies after our flush, before its fan-out, the batch is
    gone. Use :class:`JetStreamSink` where the publisher must know it was stored.
    ``outage_timeout_s`` is how long a batch waits for a reconnect before the step
    fails.
    """

    def __init__(self, config: NatsConfig, *, outage_timeout_s: float = 30.0) -> None:
        self.config = config
        self.outage_timeout_s = outage_timeout_s
        self.stats: dict[int, SinkStats] = {}

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Outgoing]:
        stats = self.stats[worker_index] = SinkStats()
        return _CoreSinkPartition(
            f"{step_id} nats sink (worker {worker_index})",
            self.config,
            self.outage_timeout_s,
            stats,
        )


class _PipelinedSinkPartition(_CoreSinkPartition, StatefulSinkPartition[Outgoing, None]):
    """Core publishing whose flush overlaps the worker's next batch; see PipelinedNatsSink."""

    def __init__(self, step: str, config: NatsConfig, outage_timeout_s: float, stats: SinkStats):
        # Worker side: the batch still being published and flushed on the loop.
        self._inflight: concurrent.futures.Future[None] | None = None
        # Loop side: batches run their publish loop one at a time, in submission order
        # (asyncio.Lock wakes waiters first come, first served).
        self._order: asyncio.Lock | None = None
        super().__init__(step, config, outage_timeout_s, stats)

    async def _publish(self, items: list[Outgoing]) -> None:
        if self._order is None:
            self._order = asyncio.Lock()
        async with self._order:
            await super()._publish(items)

    def _settle(self) -> None:
        """Block until the outstanding batch is flushed; its error, if any, fails the step."""
        fut, self._inflight = self._inflight, None
        if fut is None:
            return
        try:
            fut.result(self._outage_timeout_s + 10.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(
                f"{self._step}: a batch was not flushed within {self._outage_timeout_s + 10:.0f}s; "
                "hint: is the NATS server reachable?"
            ) from None

    def write_batch(self, items: list[Outgoing]) -> None:
        if not items:
            return
        prev = self._inflight
        self._inflight = self._loop.submit(self._publish(items))
        if prev is not None:
            try:
                prev.result(self._outage_timeout_s + 10.0)
            except concurrent.futures.TimeoutError:
                prev.cancel()
                raise TimeoutError(
                    f"{self._step}: a batch was not flushed within "
                    f"{self._outage_timeout_s + 10:.0f}s; hint: is the NATS server reachable?"
                ) from None

    def snapshot(self) -> None:
        # Bytewax snapshots a partition when the epoch it wrote in closes and commits the
        # epoch only with that snapshot, so waiting here means no epoch is committed
        # (and no input position moves past it) before its messages reached the server.
        self._settle()
        return None

    def close(self) -> None:
        if not self._closed and self._loop.alive:
            try:
                self._settle()
            finally:
                super().close()
        else:
            super().close()


class PipelinedNatsSink(FixedPartitionedSink[Outgoing, None]):
    """Core NATS like :class:`NatsSink`, but ``write_batch`` does not wait for its flush.

    ``write_batch`` hands the batch to the loop thread and waits only for the *previous*
    batch, so the flush round trip (and nats-py's publish work) overlaps the worker's
    next batch instead of blocking it: in ``benchmarks/orders.py`` the worker spent
    ~24 % of its time waiting in ``NatsSink.write_batch``.

    Why a partitioned (stateful) sink: Bytewax commits an epoch's snapshot after the
    epoch's ``write_batch`` calls returned. A stateless sink has no later hook, so a
    pipelined one could let an epoch commit while its last batch is still unflushed;
    a kill -9 then would lose that batch although the input moved on. A
    ``StatefulSinkPartition`` is snapshotted when the epoch it wrote in closes, before
    the epoch is committed (bytewax ``src/outputs.rs``, ``partitioned_output``: the
    epoch-close notification calls ``snapshot()`` on every partition written in the
    epoch and sends the result to the recovery store); here ``snapshot()`` waits for the
    outstanding flush and returns ``None`` (no resume state). So every message written
    in an epoch is on the server before that epoch can be committed, with or without
    recovery, at the cost of one flush wait per epoch instead of one per batch.

    Items are ``(key, Outgoing)`` pairs (a ``FixedPartitionedSink`` routes by key), e.g.
    ``op.key_on("key", outgoing, lambda o: o.subject)``; messages of one key keep their
    order. ``partitions`` (default 1) spreads keys over that many connections, each
    owned by one worker (Bytewax picks it), so with several workers items may cross to
    another worker first. Like :class:`NatsSink` it is at-most-once if the server itself
    fails after the flush.
    """

    def __init__(
        self, config: NatsConfig, *, partitions: int = 1, outage_timeout_s: float = 30.0
    ) -> None:
        if partitions < 1:
            raise ValueError(f"PipelinedNatsSink: partitions={partitions}; hint: use 1 or more")
        self.config = config
        self.partitions = partitions
        self.outage_timeout_s = outage_timeout_s
        self.stats: dict[str, SinkStats] = {}

    def list_parts(self) -> list[str]:
        return [f"nats-{i}" for i in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        # Bytewax calls this per item; with one partition there is nothing to hash.
        return 0 if self.partitions == 1 else zlib.crc32(item_key.encode())

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> StatefulSinkPartition[Outgoing, None]:
        stats = self.stats[for_part] = SinkStats()
        return _PipelinedSinkPartition(
            f"{step_id} pipelined nats sink ({for_part})", self.config, self.outage_timeout_s, stats
        )


class _JetStreamSinkPartition(_SinkPartition, StatelessSinkPartition[Outgoing]):
    def __init__(
        self,
        step: str,
        config: NatsConfig,
        outage_timeout_s: float,
        stats: SinkStats,
        *,
        msg_id: Callable[[Outgoing], str] | None,
        stream: str | None,
        ack_timeout_s: float,
        max_in_flight: int,
    ) -> None:
        super().__init__(step, config, outage_timeout_s, stats)
        self._msg_id = msg_id
        self._stream = stream
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        assert self._nc is not None
        self._js: JetStreamContext = self._nc.jetstream(
            timeout=ack_timeout_s, publish_async_max_pending=max_in_flight
        )

    def _headers(self, item: Outgoing) -> dict[str, str]:
        headers = dict(item.headers) if item.headers else {}
        if MSG_ID_HEADER not in headers:
            if self._msg_id is None:
                raise ValueError(
                    f"{self._step}: message for {item.subject!r} has no {MSG_ID_HEADER} header "
                    "and the sink has no msg_id function; hint: set the header upstream or "
                    "pass JetStreamSink(msg_id=...) so redeliveries are de-duplicated"
                )
            headers[MSG_ID_HEADER] = self._msg_id(item)
        return headers

    async def _publish(self, items: list[Outgoing]) -> None:
        prepared = [(it.subject, it.data, self._headers(it)) for it in items]
        deadline = time.monotonic() + self._outage_timeout_s
        wave = self._max_in_flight
        for start in range(0, len(prepared), wave):
            await self._publish_wave(
                prepared, list(range(start, min(start + wave, len(prepared)))), deadline
            )
        self.stats.published += len(items)
        self.stats.batches += 1

    async def _publish_wave(
        self, prepared: list[tuple[str, bytes, dict[str, str]]], todo: list[int], deadline: float
    ) -> None:
        """Publish ``todo`` without waiting, then await all acks; repeat the unacked."""
        js = self._js
        first = True
        while todo:
            await self._wait_connected(deadline)
            if not first:
                self.stats.retried += len(todo)
            first = False
            futures: dict[int, asyncio.Future[Any]] = {}
            for i in todo:
                subject, data, headers = prepared[i]
                # publish_async adds to headers when stream is set; give it a copy.
                futures[i] = await js.publish_async(
                    subject, data, headers=dict(headers), stream=self._stream
                )
            await asyncio.wait(futures.values(), timeout=self._ack_timeout_s)
            retry: list[int] = []
            for i, fut in futures.items():
                if not fut.done():
                    # Cancelling releases the client's in-flight slot for this publish.
                    fut.cancel()
                    retry.append(i)
                    continue
                exc = fut.exception()
                if exc is None:
                    if fut.result().duplicate:
                        self.stats.duplicates += 1
                    continue
                if isinstance(exc, NoStreamResponseError):
                    # No stream answered: missing stream, or JetStream still starting.
                    retry.append(i)
                    continue
                if isinstance(exc, APIError):
                    raise RuntimeError(
                        f"{self._step}: JetStream refused {prepared[i][0]!r}: {exc}; "
                        "hint: check the stream config (subjects, limits, expected stream)"
                    ) from exc
                raise exc
            todo = retry
            if todo:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self._step}: {len(todo)} messages not acknowledged by JetStream "
                        f"after {self._outage_timeout_s:.0f}s; hint: does a stream cover "
                        f"{prepared[todo[0]][0]!r}? (`nats stream ls`)"
                    )
                log.warning(
                    "%s: %d messages without a publish ack; publishing them again",
                    self._step,
                    len(todo),
                )
                await asyncio.sleep(0.05)

    def write_batch(self, items: list[Outgoing]) -> None:
        if items:
            self._loop.run(self._publish(items), timeout_s=self._outage_timeout_s + 30.0)


class JetStreamSink(DynamicSink[Outgoing]):
    """Publish to JetStream and return from ``write_batch`` only once all are stored.

    The ``Nats-Msg-Id`` of each message comes from ``Outgoing.headers`` when present,
    else from ``msg_id(outgoing)``; a message with neither is a programming error and
    fails the step. ``stream`` (optional) makes the server reject messages that would
    land in any other stream. ``max_in_flight`` caps unacknowledged publishes per
    worker; larger batches are sent in waves of that size.
    """

    def __init__(
        self,
        config: NatsConfig,
        *,
        msg_id: Callable[[Outgoing], str] | None = None,
        stream: str | None = None,
        ack_timeout_s: float = 5.0,
        outage_timeout_s: float = 30.0,
        max_in_flight: int = 4000,
    ) -> None:
        self.config = config
        self.msg_id = msg_id
        self.stream = stream
        self.ack_timeout_s = ack_timeout_s
        self.outage_timeout_s = outage_timeout_s
        self.max_in_flight = max_in_flight
        self.stats: dict[int, SinkStats] = {}

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Outgoing]:
        stats = self.stats[worker_index] = SinkStats()
        return _JetStreamSinkPartition(
            f"{step_id} jetstream sink (worker {worker_index})",
            self.config,
            self.outage_timeout_s,
            stats,
            msg_id=self.msg_id,
            stream=self.stream,
            ack_timeout_s=self.ack_timeout_s,
            max_in_flight=self.max_in_flight,
        )
