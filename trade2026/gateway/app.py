"""The HTTP order gateway: an ASGI app that turns HTTP calls into order-path NATS requests.

Why Starlette and not FastAPI routes with pydantic models: the body must be read
*exactly* (``0.1`` is ``Decimal("0.1")``, never ``0.1000000000000000055``), and pydantic
parses JSON numbers as floats before any validator runs. So the app reads the raw body
(size-capped before parsing) and decodes it with msgspec into the Structs of
:mod:`trade2026.gateway.models`; the OpenAPI document is generated from those same
Structs with ``msgspec.json.schema_components``, so the spec cannot drift from the parser.
Starlette is what FastAPI routes on anyway, minus the pydantic layer we would bypass.

NATS side (docs/order-path-subjects.md): a submit or cancel goes through
:class:`trade2026.orderclient.OrderClient` (``orders.submit`` / ``orders.cancel`` with the
reply inbox in header ``T26-Reply-To``, since the ORDERS stream drops reply subjects),
and the gateway waits for the ``RiskDecision``. ``GET /orders/{id}`` and
``GET /positions`` answer from small in-memory views fed by ``orders.events.>`` and
``positions.>`` (see docs/gateway.md for why).

Status codes: 201 accepted, 202 cancel accepted, 422 denied by risk (the body is the
``RiskDecision`` with its reason code), 400 malformed, 401/403 auth, 404 unknown order,
413 body too large, 503 NATS down or no orders flow listening, 504 no decision in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from schemas.canonical import OrderEvent, Position
from schemas.instruments import InstrumentRegistry, load_instruments
from schemas.orders import CancelOrder, RiskDecision, SubmitOrder
from trade2026.gateway.models import (
    ANONYMOUS,
    CancelRequest,
    ErrorBody,
    GatewayConfig,
    Health,
    OrderRequest,
    OrderState,
    Principal,
    RequestRejected,
    build_cancel,
    build_submit,
    check_ident,
    resolve_account,
)
from trade2026.natsconf import NatsConfig

__all__ = [
    "NatsOrderBackend",
    "OrderBackend",
    "OrderView",
    "PositionView",
    "create_app",
    "openapi_spec",
]

log = logging.getLogger(__name__)

_ENC = msgspec.json.Encoder()
_EVENT = msgspec.json.Decoder(OrderEvent)
_POSITION = msgspec.json.Decoder(Position)
_ORDER_REQ = msgspec.json.Decoder(OrderRequest)
_CANCEL_REQ = msgspec.json.Decoder(CancelRequest)


class BackendUnavailable(Exception):
    """NATS is down, or nothing listens on the order subjects (answered as 503)."""


class OrderBackend(Protocol):
    """What the routes need from the order path; the NATS one below, or a test double."""

    @property
    def connected(self) -> bool: ...

    async def submit(self, order: SubmitOrder, timeout_s: float) -> RiskDecision: ...

    async def cancel(self, cmd: CancelOrder, timeout_s: float) -> RiskDecision: ...


# -- read views ------------------------------------------------------------------------------
class OrderView:
    """Latest state per (account, client order id), bounded, oldest evicted first.

    Fed by every ``OrderEvent`` on ``orders.events.>`` and by the decisions this gateway
    received. An older event (lower ``seq``) never overwrites a newer one, so a
    redelivery or a reordered event cannot move an order backwards.
    """

    def __init__(self, max_orders: int) -> None:
        self._max = max_orders
        self._orders: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._orders)

    def _entry(self, key: tuple[str, str]) -> list[Any]:
        entry = self._orders.get(key)
        if entry is None:
            entry = self._orders[key] = [None, None]  # [OrderEvent, RiskDecision]
            while len(self._orders) > self._max:
                self._orders.popitem(last=False)
        else:
            self._orders.move_to_end(key)
        return entry

    def on_event(self, data: bytes) -> None:
        try:
            ev = _EVENT.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not ours to dead-letter: the orders flow published it
        entry = self._entry((ev.account_id, ev.client_order_id))
        if entry[0] is None or ev.seq >= entry[0].seq:
            entry[0] = ev

    def on_decision(self, decision: RiskDecision) -> None:
        self._entry((decision.account_id, decision.client_order_id))[1] = decision

    def get(self, account: str, client_order_id: str) -> OrderState | None:
        entry = self._orders.get((account, client_order_id))
        if entry is None:
            return None
        ev, decision = entry
        if ev is not None:
            status = str(ev.status)
        elif decision is not None and not decision.approved:
            status = "DENIED"
        else:
            status = "PENDING_NEW"
        return OrderState(account, client_order_id, status, ev, decision)


class PositionView:
    """Latest ``Position`` snapshot per (account, instrument) from ``positions.>``."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], Position] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def on_snapshot(self, data: bytes) -> None:
        try:
            pos = _POSITION.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        key = (pos.account_id, pos.instrument_id)
        prev = self._latest.get(key)
        if prev is None or pos.ts_event >= prev.ts_event:
            self._latest[key] = pos

    def for_accounts(self, accounts: tuple[str, ...] | None) -> list[Position]:
        rows = [p for (acct, _), p in self._latest.items() if accounts is None or acct in accounts]
        return sorted(rows, key=lambda p: (p.account_id, p.instrument_id))


