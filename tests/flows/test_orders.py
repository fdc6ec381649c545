"""The orders flow end to end through a real nats-server: decisions, events, fills, restarts.

Every expected value is written out by hand from the order, the report and the limits
below (tick 0.01 and min notional 5 for BTCUSDT.BINANCE from the bundled instruments),
never computed by the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from flows.orders import DLQ_SUBJECT, STAGE, build_flow
from operators.quality.tap import QualityConfig
from operators.risk_config import AccountLimits, RiskLimits
from schemas.canonical import Fill, OrderEvent
from schemas.common import OrderType, Side
from schemas.orders import (
    CancelOrder,
    ExecType,
    ExecutionReport,
    ReplaceOrder,
    RiskDecision,
    SubmitOrder,
)
from sinks.nats import NatsSink
from sources.nats import JetStreamSource, NatsSource
from trade2026.accounting import Accounting
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop, connect
from trade2026.orderclient import OrderClient, ensure_order_streams

BTC = "BTCUSDT.BINANCE"
LIMITS = RiskLimits(
    version="test-1",
    default_account="default",
    require_declared_accounts=True,
    defaults=AccountLimits(max_order_qty=Decimal(10), max_open_orders=50),
    accounts={"alice": AccountLimits(), "bob": AccountLimits()},
)
IDLE_S = 1.5
EPOCH_MS = 100


def order(cid: str, account: str = "alice", **kw: Any) -> SubmitOrder:
    fields: dict[str, Any] = {
        "client_order_id": cid,
        "account_id": account,
        "instrument_id": BTC,
        "side": Side.BUY,
        "order_type": OrderType.LIMIT,
        "quantity": Decimal("0.5"),
        "price": Decimal("45000.10"),
        "ts_submit": 1_767_225_600_000_000_000,
    }
    fields.update(kw)
    return SubmitOrder(**fields)


class FlowRun:
    """One orders flow in a thread, over the test's own server; stops when inputs go idle."""

    def __init__(
        self, url: str, recovery_dir: Path | None = None, quality: QualityConfig | None = None
    ) -> None:
        self.config = NatsConfig(servers=(url,))
        self.accounting = Accounting()
        wait = timedelta(microseconds=500)
        self.sources: list[JetStreamSource | NatsSource] = [
            JetStreamSource(
                "ORDERS", "orders.>", self.config, idle_wait=wait, idle_timeout_s=IDLE_S
            ),
            NatsSource("exec.reports.>", self.config, idle_wait=wait, idle_timeout_s=IDLE_S),
            NatsSource("positions.>", self.config, idle_timeout_s=IDLE_S),
            NatsSource("md.ticks.>", self.config, idle_timeout_s=IDLE_S),
        ]
        flow = build_flow(
            self.sources[0],
            NatsSink(self.config),
            reports=self.sources[1],
            positions=self.sources[2],
            market_data=self.sources[3],
            limits=LIMITS,
            accounting=self.accounting,
            quality=quality,
        )
        kwargs: dict[str, Any] = {"epoch_interval": timedelta(milliseconds=EPOCH_MS)}
        if recovery_dir is not None:
            kwargs["recovery_config"] = RecoveryConfig(str(recovery_dir))
        self.error: BaseException | None = None

        def main() -> None:
            try:
                run_main(flow, **kwargs)
            except BaseException as exc:  # surfaced by stop()
                self.error = exc

        self.thread = threading.Thread(target=main, daemon=True)

    def __enter__(self) -> FlowRun:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not all(s.stats for s in self.sources):
            assert time.monotonic() < deadline, f"flow did not subscribe: {self.error!r}"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "flow did not stop after its inputs went idle"
        if self.error is not None:
            raise self.error


