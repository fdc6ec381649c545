"""Order entry over NATS for Python callers: request/reply through the durable ORDERS stream.

Why a helper and not plain ``nc.request``: the ``ORDERS`` JetStream stream captures
``orders.submit|cancel|replace|control`` with ``no_ack`` (so JetStream never answers in
the flow's place), but JetStream does not keep a message's reply subject. The orders
flow therefore answers to the subject named in header ``T26-Reply-To``
(docs/order-path-subjects.md). nats-py's ``request`` picks its inbox internally, so this
client keeps one wildcard inbox subscription and puts each request's own inbox in the
header itself.

A timeout does **not** mean the request was lost: it is in the stream and the flow
decides it when it runs again. Retrying with the *same bytes* (the same
:class:`SubmitOrder`, including its stamped ``ts_submit``) is safe: the flow answers a
byte-identical request with the decision it already made, and sends nothing new to the
venue. :class:`OrderTimeout` carries the stamped request for that retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError

from schemas.orders import (
    CancelOrder,
    ControlAction,
    ControlCommand,
    ControlScope,
    ReplaceOrder,
    RiskDecision,
    SubmitOrder,
)
from schemas.transport import MSG_ID_HEADER, Message, Outgoing
from trade2026.natsconf import NatsConfig

__all__ = [
    "CONTROL_SUBJECT",
    "ORDERS_STREAM",
    "ORDERS_SUBJECTS",
    "ORDER_ID_HEADER",
    "ORDER_PATH_STREAMS",
    "REPLY_TO_HEADER",
    "VENUE_IN_STREAM",
    "OrderClient",
    "OrderTimeout",
    "SourceGroup",
    "StreamLimits",
    "content_msg_id",
    "dead_letter_out",
    "ensure_order_path",
    "ensure_order_path_streams",
    "ensure_order_streams",
]

ORDERS_STREAM = "ORDERS"
SUBMIT_SUBJECT = "orders.submit"
CANCEL_SUBJECT = "orders.cancel"
REPLACE_SUBJECT = "orders.replace"
CONTROL_SUBJECT = "orders.control"
ORDERS_SUBJECTS = (SUBMIT_SUBJECT, CANCEL_SUBJECT, REPLACE_SUBJECT, CONTROL_SUBJECT)
#: Where the orders flow sends its answer (JetStream drops the message's own reply).
REPLY_TO_HEADER = "T26-Reply-To"
#: The order id (``<account>:<client order id>``) on ``venue.commands.<venue>``.
ORDER_ID_HEADER = "T26-Order-Id"

#: The streams that capture the order path's outputs, by name (ORDERS above is its input).
#: Producers keep publishing with core NATS (one flush per batch); a stream stores any
#: message on a subject it captures and drops a repeated ``Nats-Msg-Id`` within its
#: duplicate window, whoever published it. So a flow that was down reads what its peers
#: published meanwhile, and a replayed epoch's outputs are stored once. No subject may
#: be captured twice (JetStream refuses overlapping streams): ``orders.events.>`` and
#: ``orders.alerts`` do not overlap ORDERS' four subjects, and ``dlq.>``, ``md.ticks.>``
#: belong to the pipeline's DLQ and MD streams (flows/pipeline.py STREAMS).
ORDER_PATH_STREAMS: dict[str, list[str]] = {
    "VENUE": ["venue.commands.>"],
    "EXEC": ["exec.reports.>"],
    "ORDER_EVENTS": ["orders.events.>", "orders.alerts", "risk.decisions.>", "fills.>"],
    "PORTFOLIO": ["positions.>", "pnl.>"],
    "TCA": ["tca.>"],
}
#: The venue's one input: a stream that *sources* ``VENUE`` and ``md.ticks.>`` of ``MD``
#: (no subjects of its own). The server fixes the interleaving of commands and ticks
#: once, as it copies them, so a venue restarted from a snapshot reads them again in the
#: same order and makes the same executions with the same exec ids. Two separate
#: consumers would race: a replay could match a command against other ticks than the
#: first time, and the same exec id would name a different execution (one dropped by
#: the duplicate window, another stored twice). Ticks are copied from the stream's
#: creation on, not MD's history.
VENUE_IN_STREAM = "VENUE_IN"
#: The pipeline streams the order path reads or writes as well.
_PIPELINE_STREAMS = ("MD", "DLQ")
MAX_AGE_ENV = "TRADE2026_STREAM_MAX_AGE_S"
MAX_BYTES_ENV = "TRADE2026_STREAM_MAX_BYTES"
_DEFAULT_MAX_AGE_S = 7 * 86_400.0
_DEFAULT_MAX_BYTES = 0


class StreamLimits(msgspec.Struct, frozen=True):
    """How much each order-path stream keeps (per stream; the oldest messages go first).

    The bound is what a flow may be down for and still catch up: a consumer that was
    away longer than ``max_age_s``, or while more than ``max_bytes`` was published,
    finds the oldest part gone. Seven days cover a weekend's outage. ``max_bytes``
    defaults to 0 (unlimited): nats-server *reserves* a file-backed stream's
    ``max_bytes`` up front against its JetStream store limit (75 % of the free disk by
    default), so the seven order-path streams at 8 GiB each were refused with
    "insufficient storage resources" on a machine with 74 GB free. Set it where the
    store is sized for it (at the soak's 2,000 orders/s ``ORDER_EVENTS`` grows ~2 MB/s).
    Only applied when a stream is created; ``MD`` and ``DLQ`` are the pipeline's and
    keep its settings.
    """

    max_age_s: float = _DEFAULT_MAX_AGE_S
    max_bytes: int = _DEFAULT_MAX_BYTES

    @classmethod
    def from_env(cls) -> StreamLimits:
        """``TRADE2026_STREAM_MAX_AGE_S`` and ``TRADE2026_STREAM_MAX_BYTES`` override."""
        age = os.environ.get(MAX_AGE_ENV)
        size = os.environ.get(MAX_BYTES_ENV)
        try:
            return cls(
                max_age_s=float(age) if age else _DEFAULT_MAX_AGE_S,
                max_bytes=int(size) if size else _DEFAULT_MAX_BYTES,
            )
        except ValueError:
            raise ValueError(
                f"stream limits: {MAX_AGE_ENV}={age!r} / {MAX_BYTES_ENV}={size!r}; "
                "hint: seconds (a number) and bytes (an integer), 0 for unlimited"
            ) from None


_decision = msgspec.json.Decoder(RiskDecision)
_control = msgspec.json.Decoder(ControlCommand)
_encode = msgspec.json.Encoder().encode


class OrderTimeout(TimeoutError):
    """No answer in time. ``request`` is what was sent; resend it unchanged to retry."""

    def __init__(self, message: str, request: Any) -> None:
        super().__init__(message)
        self.request = request


async def ensure_order_streams(js: JetStreamContext) -> js_api.StreamInfo:
    """Create the ``ORDERS`` stream, or bring an existing one back to the contract.

    Idempotent, so every producer (the flow, the gateway, ``trade2026 halt``) can call it
    at start-up: whoever comes first creates it, and an order or a kill switch sent while
    the flow is down is still kept.
    """
    want_subjects = sorted(ORDERS_SUBJECTS)
    try:
        info = await js.stream_info(ORDERS_STREAM)
    except NotFoundError:
        return await js.add_stream(
            name=ORDERS_STREAM,
            subjects=want_subjects,
            no_ack=True,
            storage=js_api.StorageType.FILE,
        )
    cfg = info.config
    if sorted(cfg.subjects or []) == want_subjects and cfg.no_ack:
        return info
    # Storage type cannot change in place; subjects and no_ack can.
    return await js.update_stream(cfg.evolve(subjects=want_subjects, no_ack=True))


async def ensure_order_path_streams(
    js: JetStreamContext, limits: StreamLimits | None = None
) -> None:
    """Create every stream the order path runs on: ORDERS, the capture streams
    (:data:`ORDER_PATH_STREAMS`) and the pipeline's ``MD`` and ``DLQ``.

    Idempotent; every order-path flow calls it at start, so whichever starts first
    creates what the others read, and nothing published before a consumer starts is lost.
    Existing streams are left as they are (limits apply at creation).
    """
    from flows.pipeline import STREAMS, ensure_streams

    lim = limits or StreamLimits.from_env()
    await ensure_order_streams(js)
    wanted = {name: STREAMS[name] for name in _PIPELINE_STREAMS} | ORDER_PATH_STREAMS
    try:
        # MD and DLQ exactly as the market-data flows make them (whoever comes first).
        await ensure_streams(js, {name: STREAMS[name] for name in _PIPELINE_STREAMS})
        await ensure_streams(
            js, ORDER_PATH_STREAMS, max_age_s=lim.max_age_s, max_bytes=lim.max_bytes
        )
        await _ensure_venue_in(js, lim)
    except BadRequestError as exc:
        raise RuntimeError(
            f"order path streams: {exc}; hint: a stream not made by trade2026 captures one of "
            f"{sorted(s for subs in wanted.values() for s in subs)}; JetStream refuses "
            "overlapping subjects, so remove or narrow it"
        ) from exc


async def _ensure_venue_in(js: JetStreamContext, lim: StreamLimits) -> None:

    try:
        await js.stream_info(VENUE_IN_STREAM)
        return
    except NotFoundError:
        pass
    md_last = int((await js.stream_info("MD")).state.last_seq)
    try:
        await _add_venue_in(js, lim, md_last)
    except BadRequestError as exc:
        # Made by another flow starting at the same time (its start sequence differs).
        try:
            await js.stream_info(VENUE_IN_STREAM)
        except NotFoundError:
            raise exc from None


async def _add_venue_in(js: JetStreamContext, lim: StreamLimits, md_last: int) -> None:
    from flows.pipeline import DUPLICATE_WINDOW

    await js.add_stream(
        js_api.StreamConfig(
            name=VENUE_IN_STREAM,
            sources=[
                js_api.StreamSource(name="VENUE"),
                js_api.StreamSource(
                    name="MD", filter_subject="md.ticks.>", opt_start_seq=md_last + 1
                ),
            ],
            storage=js_api.StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW.total_seconds(),
            max_age=lim.max_age_s or None,
            max_bytes=lim.max_bytes or None,
            discard=js_api.DiscardPolicy.OLD,
        )
    )


def ensure_order_path(config: NatsConfig, limits: StreamLimits | None = None) -> None:
    """:func:`ensure_order_path_streams` from synchronous code (a flow being built)."""
    from trade2026.natsloop import NatsLoop
    from trade2026.natsloop import connect as nats_connect

    async def go() -> None:
        nc = await nats_connect(config, step="order path: ensure streams")
        try:
            await ensure_order_path_streams(nc.jetstream(), limits)
        finally:
            await nc.close()

    loop = NatsLoop.acquire()
    try:
        loop.run(go(), timeout_s=config.connect_timeout_s + 10.0)
    finally:
        NatsLoop.release(loop)


class _IdleClock:
    """When any partition of a group last took a message (monotonic; scheduling only)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.last = time.monotonic()

    def idle(self) -> bool:
        return self.timeout_s is not None and time.monotonic() - self.last >= self.timeout_s


class _GroupPartition(StatefulSourcePartition[Message, Any]):
    def __init__(self, inner: StatefulSourcePartition[Message, Any], clock: _IdleClock) -> None:
        self._inner = inner
        self._clock = clock

    def next_batch(self) -> list[Message]:
        batch = list(self._inner.next_batch())
        if batch:
            self._clock.last = time.monotonic()
        elif self._clock.idle():
            raise StopIteration
        return batch

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _GroupSource(FixedPartitionedSource[Message, Any]):
    """One source of a :class:`SourceGroup`: its partitions end with the group's."""

    def __init__(self, inner: Any, clock: _IdleClock) -> None:
        self.inner = inner
        self.stream: str = getattr(inner, "stream", "core")
        self._clock = clock

    @property
    def stats(self) -> Any:
        return self.inner.stats

    def list_parts(self) -> list[str]:
        return list(self.inner.list_parts())

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> StatefulSourcePartition[Message, Any]:
        self._clock.last = time.monotonic()  # the quiet spell starts with the flow
        return _GroupPartition(self.inner.build_part(step_id, for_part, resume_state), self._clock)


class SourceGroup:
    """The JetStream inputs of one flow, which go idle together.

    ``idle_timeout_s`` (tests, batch runs) ends every partition once *none* of them has
    taken a message for that long. A per-partition timeout would end a sparse input
    (commands, fills, reports) during a quiet spell while the ticks go on, and what it
    missed would wait for the next run. Build each ``JetStreamSource`` without its own
    idle timeout. ``stats`` has one entry per subscribed partition
    (``<stream>/<partition>``), for whoever waits until the flow listens.
    """

    def __init__(
        self,
        *sources: Any,
        idle_timeout_s: float | None = None,
        carries: tuple[str, ...] = (),
    ) -> None:
        clock = _IdleClock(idle_timeout_s)
        self.sources: list[Any] = [_GroupSource(s, clock) for s in sources]
        self._carries = carries

    @property
    def stats(self) -> dict[str, Any]:
        """One entry per partition once it subscribed; with ``carries`` (one source over a
        stream that aggregates several inputs, like ``VENUE_IN``), one per input it
        carries, so a caller waiting for "commands and ticks" sees both."""
        parts = {f"{s.stream}/{k}": v for s in self.sources for k, v in dict(s.stats).items()}
        if not self._carries:
            return parts
        return {f"{k}/{c}": v for k, v in parts.items() for c in self._carries}


def content_msg_id(subject: str, data: bytes) -> str:
    """A ``Nats-Msg-Id`` from subject and bytes, for an output without a domain id
    (alerts, tick-derived dead letters): a replay repeats it byte for byte, so the id."""
    h = hashlib.blake2b(subject.encode(), digest_size=16)
    h.update(b"\0")
    h.update(data)
    return "h:" + h.hexdigest()


def dead_letter_out(
    stage: str, dlq_subject: str, data: bytes, reason: str, msg: Message | None = None
) -> Outgoing:
    """A dead letter with its ``Nats-Msg-Id``: ``dl:<stage>:<input subject>:<stream
    seq>:<reason>`` when the refused input has a stream sequence, else its content.

    Named by the input, not by its own bytes, because a dead letter's ``ts_recv`` is the
    wall clock when the input carried no ``T26-Recv-Ns`` header, so a replayed dead
    letter can differ in that field.
    """
    if msg is not None and msg.seq:
        msg_id = f"dl:{stage}:{msg.subject}:{msg.seq}:{reason}"
    else:
        msg_id = content_msg_id(dlq_subject, data)
    return Outgoing(dlq_subject, data, {MSG_ID_HEADER: msg_id})


class OrderClient:
    """Submit, cancel, replace and halt over NATS; each call waits for the flow's answer.

    Use as ``async with OrderClient(config) as client: await client.submit(order)``, or
    pass an already connected ``nc`` (it is then not closed by :meth:`close`).
    ``clock`` stamps ``ts_submit``/``ts_event`` when the caller left them 0: risk takes
    "now" from the command itself, so an unstamped order would break rate windows and
    staleness checks.
    """

    def __init__(
        self,
        config: NatsConfig | None = None,
        *,
        nc: Client | None = None,
        timeout_s: float = 2.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if config is None and nc is None:
            config = NatsConfig.from_env()
        self.config = config
        self.timeout_s = timeout_s
        self._clock = clock
        self._nc = nc
        self._own_nc = nc is None
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._sub: Any = None
        self._seq = 0

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> OrderClient:
        if self._nc is None:
            from trade2026.natsloop import connect

            assert self.config is not None
            self._nc = await connect(self.config, step="order client")
        if self._sub is None:
            self._prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_reply)
            await self._nc.flush()
        return self

    async def close(self) -> None:
        for fut in self._waiting.values():
            fut.cancel()
        self._waiting.clear()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):  # closing anyway
                await sub.unsubscribe()
        if self._own_nc and self._nc is not None:
            nc, self._nc = self._nc, None
            await nc.close()

    async def __aenter__(self) -> OrderClient:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def nc(self) -> Client:
        if self._nc is None or self._sub is None:
            raise RuntimeError(
                "order client: not connected; hint: use `async with OrderClient(...)` "
                "or await client.connect() first"
            )
        return self._nc

    # ------------------------------------------------------------------ requests
    async def _on_reply(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject, None)
        if fut is not None and not fut.done():
            fut.set_result(msg.data)

    async def request(
        self, subject: str, payload: bytes, timeout_s: float | None = None, request: Any = None
    ) -> bytes:
        """Publish with ``T26-Reply-To`` and wait for the raw answer."""
        nc = self.nc
        self._seq += 1
        inbox = f"{self._prefix}.{self._seq}"
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[inbox] = fut
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            await nc.publish(subject, payload, reply=inbox, headers={REPLY_TO_HEADER: inbox})
            return await asyncio.wait_for(fut, wait)
        except TimeoutError:
            raise OrderTimeout(
                f"order client: no answer on {subject} within {wait}s; hint: is `trade2026 run "
                "orders` running? The request is kept in the ORDERS stream: resend the same "
                "request (exc.request) to get its decision without a double submit",
                request,
            ) from None
        finally:
            self._waiting.pop(inbox, None)

    async def submit(self, order: SubmitOrder, timeout_s: float | None = None) -> RiskDecision:
        if order.ts_submit == 0:
            order = msgspec.structs.replace(order, ts_submit=self._clock())
        data = await self.request(SUBMIT_SUBJECT, _encode(order), timeout_s, order)
        return _decision.decode(data)

    async def cancel(self, cmd: CancelOrder, timeout_s: float | None = None) -> RiskDecision:
        if cmd.ts_submit == 0:
            cmd = msgspec.structs.replace(cmd, ts_submit=self._clock())
        data = await self.request(CANCEL_SUBJECT, _encode(cmd), timeout_s, cmd)
        return _decision.decode(data)

    async def replace(self, cmd: ReplaceOrder, timeout_s: float | None = None) -> RiskDecision:
        if cmd.ts_submit == 0:
            cmd = msgspec.structs.replace(cmd, ts_submit=self._clock())
        data = await self.request(REPLACE_SUBJECT, _encode(cmd), timeout_s, cmd)
        return _decision.decode(data)

    async def control(self, cmd: ControlCommand, timeout_s: float | None = None) -> ControlCommand:
        """Send a kill-switch command; the answer is the command as the flow applied it."""
        if cmd.ts_event == 0:
            cmd = msgspec.structs.replace(cmd, ts_event=self._clock())
        data = await self.request(CONTROL_SUBJECT, _encode(cmd), timeout_s, cmd)
        return _control.decode(data)

    async def halt(
        self,
        account_id: str | None = None,
        reason: str = "",
        issued_by: str = "",
        timeout_s: float | None = None,
    ) -> ControlCommand:
        """Halt one account, or everything when ``account_id`` is None."""
        return await self.control(
            _control_cmd(ControlAction.HALT, account_id, reason, issued_by), timeout_s
        )

    async def resume(
        self,
        account_id: str | None = None,
        reason: str = "",
        issued_by: str = "",
        timeout_s: float | None = None,
    ) -> ControlCommand:
        """Lift a halt; a global resume does not lift an account halt (and vice versa)."""
        return await self.control(
            _control_cmd(ControlAction.RESUME, account_id, reason, issued_by), timeout_s
        )


def _control_cmd(
    action: ControlAction, account_id: str | None, reason: str, issued_by: str
) -> ControlCommand:
    return ControlCommand(
        action=action,
        scope=ControlScope.GLOBAL if account_id is None else ControlScope.ACCOUNT,
        account_id=account_id,
        reason=reason,
        issued_by=issued_by,
    )
