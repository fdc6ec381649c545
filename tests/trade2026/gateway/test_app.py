"""The HTTP order gateway on a real socket (uvicorn) against a real nats-server.

The decisions come from the real pre-trade risk engine (``operators.risk.RiskEngine``
with the bundled limits and instruments) answering on ``orders.submit``/``orders.cancel``
the way the orders flow does: to the subject in header ``T26-Reply-To``. The orders flow
itself (flows/orders.py) had not landed when this was written; when it does, the
``_Tap`` is the one piece to swap for it.

Expected values are written out by hand from the request bodies and the instruments
config (BTCUSDT tick 0.01), never computed with the gateway's own code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from schemas.canonical import OrderEvent, Position
from schemas.common import OrderStatus, OrderType, Side
from schemas.orders import CancelOrder, SubmitOrder
from trade2026.gateway.app import create_app, openapi_spec
from trade2026.gateway.models import ApiKey, ApiKeyConfig, GatewayConfig
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop
from trade2026.natsserver import LocalNatsServer
from trade2026.orderclient import OrderClient, OrderTimeout

SEED_CURL_BODY = (
    '{"symbol":"BTCUSDT","side":"buy","quantity":0.001,"price":45000,"order_type":"LIMIT"}'
)
OPENAPI_DOC = Path(__file__).resolve().parents[3] / "docs" / "gateway-openapi.json"
KEY_ALICE = "alice-key-0123456789"
KEY_BOB = "bob-key-9876543210"


class _OrdersFlow:
    """The real orders flow (flows/orders.py, ``production_flow``) in a child process.

    A child process rather than a thread so the test can end it (its NATS sources never
    finish on their own) and so it runs as ``trade2026 run orders`` does. Risk limits
    and instruments are the bundled ones (risk.toml: default account ``default``,
    accounts ``alice``, ``bob``, ``demo``).
    """

    CODE = (
        "from bytewax.testing import run_main\n"
        "from flows.orders import production_flow\n"
        "from trade2026.flowregistry import RunContext\n"
        "from trade2026.natsconf import NatsConfig\n"
        "run_main(production_flow(RunContext(nats=NatsConfig.from_env())))\n"
    )

    def __init__(self, url: str, log: Path) -> None:
        self.log = log
        env = {**os.environ, "NATS_URL": url}
        env.pop("TRADE2026_RISK", None)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.CODE],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[3],
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class _Tap:
    """A plain NATS client beside the gateway: records what crossed ``orders.*`` (the
    exact bytes the flow received) and publishes the snapshots other flows would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self._loop = NatsLoop().start()
        self._nc: Any = None

    def start(self) -> _Tap:
        async def go() -> None:
            import nats

            self._nc = await nats.connect(self.url)

            async def on_command(msg: Any) -> None:
                self.received.append((msg.subject, msg.data, dict(msg.headers or {})))

            await self._nc.subscribe("orders.submit", cb=on_command)
            await self._nc.subscribe("orders.cancel", cb=on_command)
            await self._nc.flush()

        self._loop.run(go(), timeout_s=10)
        return self

    def publish(self, subject: str, record: Any) -> None:
        async def go() -> None:
            await self._nc.publish(subject, msgspec.json.encode(record))
            await self._nc.flush()

        self._loop.run(go(), timeout_s=5)

    def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        """The tap has its own connection: what the flow already answered may still be
        on its way here."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def submits(self) -> list[tuple[SubmitOrder, bytes, dict[str, str]]]:
        return [
            (msgspec.json.decode(d, type=SubmitOrder), d, h)
            for s, d, h in self.received
            if s == "orders.submit"
        ]

    def stop(self) -> None:
        if self._nc is not None:
            self._loop.run(self._nc.close(), timeout_s=5)
        self._loop.stop()


class _Served:
    """The gateway app under uvicorn on a real, already bound socket in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, wait_connected: bool = True) -> _Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started, "uvicorn did not start"
        if wait_connected:
            while time.monotonic() < deadline:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
                time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def order_nats() -> Iterator[LocalNatsServer]:
    # A private server rather than the session one: the order subjects are fixed names
    # by contract, so another module's orders flow on the shared server could answer ours.
    server = LocalNatsServer().start()
    yield server
    server.stop(kill=True)


@pytest.fixture(scope="module")
def responder(
    order_nats: LocalNatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Tap]:
    """The real orders flow answering, and a tap on what it received."""
    tap = _Tap(order_nats.url).start()
    flow = _OrdersFlow(order_nats.url, tmp_path_factory.mktemp("orders-flow") / "flow.log")
    try:
        asyncio.run(_wait_for_flow(order_nats.url, flow))
    except BaseException:
        flow.stop()
        tap.stop()
        raise
    yield tap
    flow.stop()
    tap.stop()


