"""The demo's order scenario end to end: normalize, orders, venue and portfolio flows in
threads against a real nats-server, the bundled recordings replayed, orders scripted.

Expectations come from the scenario's own intent (which orders risk must deny) and from
the fills the flows published (positions must equal their signed sum), never from the
code under test.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from decimal import Decimal

import msgspec
import pytest
from bytewax.testing import run_main

from schemas.canonical import Quote
from schemas.common import Side
from sources.recorded import merge_recorded
from trade2026.accounting import Accounting
from trade2026.demo_orders import load_scenario, print_result, run_order_scenario
from trade2026.flowregistry import RunContext, build_normalize
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop
from trade2026.sample import sample_files


def test_scenario_file_is_valid_and_covers_every_path() -> None:
    steps = load_scenario()
    assert {s.action for s in steps} == {"submit", "cancel", "replace"}
    assert {s.expect for s in steps if s.expect} == {"FILLED", "CANCELED", "DENIED"}


def _wait(cond, timeout_s: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(cond())


@pytest.mark.slow
def test_scripted_orders_fill_deny_cancel_and_move_positions(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("flows.orders", reason="the orders flow (issue 3, another engineer)")
    from flows import orders as orders_flow
    from flows import portfolio, venue

    config = NatsConfig(servers=(own_nats_server.url,))
    acct = Accounting()
    ctx = RunContext(nats=config, accounting=acct, idle_timeout_s=4.0)
    norm_flow, norm_src = build_normalize(ctx)
    venue_flow, venue_src = venue.build_production(ctx)
    pf_flow, pf_src = portfolio.build_production(ctx)
    flows = [norm_flow, orders_flow.production_flow(ctx), venue_flow, pf_flow]
    failures: list[BaseException] = []

    def run(flow) -> None:  # type: ignore[no-untyped-def]
        try:
            run_main(flow)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(f,), daemon=True) for f in flows]
    for t in threads:
        t.start()
    assert _wait(lambda: norm_src.stats and len(venue_src.stats) == 2 and len(pf_src.stats) == 2)
    # The orders flow hides its sources: wait until its market-data input took a probe.
    probe = Quote("BNBUSDT.BINANCE", Decimal(1), Decimal(1), Decimal(2), Decimal(1), 0, 1, 1)
    loop = NatsLoop.acquire()
    try:
        nc = loop.connect(config)
        # the probe is lost if it beats the subscription, so send it until it is seen
        deadline = time.monotonic() + 20
        while acct.stage("orders_md").records_in < 1 and time.monotonic() < deadline:
            assert not failures, failures
            loop.run(nc.publish("md.ticks.BNBUSDT.BINANCE", msgspec.json.encode(probe)))
            loop.run(nc.flush())
            time.sleep(0.1)
        assert acct.stage("orders_md").records_in >= 1, "the orders flow never took market data"
        loop.run(nc.close())
    finally:
        NatsLoop.release(loop)

    lines = list(merge_recorded([str(f) for f in sample_files()]))
    result = run_order_scenario(own_nats_server.url, lines)
    for t in threads:
        t.join(timeout=30)
    assert not failures, failures
    print_result(result)

    steps = {s.step.client_order_id: s for s in result.steps if s.step.action == "submit"}
    denied = {cid for cid, s in steps.items() if not s.approved}
    assert denied == {"alice-2", "bob-2", "m-1"}
    status = {o.client_order_id: o.status for o in result.orders}
    assert status["alice-3"] == "CANCELED"
    assert status["alice-1"] == "FILLED" and status["bob-1"] == "FILLED"
    assert status["bob-3"] == "FILLED"  # filled after the replace into the market
    assert status["demo-1"] == "CANCELED"  # IOC remainder

    # positions equal the signed sum of the fills the orders flow published
    signed: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for f in result.fills:
        signed[(f.account_id, f.instrument_id)] += f.quantity if f.side is Side.BUY else -f.quantity
    assert {(p.account_id, p.instrument_id): p.quantity for p in result.positions} == {
        k: v for k, v in signed.items()
    }
    assert {t.account_id for t in result.pnl} == {"alice", "bob", "demo"}
    for stage in ("venue", "portfolio"):
        assert acct.stage(stage).balanced, stage