# -- NATS --------------------------------------------------------------------------------------
class NatsOrderBackend:
    """One NATS connection: commands through :class:`~trade2026.orderclient.OrderClient`,
    subscriptions feeding the views.

    Connecting happens in the background and is retried, so the gateway starts (and
    answers ``/health`` with 503) while NATS is down, and recovers when it comes up. On
    connect it makes sure the ``ORDERS`` stream exists (``ensure_order_streams``), so an
    order sent while the orders flow is down is kept and decided later (the caller gets
    504 meanwhile) instead of being lost.
    """

    def __init__(
        self,
        config: NatsConfig,
        *,
        orders: OrderView,
        positions: PositionView,
    ) -> None:
        self._config = config
        self._orders = orders
        self._positions = positions
        self._nc: Any = None
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._client is not None and self._nc.is_connected

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        from trade2026.natsloop import connect
        from trade2026.orderclient import OrderClient, ensure_order_streams

        warned = False
        while not self._closed:
            try:
                nc = await connect(self._config, step="gateway nats connect")
            except ConnectionError as exc:
                if not warned:
                    log.warning("%s (retrying every %.1fs)", exc, self._config.reconnect_wait_s)
                    warned = True
                await asyncio.sleep(max(0.1, self._config.reconnect_wait_s))
                continue
            self._nc = nc
            try:
                await ensure_order_streams(nc.jetstream())
            except Exception as exc:  # no JetStream: still serve, and say why
                log.warning(
                    "gateway: cannot ensure the ORDERS stream (%s: %s); hint: enable "
                    "JetStream (nats-server -js) so orders survive a flow restart",
                    type(exc).__name__,
                    exc,
                )
            await nc.subscribe("orders.events.>", cb=self._on_event)
            await nc.subscribe("positions.>", cb=self._on_position)
            self._client = await OrderClient(nc=nc).connect()
            log.info("gateway: connected to NATS")
            return

    async def _on_event(self, msg: Any) -> None:
        self._orders.on_event(msg.data)

    async def _on_position(self, msg: Any) -> None:
        self._positions.on_snapshot(msg.data)

    def _ready(self, step: str) -> Any:
        if self._client is None or not self._nc.is_connected:
            raise BackendUnavailable(
                f"gateway {step}: not connected to NATS; hint: check NATS_URL and the server"
            )
        return self._client

    async def submit(self, order: SubmitOrder, timeout_s: float) -> RiskDecision:
        decision: RiskDecision = await self._ready("submit").submit(order, timeout_s)
        return decision

    async def cancel(self, cmd: CancelOrder, timeout_s: float) -> RiskDecision:
        decision: RiskDecision = await self._ready("cancel").cancel(cmd, timeout_s)
        return decision

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()


# -- HTTP --------------------------------------------------------------------------------------
def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_ENC.encode(body), status, headers, media_type="application/json")