async def _wait_for_flow(url: str, flow: _OrdersFlow, timeout_s: float = 60.0) -> None:
    """Until the flow answers: a probe with a zero quantity, denied, so nothing rests."""
    probe = SubmitOrder(
        client_order_id="probe-ready", account_id="default", instrument_id="BTCUSDT.BINANCE",
        side=Side.BUY, order_type=OrderType.LIMIT, quantity=Decimal(0), price=Decimal(1),
        ts_submit=1,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    async with OrderClient(_nats(url)) as client:
        while True:
            if flow.proc.poll() is not None:
                pytest.fail(f"orders flow exited: {flow.log.read_text()[-2000:]}")
            try:
                await client.submit(probe, timeout_s=1.0)  # same bytes: a safe retry
                return
            except OrderTimeout:
                if time.monotonic() > deadline:
                    pytest.fail(f"orders flow never answered: {flow.log.read_text()[-2000:]}")


def _nats(url: str) -> NatsConfig:
    return NatsConfig.from_env({"NATS_URL": url}, connect_timeout_s=1.0, reconnect_wait_s=0.2)


@pytest.fixture(scope="module")
def gateway(order_nats: LocalNatsServer, responder: _Tap) -> Iterator[_Served]:
    served = _Served(create_app(GatewayConfig(), _nats(order_nats.url))).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def keyed_gateway(order_nats: LocalNatsServer, responder: _Tap) -> Iterator[_Served]:
    keys = ApiKeyConfig(
        keys=(
            ApiKey("desk-a", hashlib.sha256(KEY_ALICE.encode()).hexdigest(), ("alice",)),
            ApiKey("desk-b", hashlib.sha256(KEY_BOB.encode()).hexdigest(), ("bob",)),
        )
    )
    served = _Served(create_app(GatewayConfig(api_keys=keys), _nats(order_nats.url))).start()
    yield served
    served.stop()


# -- the seed's example ------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed here")
def test_seed_curl_example_works_as_is(gateway: _Served, responder: _Tap) -> None:
    before, before_all = len(responder.submits()), len(responder.received)
    out = subprocess.run(
        [
            "curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", f"{gateway.url}/orders",
            "-H", "Content-Type: application/json", "-d", SEED_CURL_BODY,
        ],
        capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    body, status = out.stdout.decode().rsplit("\n", 1)
    assert status == "201", body
    decision = json.loads(body)
    assert decision["approved"] is True and decision["reason"] == "APPROVED"
    assert decision["account_id"] == "default"
    responder.wait_for(before_all + 1)
    order, raw, headers = responder.submits()[before]
    assert order.account_id == "default"
    assert order.instrument_id == "BTCUSDT.BINANCE"
    assert order.side is Side.BUY
    assert order.quantity == Decimal("0.001") and order.price == Decimal("45000")
    assert order.client_order_id and order.client_order_id == decision["client_order_id"]
    assert order.ts_submit > 0
    assert headers["T26-Reply-To"].startswith("_INBOX.")
    # On the wire the numbers are decimal strings, as the contract says.
    assert b'"quantity":"0.001"' in raw and b'"price":"45000"' in raw


def test_json_numbers_arrive_exact_on_nats(gateway: _Served, responder: _Tap) -> None:
    before, before_all = len(responder.submits()), len(responder.received)
    # 0.30000000000000004 is what 0.1 + 0.2 gives in binary floating point; 0.3 is what a
    # person typed. Both must arrive digit for digit.
    r = httpx.post(
        f"{gateway.url}/orders",
        content=b'{"symbol":"ETHUSDT","side":"SELL","quantity":0.3,"price":3000.07,'
        b'"client_order_id":"exact-1"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 201, r.text
    r = httpx.post(
        f"{gateway.url}/orders",
        content=b'{"symbol":"BTCUSDT","side":"buy","quantity":0.30000000000000004,'
        b'"price":45000.10,"client_order_id":"exact-2"}',
    )
    assert r.status_code == 422  # 17 decimals is off BTCUSDT's 0.00001 lot: risk says so
    assert r.json()["reason"] == "QUANTITY_OFF_LOT"
    responder.wait_for(before_all + 2)
    (o1, raw1, _), (o2, raw2, _) = responder.submits()[before:]
    assert o1.quantity == Decimal("0.3") and o1.price == Decimal("3000.07")
    assert o1.order_type == "LIMIT"  # a price and no order_type means LIMIT
    assert b'"quantity":"0.3"' in raw1
    assert o2.quantity == Decimal("0.30000000000000004")
    assert o2.price == Decimal("45000.10")
    assert b'"quantity":"0.30000000000000004"' in raw2 and b'"price":"45000.10"' in raw2


def test_risk_denial_is_422_with_reason_code(gateway: _Served) -> None:
    r = httpx.post(
        f"{gateway.url}/orders",
        json={"symbol": "BTCUSDT", "side": "buy", "quantity": "0.001", "price": "45000.001"},
    )
    assert r.status_code == 422
    body = r.json()
    assert body["approved"] is False and body["reason"] == "PRICE_OFF_TICK"
    assert body["detail"]
    state = httpx.get(f"{gateway.url}/orders/{body['client_order_id']}").json()
    assert state["status"] == "DENIED" and state["decision"]["reason"] == "PRICE_OFF_TICK"


def test_nan_quantity_is_denied_by_risk_not_a_crash(gateway: _Served) -> None:
    r = httpx.post(
        f"{gateway.url}/orders", json={"symbol": "BTCUSDT", "side": "buy", "quantity": "NaN"}
    )
    assert r.status_code == 422 and r.json()["reason"] == "INVALID_QUANTITY"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "MALFORMED_JSON"),
        (b'{"symbol":"BTCUSDT","side":"buy"}', 400, "INVALID_REQUEST"),  # no quantity
        (b'{"symbol":"BTCUSDT","side":"hold","quantity":1}', 400, "INVALID_FIELD"),
        (b'{"symbol":"NOPEUSDT","side":"buy","quantity":1}', 400, "UNKNOWN_SYMBOL"),
        (b'{"symbol":"BTCUSDT","side":"buy","quantity":1,"qty":2}', 400, "INVALID_REQUEST"),
        (b'{"symbol":"BTCUSDT","side":"buy","quantity":1,"account":"a.>"}', 400, "INVALID_REQUEST"),
        (b'{"symbol":"BTCUSDT","side":"buy","quantity":true}', 400, "INVALID_REQUEST"),
        (b"[]", 400, "INVALID_REQUEST"),
    ],
)
def test_malformed_requests_are_refused_with_a_code(
    gateway: _Served, body: bytes, status: int, code: str
) -> None:
    r = httpx.post(f"{gateway.url}/orders", content=body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and "hint" in r.json()


def test_oversized_body_is_413(gateway: _Served) -> None:
    pad = "x" * (65 * 1024)
    r = httpx.post(
        f"{gateway.url}/orders",
        content=f'{{"symbol":"BTCUSDT","side":"buy","quantity":1,"client_order_id":"{pad}"}}',
    )
    assert r.status_code == 413 and r.json()["error"] == "BODY_TOO_LARGE"
    assert pad not in r.text


def test_malformed_json_error_does_not_echo_the_body(gateway: _Served) -> None:
    secret = "sk_live_do_not_echo_me"
    r = httpx.post(f"{gateway.url}/orders", content=f'{{"password": "{secret}" oops'.encode())
    assert r.status_code == 400 and secret not in r.text


# -- order state, cancel, positions ----------------------------------------------------------
def _poll(url: str, until: Any, timeout_s: float = 5.0, **kw: Any) -> Any:
    deadline = time.monotonic() + timeout_s
    body = httpx.get(url, **kw).json()
    while not until(body) and time.monotonic() < deadline:
        time.sleep(0.02)
        body = httpx.get(url, **kw).json()
    return body


def test_order_state_comes_from_the_flows_events(gateway: _Served) -> None:
    r = httpx.post(
        f"{gateway.url}/orders",
        json={"symbol": "BTCUSDT", "side": "buy", "quantity": "0.002", "price": "45000",
              "client_order_id": "state-1"},
    )  # fmt: skip
    assert r.status_code == 201 and r.headers["location"] == "/orders/state-1"
    state = _poll(f"{gateway.url}/orders/state-1", lambda b: b.get("event") is not None)
    assert state["event"]["client_order_id"] == "state-1"
    assert state["event"]["quantity"] == "0.002" and state["event"]["cum_qty"] == "0"
    assert state["status"] in ("PENDING_NEW", "ACCEPTED")
    assert state["decision"]["approved"] is True


def test_order_view_never_moves_an_order_backwards(gateway: _Served, responder: _Tap) -> None:
    def event(seq: int, status: OrderStatus, cum: str, leaves: str) -> OrderEvent:
        return OrderEvent(
            event=status.value, status=status, order_id="default:view-1",
            client_order_id="view-1", account_id="default", instrument_id="BTCUSDT.BINANCE",
            side=Side.BUY, quantity=Decimal("0.002"), cum_qty=Decimal(cum),
            leaves_qty=Decimal(leaves), avg_px=Decimal("45000.00") if cum != "0" else None,
            ts_event=1_767_225_600_000_000_000 + seq, seq=seq,
        )  # fmt: skip

    responder.publish("orders.events.default", event(1, OrderStatus.ACCEPTED, "0", "0.002"))
    responder.publish(
        "orders.events.default", event(3, OrderStatus.PARTIALLY_FILLED, "0.001", "0.001")
    )
    # A late, older event (a redelivery, say) must not move the order backwards.
    responder.publish("orders.events.default", event(2, OrderStatus.ACCEPTED, "0", "0.002"))
    responder.publish("orders.events.default", event(4, OrderStatus.PARTIALLY_FILLED, "0.0015",
                                                     "0.0005"))  # fmt: skip
    # Events on one subject arrive in order, so once seq 4 is seen, seq 2 was handled.
    state = _poll(
        f"{gateway.url}/orders/view-1",
        lambda b: (b.get("event") or {}).get("seq") == 4,
    )
    assert state["status"] == "PARTIALLY_FILLED"
    assert state["event"]["cum_qty"] == "0.0015" and state["event"]["leaves_qty"] == "0.0005"
    assert state["decision"] is None  # not submitted through this gateway


def test_unknown_order_is_404(gateway: _Served) -> None:
    r = httpx.get(f"{gateway.url}/orders/never-seen")
    assert r.status_code == 404 and r.json()["error"] == "UNKNOWN_ORDER"


def test_cancel_goes_to_risk_and_answers_202(gateway: _Served, responder: _Tap) -> None:
    before_all = len(responder.received)
    r = httpx.delete(f"{gateway.url}/orders/state-1")
    assert r.status_code == 202, r.text
    assert r.json()["action"] == "CANCEL" and r.json()["approved"] is True
    responder.wait_for(before_all + 1)
    subject, raw, headers = responder.received[-1]
    assert subject == "orders.cancel" and "T26-Reply-To" in headers
    cmd = msgspec.json.decode(raw, type=CancelOrder)
    assert cmd.account_id == "default" and cmd.client_order_id == "state-1"


def test_positions_are_the_latest_snapshots(gateway: _Served, responder: _Tap) -> None:
    def pos(instrument: str, ts: int, qty: str) -> Position:
        return Position(
            account_id="carol", instrument_id=instrument, quantity=Decimal(qty),
            avg_open_price=Decimal("45000.10"), realized_pnl=Decimal("0.30000000000000004"),
            unrealized_pnl=Decimal("-1.5"), mark_price=Decimal("44999.35"),
            fees=Decimal("0.0045"), ts_event=ts,
        )  # fmt: skip

    responder.publish("positions.carol", pos("BTCUSDT.BINANCE", 2, "0.002"))
    responder.publish("positions.carol", pos("BTCUSDT.BINANCE", 1, "0.001"))  # older: ignored
    responder.publish("positions.carol", pos("ETHUSDT.BINANCE", 1, "-3"))  # marks the end
    rows = _poll(f"{gateway.url}/positions", lambda b: len(b) == 2, params={"account": "carol"})
    assert [(r["instrument_id"], r["quantity"]) for r in rows] == [
        ("BTCUSDT.BINANCE", "0.002"),
        ("ETHUSDT.BINANCE", "-3"),
    ]
    assert rows[0]["realized_pnl"] == "0.30000000000000004"


def test_health_and_openapi(gateway: _Served) -> None:
    h = httpx.get(f"{gateway.url}/health")
    assert h.status_code == 200 and h.json()["nats"] == "connected"
    spec = httpx.get(f"{gateway.url}/openapi.json").json()
    assert {"/orders", "/orders/{order_id}", "/positions", "/health"} <= set(spec["paths"])
    assert "OrderRequest" in spec["components"]["schemas"]


def test_committed_openapi_doc_matches_the_code() -> None:
    committed = json.loads(OPENAPI_DOC.read_text())
    assert committed == json.loads(json.dumps(openapi_spec())), (
        "docs/gateway-openapi.json is stale; regenerate it with "
        "`python -c 'import json; from trade2026.gateway.app import openapi_spec; "
        "print(json.dumps(openapi_spec(), indent=2))' > docs/gateway-openapi.json`"
    )


# -- API keys ------------------------------------------------------------------------------------
def test_api_key_is_required_and_never_echoed(keyed_gateway: _Served) -> None:
    r = httpx.post(f"{keyed_gateway.url}/orders", content=SEED_CURL_BODY)
    assert r.status_code == 401 and r.json()["error"] == "UNAUTHENTICATED"
    r = httpx.post(
        f"{keyed_gateway.url}/orders", content=SEED_CURL_BODY, headers={"X-API-Key": "wrong-key"}
    )
    assert r.status_code == 401 and "wrong-key" not in r.text


def test_a_key_acts_only_for_its_own_accounts(keyed_gateway: _Served, responder: _Tap) -> None:
    a = {"X-API-Key": KEY_ALICE}
    b = {"X-API-Key": KEY_BOB}
    before_all = len(responder.received)
    # No account in the body: the key's own account, not the gateway's default.
    r = httpx.post(
        f"{keyed_gateway.url}/orders",
        content=SEED_CURL_BODY[:-1] + ',"client_order_id":"keyed-1"}',
        headers=b,
    )
    assert r.status_code == 201, r.text
    assert r.json()["account_id"] == "bob"
    responder.wait_for(before_all + 1)
    assert responder.submits()[-1][0].account_id == "bob"
    # Alice's key cannot submit for bob, cancel bob's order, read it or bob's positions.
    r = httpx.post(
        f"{keyed_gateway.url}/orders",
        content=SEED_CURL_BODY[:-1] + ',"account":"bob"}',
        headers=a,
    )
    assert r.status_code == 403 and r.json()["error"] == "ACCOUNT_NOT_ALLOWED"
    assert KEY_ALICE not in r.text
    n = len(responder.received)
    r = httpx.delete(f"{keyed_gateway.url}/orders/keyed-1", params={"account": "bob"}, headers=a)
    assert r.status_code == 403
    assert len(responder.received) == n  # nothing reached NATS
    assert (
        httpx.get(
            f"{keyed_gateway.url}/orders/keyed-1", params={"account": "bob"}, headers=a
        ).status_code
        == 403
    )
    assert httpx.get(f"{keyed_gateway.url}/orders/keyed-1", headers=a).status_code == 404
    assert httpx.get(f"{keyed_gateway.url}/orders/keyed-1", headers=b).json()["status"] in (
        "PENDING_NEW",
        "ACCEPTED",
    )
    r = httpx.get(f"{keyed_gateway.url}/positions", params={"account": "bob"}, headers=a)
    assert r.status_code == 403
    responder.publish(
        "positions.bob",
        Position("bob", "BTCUSDT.BINANCE", Decimal("1"), None, Decimal(0), Decimal(0), None,
                 Decimal(0), 5),
    )  # fmt: skip
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if httpx.get(f"{keyed_gateway.url}/positions", headers=b).json():
            break
        time.sleep(0.02)
    assert [p["account_id"] for p in httpx.get(f"{keyed_gateway.url}/positions", headers=b).json()]
    assert all(
        p["account_id"] == "alice"
        for p in httpx.get(f"{keyed_gateway.url}/positions", headers=a).json()
    )


# -- NATS down, flow down ------------------------------------------------------------------------
def test_nats_down_is_503_and_recovers(nats_server_factory: Any) -> None:
    server = LocalNatsServer()  # not started: nothing listens on its port yet
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    served = _Served(
        create_app(GatewayConfig(request_timeout_s=0.3), _nats(f"nats://127.0.0.1:{port}"))
    ).start(wait_connected=False)
    try:
        h = httpx.get(f"{served.url}/health")
        assert h.status_code == 503 and h.json()["nats"] == "disconnected"
        r = httpx.post(f"{served.url}/orders", content=SEED_CURL_BODY)
        assert r.status_code == 503 and r.json()["error"] == "NATS_UNAVAILABLE"
        assert r.json()["client_order_id"]
        # NATS comes up with no orders flow: the gateway connects, creates the ORDERS
        # stream, and an order waits there: 504, and it is kept for the flow.
        server = nats_server_factory(port=port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if httpx.get(f"{served.url}/health").status_code == 200:
                break
            time.sleep(0.05)
        assert httpx.get(f"{served.url}/health").status_code == 200
        r = httpx.post(f"{served.url}/orders", content=SEED_CURL_BODY)
        assert r.status_code == 504 and r.json()["error"] == "DECISION_TIMEOUT"

        async def stored() -> int:
            import nats

            nc = await nats.connect(server.url)
            info = await nc.jetstream().stream_info("ORDERS")
            await nc.close()
            return int(info.state.messages)

        assert asyncio.run(stored()) == 1
    finally:
        served.stop()
