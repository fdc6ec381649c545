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
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from schemas.orders import (
    CancelOrder,
    ControlAction,
    ControlCommand,
    ControlScope,
    ReplaceOrder,
    RiskDecision,
    SubmitOrder,
)
from trade2026.natsconf import NatsConfig

__all__ = [
    "CONTROL_SUBJECT",
    "ORDERS_STREAM",
    "ORDERS_SUBJECTS",
    "ORDER_ID_HEADER",
    "REPLY_TO_HEADER",
    "OrderClient",
    "OrderTimeout",
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