def _error(exc: RequestRejected) -> Response:
    return _json(exc.status, exc.body)


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(
            413, "BODY_TOO_LARGE", f"gateway: body over {limit} bytes", "orders are small JSON"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(
                413, "BODY_TOO_LARGE", f"gateway: body over {limit} bytes", "orders are small JSON"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, step: str) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestRejected(
            400, "INVALID_REQUEST", f"{step}: {exc}", "see /openapi.json for the body schema"
        ) from None
    except msgspec.DecodeError:
        # msgspec's message may quote the body; never echo it (it could hold a secret).
        raise RequestRejected(
            400, "MALFORMED_JSON", f"{step}: the body is not valid JSON", "send a JSON object"
        ) from None


class _Gateway:
    """The route handlers and what they share; built by :func:`create_app`."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: InstrumentRegistry,
        backend: OrderBackend,
        orders: OrderView,
        positions: PositionView,
        clock: Callable[[], int],
        new_id: Callable[[], str],
    ) -> None:
        self.config = config
        self.registry = registry
        self.backend = backend
        self.orders = orders
        self.positions = positions
        self.clock = clock
        self.new_id = new_id

    def principal(self, request: Request) -> Principal:
        keys = self.config.api_keys
        if keys is None:
            return ANONYMOUS
        found = keys.authenticate(request.headers.get(keys.header))
        if found is None:
            raise RequestRejected(
                401,
                "UNAUTHENTICATED",
                f"gateway: missing or unknown API key in header {keys.header}",
                "ask ops for a key; keys are never echoed or logged",
            )
        return found

    async def _decide(self, call: Any, cmd: SubmitOrder | CancelOrder, ok_status: int) -> Response:
        cid = cmd.client_order_id
        try:
            decision = await call(cmd, self.config.request_timeout_s)
        except BackendUnavailable as exc:
            return _json(503, ErrorBody("NATS_UNAVAILABLE", str(exc), client_order_id=cid))
        except TimeoutError:
            return _json(
                504,
                ErrorBody(
                    "DECISION_TIMEOUT",
                    f"gateway: no risk decision for {cid} within {self.config.request_timeout_s}s",
                    f"the command may still be processed; GET /orders/{cid} later",
                    client_order_id=cid,
                ),
            )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _json(
                502,
                ErrorBody(
                    "BAD_DECISION",
                    f"gateway: the orders flow answered something that is not a RiskDecision "
                    f"({type(exc).__name__})",
                    "check the orders flow's version against the gateway's",
                    client_order_id=cid,
                ),
            )
        raw = _ENC.encode(decision)
        if isinstance(cmd, SubmitOrder):
            self.orders.on_decision(decision)
        status = ok_status if decision.approved else 422
        headers = {"Location": f"/orders/{cid}"} if isinstance(cmd, SubmitOrder) else None
        return Response(raw, status, headers, media_type="application/json")

    async def submit(self, request: Request) -> Response:
        try:
            principal = self.principal(request)
            ctype = request.headers.get("content-type", "application/json")
            if "json" not in ctype.lower():
                raise RequestRejected(
                    415, "UNSUPPORTED_MEDIA_TYPE", "gateway: body must be JSON",
                    "send Content-Type: application/json",
                )  # fmt: skip
            body = await _read_body(request, self.config.max_body_bytes)
            req = _decode(_ORDER_REQ, body, "gateway POST /orders")
            order = build_submit(
                req,
                principal=principal,
                registry=self.registry,
                config=self.config,
                new_id=self.new_id,
                now_ns=self.clock(),
            )
        except RequestRejected as exc:
            return _error(exc)
        return await self._decide(self.backend.submit, order, 201)

    def _account_param(self, request: Request, principal: Principal) -> str:
        raw = request.query_params.get("account")
        requested = check_ident(raw, "account", account=True) if raw is not None else None
        return resolve_account(requested, principal, self.config.default_account)

    async def cancel(self, request: Request) -> Response:
        try:
            principal = self.principal(request)
            cid = check_ident(request.path_params["order_id"], "order id")
            body = await _read_body(request, self.config.max_body_bytes)
            account: str | None = None
            if body.strip():
                account = _decode(_CANCEL_REQ, body, "gateway DELETE /orders").account
            if account is not None:
                account = resolve_account(account, principal, self.config.default_account)
            else:
                account = self._account_param(request, principal)
        except RequestRejected as exc:
            return _error(exc)
        cmd = build_cancel(cid, account, request_id=self.new_id(), now_ns=self.clock())
        return await self._decide(self.backend.cancel, cmd, 202)

    async def get_order(self, request: Request) -> Response:
        try:
            principal = self.principal(request)
            cid = check_ident(request.path_params["order_id"], "order id")
            if request.query_params.get("account") is not None or principal.accounts is None:
                candidates: tuple[str, ...] = (self._account_param(request, principal),)
            else:
                candidates = principal.accounts
        except RequestRejected as exc:
            return _error(exc)
        for account in candidates:
            state = self.orders.get(account, cid)
            if state is not None:
                return _json(200, state)
        return _json(
            404,
            ErrorBody(
                "UNKNOWN_ORDER",
                f"gateway: no order {cid} for account {', '.join(candidates)} seen",
                "the view holds orders seen on orders.events since the gateway started; "
                "pass ?account= for another account",
                client_order_id=cid,
            ),
        )

    async def get_positions(self, request: Request) -> Response:
        try:
            principal = self.principal(request)
            raw = request.query_params.get("account")
            if raw is not None:
                accounts: tuple[str, ...] | None = (
                    resolve_account(check_ident(raw, "account", account=True), principal, ""),
                )
            else:
                accounts = principal.accounts
        except RequestRejected as exc:
            return _error(exc)
        return _json(200, self.positions.for_accounts(accounts))

    async def health(self, request: Request) -> Response:
        up = self.backend.connected
        body = Health(
            status="ok" if up else "degraded",
            nats="connected" if up else "disconnected",
            default_account=self.config.default_account,
            default_venue=self.config.default_venue,
            instruments_version=self.registry.version,
            orders_tracked=len(self.orders),
            positions_tracked=len(self.positions),
            auth=self.config.api_keys is not None,
        )
        return _json(200 if up else 503, body)


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built from the same Structs that parse the requests."""
    from trade2026 import __version__

    (req, cancel, decision, state, position, err, health), components = (
        msgspec.json.schema_components(
            [
                OrderRequest,
                CancelRequest,
                RiskDecision,
                OrderState,
                list[Position],
                ErrorBody,
                Health,
            ],
            ref_template="#/components/schemas/{name}",
        )
    )
    # msgspec 0.23 started passing docstrings through inspect.cleandoc; do it here too so
    # the document is the same whichever msgspec version is installed.
    for schema in components.values():
        if isinstance(schema.get("description"), str):
            schema["description"] = inspect.cleandoc(schema["description"])

    def body(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    def error(description: str) -> dict[str, Any]:
        return body(err, description)

    key_param = {
        "name": "account",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "account; defaults to the gateway's default account or the key's",
    }
    id_param = {"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}
    common = {
        "400": error("malformed request (code in `error`)"),
        "401": error("missing or unknown API key (when keys are configured)"),
        "403": error("the API key may not act for this account"),
    }
    decided = {
        "422": body(decision, "denied by pre-trade risk: `reason` is the code"),
        "502": error("the orders flow answered something unreadable"),
        "503": error("NATS is down or no orders flow is listening"),
        "504": error("no decision in time; the command may still be processed"),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Trade2026 order gateway",
            "version": __version__,
            "description": (
                "HTTP front of the order path (docs/gateway.md). Numbers in bodies are read "
                "exactly as decimals; prices and quantities in answers are decimal strings."
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{}, {"apiKey": []}],
        "paths": {
            "/orders": {
                "post": {
                    "summary": "Submit an order; answers with the risk decision",
                    "operationId": "submitOrder",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": req}},
                    },
                    "responses": {
                        "201": body(decision, "accepted by risk (approved)"),
                        **common,
                        "413": error("body too large"),
                        "415": error("body is not JSON"),
                        **decided,
                    },
                }
            },
            "/orders/{order_id}": {
                "get": {
                    "summary": "Latest known state of an order (by client order id)",
                    "operationId": "getOrder",
                    "parameters": [id_param, key_param],
                    "responses": {
                        "200": body(state, "the order's latest state"),
                        **common,
                        "404": error("no such order seen"),
                    },
                },
                "delete": {
                    "summary": "Cancel an order's open balance",
                    "operationId": "cancelOrder",
                    "parameters": [id_param, key_param],
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": cancel}},
                    },
                    "responses": {
                        "202": body(decision, "cancel approved; the venue confirms via events"),
                        **common,
                        **decided,
                    },
                },
            },
            "/positions": {
                "get": {
                    "summary": "Latest position snapshots",
                    "operationId": "getPositions",
                    "parameters": [key_param],
                    "responses": {
                        "200": body(position, "one row per account and instrument"),
                        **common,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness and NATS connectivity",
                    "operationId": "health",
                    "responses": {
                        "200": body(health, "connected to NATS"),
                        "503": body(health, "NATS is down"),
                    },
                }
            },
        },
    }


def create_app(
    config: GatewayConfig,
    nats: NatsConfig | None = None,
    *,
    backend: OrderBackend | None = None,
    registry: InstrumentRegistry | None = None,
    clock: Callable[[], int] = time.time_ns,
    new_id: Callable[[], str] = lambda: f"gw-{uuid.uuid4().hex}",
) -> Starlette:
    """Build the ASGI app. ``clock`` stamps ``ts_submit`` (the gateway is the edge where an
    order's time starts); ``backend`` replaces the NATS one (it must then feed the views).
    """
    registry = registry or load_instruments(config.instruments_path)
    orders = OrderView(config.max_orders_tracked)
    positions = PositionView()
    nats_backend: NatsOrderBackend | None = None
    if backend is None:
        nats_backend = NatsOrderBackend(
            nats or NatsConfig.from_env(), orders=orders, positions=positions
        )
        backend = nats_backend
    gw = _Gateway(config, registry, backend, orders, positions, clock, new_id)
    spec = _ENC.encode(openapi_spec())

    async def openapi(request: Request) -> Response:
        return Response(spec, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if nats_backend is not None:
            await nats_backend.start()
        try:
            yield
        finally:
            if nats_backend is not None:
                await nats_backend.close()

    app = Starlette(
        routes=[
            Route("/orders", gw.submit, methods=["POST"]),
            Route("/orders/{order_id}", gw.get_order, methods=["GET"]),
            Route("/orders/{order_id}", gw.cancel, methods=["DELETE"]),
            Route("/positions", gw.get_positions, methods=["GET"]),
            Route("/health", gw.health, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.state.orders = orders
    app.state.positions = positions
    return app