class Tap:
    """Everything the flow publishes, by subject, as seen by an independent subscriber."""

    SUBJECTS = (
        "orders.events.>",
        "risk.decisions.>",
        "orders.alerts",
        "venue.commands.>",
        "fills.>",
        "dlq.>",
    )

    def __init__(self) -> None:
        self.msgs: list[tuple[str, bytes, dict[str, str]]] = []

    async def start(self, nc: Any) -> None:
        async def cb(msg: Any) -> None:
            self.msgs.append((msg.subject, msg.data, dict(msg.headers or {})))

        for subject in self.SUBJECTS:
            await nc.subscribe(subject, cb=cb)
        await nc.flush()

    def on(self, subject: str) -> list[bytes]:
        return [d for s, d, _h in self.msgs if s == subject]

    async def wait_for(self, pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            assert time.monotonic() < deadline, f"timed out; seen {[s for s, _, _ in self.msgs]}"
            await asyncio.sleep(0.01)


def events(tap: Tap, account: str) -> list[OrderEvent]:
    return [msgspec.json.decode(d, type=OrderEvent) for d in tap.on(f"orders.events.{account}")]


async def _session(url: str) -> tuple[Any, OrderClient, Tap]:
    nc = await connect(NatsConfig(servers=(url,)))
    await ensure_order_streams(nc.jetstream())
    tap = Tap()
    await tap.start(nc)
    client = await OrderClient(nc=nc, timeout_s=5.0).connect()
    return nc, client, tap


def _ensure_stream(url: str) -> None:
    async def main() -> None:
        nc = await connect(NatsConfig(servers=(url,)))
        await ensure_order_streams(nc.jetstream())
        await nc.close()

    asyncio.run(main())


def test_decisions_events_and_venue_commands(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    _ensure_stream(url)
    with FlowRun(url) as run:

        async def main() -> dict[str, Any]:
            nc, client, tap = await _session(url)
            res: dict[str, Any] = {}
            res["ok"] = await client.submit(order("c1"))
            res["tick"] = await client.submit(order("c2", price=Decimal("45000.105")))
            res["inst"] = await client.submit(order("c3", instrument_id="NOPE.BINANCE"))
            res["acct"] = await client.submit(order("c4", account="mallory"))
            res["nan"] = await client.submit(order("c5", price=Decimal("NaN")))
            res["qty"] = await client.submit(order("c6", quantity=Decimal("0")))
            bad = b'{"client_order_id":"c7","account_id":"alice","side":"BUY"}'
            res["bad"] = msgspec.json.decode(
                await client.request("orders.submit", bad), type=RiskDecision
            )
            res["bad_bytes"] = bad
            await tap.wait_for(lambda: len(tap.on("venue.commands.BINANCE")) >= 1)
            await tap.wait_for(lambda: len(tap.on(DLQ_SUBJECT)) >= 1)
            await tap.wait_for(lambda: len(events(tap, "alice")) >= 5)
            await asyncio.sleep(0.2)  # nothing more may arrive
            res["tap"] = tap
            await client.close()
            await nc.close()
            return res

        res = asyncio.run(main())

    ok: RiskDecision = res["ok"]
    assert ok.approved and ok.reason == "APPROVED" and ok.account_id == "alice"
    assert ok.limits_version == "test-1"
    assert (res["tick"].approved, res["tick"].reason) == (False, "PRICE_OFF_TICK")
    assert res["inst"].reason == "UNKNOWN_INSTRUMENT"
    assert res["acct"].reason == "UNKNOWN_ACCOUNT"
    assert res["nan"].reason == "INVALID_PRICE"
    assert res["qty"].reason == "INVALID_QUANTITY"
    assert (res["bad"].approved, res["bad"].reason) == (False, "INVALID_REQUEST")
    assert res["bad"].client_order_id == "c7"

    tap: Tap = res["tap"]
    # Only the approved order reaches the venue, with its order id in the header.
    venue = [(d, h) for s, d, h in tap.msgs if s == "venue.commands.BINANCE"]
    assert len(venue) == 1
    sent = msgspec.json.decode(venue[0][0], type=SubmitOrder)
    assert sent.client_order_id == "c1" and sent.price == Decimal("45000.10")
    assert venue[0][1]["T26-Order-Id"] == "alice:c1"
    evs = events(tap, "alice")
    assert [(e.client_order_id, e.event) for e in evs] == [
        ("c1", "SUBMITTED"),
        ("c2", "DENIED"),
        ("c3", "DENIED"),
        ("c5", "DENIED"),
        ("c6", "DENIED"),
    ]
    assert evs[0].leaves_qty == Decimal("0.5") and evs[0].cum_qty == 0
    decisions = [msgspec.json.decode(d, type=RiskDecision) for d in tap.on("risk.decisions.alice")]
    assert [d.reason for d in decisions] == [
        "APPROVED",
        "PRICE_OFF_TICK",
        "UNKNOWN_INSTRUMENT",
        "INVALID_PRICE",
        "INVALID_QUANTITY",
    ]
    assert [d.reason for d in map(_dec, tap.on("risk.decisions.mallory"))] == ["UNKNOWN_ACCOUNT"]
    dead = msgspec.json.decode(tap.on(DLQ_SUBJECT)[0])
    assert dead["stage"] == "orders" and dead["reason"] == "INVALID_REQUEST"
    assert base64.b64decode(dead["payload"]) == res["bad_bytes"]
    count = run.accounting.stage(STAGE)
    assert (count.records_in, count.out, count.dead_lettered, count.duplicates) == (7, 6, 1, 0)


def _dec(data: bytes) -> RiskDecision:
    return msgspec.json.decode(data, type=RiskDecision)


def _report(exec_id: str, exec_type: ExecType, **kw: Any) -> bytes:
    rep = ExecutionReport(
        venue="SIM", exec_id=exec_id, exec_type=exec_type, ts_event=1_767_225_600_100_000_000, **kw
    )
    return msgspec.json.encode(rep)


def test_execution_reports_fill_the_order_dedupe_and_dead_letter(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    _ensure_stream(url)
    with FlowRun(url) as run:

        async def main() -> Tap:
            nc, client, tap = await _session(url)
            assert (await client.submit(order("f1", quantity=Decimal("0.75")))).approved
            assert (await client.submit(order("f2"))).approved
            ids = {"venue_order_id": "alice:f1", "client_order_id": "f1", "account_id": "alice"}
            await nc.publish("exec.reports.SIM", _report("e1", ExecType.NEW, **ids))
            trade = _report(
                "e2",
                ExecType.TRADE,
                **ids,
                instrument_id=BTC,
                side=Side.BUY,
                last_qty=Decimal("0.25"),
                last_px=Decimal("45000.00"),
                fee=Decimal("0.011"),
                fee_currency="USDT",
                liquidity="MAKER",
            )
            await nc.publish("exec.reports.SIM", trade)
            await nc.publish("exec.reports.SIM", trade)  # duplicate: ignored
            # The rest fills by venue order id alone, as a real venue may report it.
            await nc.publish(
                "exec.reports.SIM",
                _report(
                    "e3",
                    ExecType.TRADE,
                    venue_order_id="alice:f1",
                    last_qty=Decimal("0.5"),
                    last_px=Decimal("44999.99"),
                ),
            )
            await nc.publish(
                "exec.reports.SIM", _report("e9", ExecType.NEW, client_order_id="ghost")
            )
            await nc.publish("exec.reports.SIM", b"not json")
            await tap.wait_for(lambda: len(tap.on("fills.alice")) >= 2)
            await tap.wait_for(lambda: len(tap.on(DLQ_SUBJECT)) >= 2)
            # Cancel the filled order (refused), cancel the open one (approved), replace
            # the filled one (refused), cancel an unknown id (refused).
            cancel_filled = await client.cancel(
                CancelOrder(account_id="alice", client_order_id="f1", request_id="r1")
            )
            cancel_open = await client.cancel(
                CancelOrder(account_id="alice", client_order_id="f2", request_id="r2")
            )
            replace_filled = await client.replace(
                ReplaceOrder(account_id="alice", client_order_id="f1", quantity=Decimal(2))
            )
            cancel_unknown = await client.cancel(
                CancelOrder(account_id="alice", client_order_id="zzz")
            )
            assert (cancel_filled.approved, cancel_filled.reason) == (False, "ORDER_NOT_OPEN")
            assert cancel_open.approved and cancel_open.request_id == "r2"
            assert not replace_filled.approved
            assert (cancel_unknown.approved, cancel_unknown.reason) == (False, "UNKNOWN_ORDER")
            await tap.wait_for(lambda: len(tap.on("venue.commands.BINANCE")) >= 3)
            await asyncio.sleep(0.2)
            await client.close()
            await nc.close()
            return tap

        tap = asyncio.run(main())

    f1 = [e for e in events(tap, "alice") if e.client_order_id == "f1"]
    assert [(e.event, e.status) for e in f1] == [
        ("SUBMITTED", "PENDING_NEW"),
        ("ACCEPTED", "ACCEPTED"),
        ("PARTIALLY_FILLED", "PARTIALLY_FILLED"),
        ("FILLED", "FILLED"),
        ("CANCEL_REJECTED", "FILLED"),
        ("REPLACE_REJECTED", "FILLED"),
    ]
    done = f1[3]
    assert done.cum_qty == Decimal("0.75") and done.leaves_qty == 0
    # (0.25 * 45000.00 + 0.5 * 44999.99) / 0.75 = 33749.995 / 0.75
    assert done.avg_px == Decimal("44999.993333333333333333")  # 18 places, half-even
    fills = [msgspec.json.decode(d, type=Fill) for d in tap.on("fills.alice")]
    assert [
        (f.exec_id, f.quantity, f.price, f.fee, f.fee_currency, f.liquidity) for f in fills
    ] == [
        ("e2", Decimal("0.25"), Decimal("45000.00"), Decimal("0.011"), "USDT", "MAKER"),
        ("e3", Decimal("0.5"), Decimal("44999.99"), Decimal(0), "USDT", "TAKER"),
    ]
    assert all(f.order_id == "alice:f1" and f.side is Side.BUY for f in fills)
    f2 = [e.event for e in events(tap, "alice") if e.client_order_id == "f2"]
    assert f2 == ["SUBMITTED", "CANCEL_REQUESTED"]
    venue = [(s, h) for s, _d, h in tap.msgs if s.startswith("venue.commands.")]
    assert [h["T26-Order-Id"] for _s, h in venue] == ["alice:f1", "alice:f2", "alice:f2"]
    dead = [msgspec.json.decode(d) for d in tap.on(DLQ_SUBJECT)]
    assert sorted(d["reason"] for d in dead) == [
        "INVALID_EXECUTION_REPORT",
        "UNMATCHED_EXECUTION_REPORT",
    ]
    alerts = [msgspec.json.decode(d)["alert"] for d in tap.on("orders.alerts")]
    assert "UNMATCHED_EXECUTION_REPORT" in alerts
    count = run.accounting.stage(STAGE)
    # in: 2 submits + 6 reports + 4 cancel/replace = 12; one duplicate, two dead letters.
    assert (count.records_in, count.out, count.dead_lettered, count.duplicates) == (12, 9, 2, 1)


def test_quality_gate_dead_letters_a_bad_fill_and_passes_the_rest(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    """A venue report without a fee currency makes a Fill the fills rule refuses: it goes
    to dlq.fills with its original bytes instead of fills.alice. The DENIED event of an
    order for an unknown instrument is refused likewise; everything else passes, including
    the refusal of a cancel that came after the fill."""
    url = own_nats_server.url
    _ensure_stream(url)
    with FlowRun(url, quality=QualityConfig()) as run:

        async def main() -> Tap:
            nc, client, tap = await _session(url)
            denied = await client.submit(order("q0", instrument_id="NOPE.BINANCE"))
            assert (denied.approved, denied.reason) == (False, "UNKNOWN_INSTRUMENT")
            assert (await client.submit(order("q1", quantity=Decimal("0.75")))).approved
            ids = {"venue_order_id": "alice:q1", "client_order_id": "q1", "account_id": "alice"}
            await nc.publish("exec.reports.SIM", _report("e1", ExecType.NEW, **ids))
            for exec_id, qty, currency in (("e2", "0.25", ""), ("e3", "0.5", "USDT")):
                await nc.publish(
                    "exec.reports.SIM",
                    _report(
                        exec_id,
                        ExecType.TRADE,
                        **ids,
                        last_qty=Decimal(qty),
                        last_px=Decimal("45000.00"),
                        fee=Decimal("0.01"),
                        fee_currency=currency,
                    ),
                )
            await tap.wait_for(lambda: len(tap.on("fills.alice")) >= 1)
            await tap.wait_for(lambda: len(tap.on("dlq.fills")) >= 1)
            await tap.wait_for(lambda: len(tap.on("dlq.order_events")) >= 1)
            await tap.wait_for(lambda: len(events(tap, "alice")) >= 4)
            # A cancel racing the fill: refused, and its event must still be published
            # (the rule's "nothing after a terminal state" is not for refusals).
            late = await client.cancel(CancelOrder(account_id="alice", client_order_id="q1"))
            assert (late.approved, late.reason) == (False, "ORDER_NOT_OPEN")
            await tap.wait_for(lambda: len(events(tap, "alice")) >= 5)
            await asyncio.sleep(0.2)
            await client.close()
            await nc.close()
            return tap

        tap = asyncio.run(main())

    assert [e.event for e in events(tap, "alice")] == [
        "SUBMITTED",
        "ACCEPTED",
        "PARTIALLY_FILLED",
        "FILLED",
        "CANCEL_REJECTED",
    ]
    assert tap.on("dlq.orders") == []
    assert len(tap.on("venue.commands.BINANCE")) == 1
    # The denial's own event names an unknown instrument: the order_events rule refuses it.
    (refused,) = [msgspec.json.decode(d) for d in tap.on("dlq.order_events")]
    assert (refused["stage"], refused["reason"]) == ("order_events", "UNKNOWN_INSTRUMENT")
    event = msgspec.json.decode(base64.b64decode(refused["payload"]), type=OrderEvent)
    assert (event.client_order_id, event.event) == ("q0", "DENIED")
    (good,) = [msgspec.json.decode(d, type=Fill) for d in tap.on("fills.alice")]
    assert (good.exec_id, good.quantity, good.fee_currency) == ("e3", Decimal("0.5"), "USDT")
    (dead,) = [msgspec.json.decode(d) for d in tap.on("dlq.fills")]
    assert (dead["stage"], dead["reason"], dead["subject"]) == (
        "fills",
        "MISSING_FIELD",
        "fills.alice",
    )
    bad = msgspec.json.decode(base64.b64decode(dead["payload"]), type=Fill)
    assert (bad.exec_id, bad.quantity, bad.fee_currency) == ("e2", Decimal("0.25"), "")
    judged = {
        stage: run.accounting.stage(f"quality.{stage}")
        for stage in ("orders", "order_events", "fills")
    }
    assert {s: (c.records_in, c.out, c.dead_lettered) for s, c in judged.items()} == {
        "orders": (1, 1, 0),
        "order_events": (6, 5, 1),
        "fills": (2, 1, 1),
    }
    count = run.accounting.stage(STAGE)
    assert (count.records_in, count.out, count.dead_lettered, count.duplicates) == (6, 6, 0, 0)


def test_identical_retry_gets_the_same_answer_and_no_second_venue_command(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    _ensure_stream(url)
    with FlowRun(url) as run:

        async def main() -> tuple[list[RiskDecision], Tap]:
            nc, client, tap = await _session(url)
            data = msgspec.json.encode(order("r1"))
            first = _dec(await client.request("orders.submit", data))
            again = _dec(await client.request("orders.submit", data))
            # Same id, different content: a real duplicate id, denied.
            other = await client.submit(order("r1", quantity=Decimal(1)))
            await tap.wait_for(lambda: len(tap.on("venue.commands.BINANCE")) >= 1)
            await asyncio.sleep(0.3)
            await client.close()
            await nc.close()
            return [first, again, other], tap

        (first, again, other), tap = asyncio.run(main())
    assert first.approved and again == first
    assert (other.approved, other.reason) == (False, "DUPLICATE_CLIENT_ORDER_ID")
    assert len(tap.on("venue.commands.BINANCE")) == 1
    count = run.accounting.stage(STAGE)
    assert (count.records_in, count.out, count.duplicates) == (3, 2, 1)


def test_restart_from_recovery_resumes_without_double_submitting(
    own_nats_server: Any, tmp_path: Path
) -> None:
    url = own_nats_server.url
    _ensure_stream(url)
    init_db_dir(tmp_path, 1)
    seen: list[tuple[str, str]] = []
    # One watcher across both runs, subscribed before either starts.
    loop = NatsLoop().start()
    watcher = loop.connect(NatsConfig(servers=(url,)))

    async def watch() -> None:
        async def cb(msg: Any) -> None:
            seen.append((msg.subject, msg.headers["T26-Order-Id"]))

        await watcher.subscribe("venue.commands.>", cb=cb)
        await watcher.flush()

    loop.run(watch())

    async def first_run() -> list[RiskDecision]:
        nc, client, _tap = await _session(url)
        out = [await client.submit(order(f"d{i}")) for i in range(3)]
        await asyncio.sleep(0.3)
        await client.close()
        await nc.close()
        return out

    with FlowRun(url, recovery_dir=tmp_path):
        decisions = asyncio.run(first_run())
    assert all(d.approved for d in decisions)

    # While the flow is down an order is submitted: it is kept and decided on restart.
    async def while_down() -> None:
        nc = await connect(NatsConfig(servers=(url,)))
        await nc.publish(
            "orders.submit", msgspec.json.encode(order("d3")), headers={"T26-Reply-To": "x.y"}
        )
        await nc.flush()
        await nc.close()

    asyncio.run(while_down())

    async def second_run() -> tuple[RiskDecision, RiskDecision]:
        nc, client, _tap = await _session(url)
        reused = await client.submit(order("d0", quantity=Decimal(1)))
        fresh = await client.submit(order("d4"))
        await asyncio.sleep(0.3)
        await client.close()
        await nc.close()
        return reused, fresh

    with FlowRun(url, recovery_dir=tmp_path) as run2:
        reused, fresh = asyncio.run(second_run())
    # The restored state still knows d0; d0..d2 are not sent again; d3 (stored while the
    # flow was down) and d4 are sent once each.
    loop.run(watcher.drain())
    loop.stop()
    assert (reused.approved, reused.reason) == (False, "DUPLICATE_CLIENT_ORDER_ID")
    assert fresh.approved
    ids = [oid for _s, oid in seen]
    assert sorted(ids) == ["alice:d0", "alice:d1", "alice:d2", "alice:d3", "alice:d4"]
    # The second run took in only what came after the first run's last order.
    assert run2.accounting.stage(STAGE).records_in == 3


@pytest.mark.parametrize("scope", ["account", "global"])
def test_kill_switch_from_the_stream_denies_new_orders(own_nats_server, scope: str) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    _ensure_stream(url)
    with FlowRun(url):

        async def main() -> list[RiskDecision]:
            nc, client, _tap = await _session(url)
            await client.halt("alice" if scope == "account" else None, reason="test")
            alice = await client.submit(order("k1"))
            bob = await client.submit(order("k2", account="bob"))
            await client.resume("alice" if scope == "account" else None, reason="done")
            again = await client.submit(order("k3"))
            await client.close()
            await nc.close()
            return [alice, bob, again]

        alice, bob, again = asyncio.run(main())
    if scope == "account":
        assert (alice.approved, alice.reason) == (False, "ACCOUNT_KILL_SWITCH")
        assert bob.approved
    else:
        assert (alice.approved, alice.reason) == (False, "GLOBAL_KILL_SWITCH")
        assert (bob.approved, bob.reason) == (False, "GLOBAL_KILL_SWITCH")
    assert again.approved
