"""The demo's order scenario end to end: normalize, orders, venue and portfolio flows in
threads against a real nats-server, the bundled recordings replayed, orders scripted.

Expectations come from the scenario's own intent (which orders risk must deny) and from
the fills the flows published (positions must equal their signed sum), never from the
code under test.
"""

from __future__ import annotations

import time
from collections import defaultdict
from decimal import Decimal

import pytest

from schemas.common import Side
from sources.recorded import merge_recorded
from trade2026.accounting import Accounting
from trade2026.demo_orders import load_scenario, print_result, run_order_scenario
from trade2026.flowregistry import RunContext
from trade2026.localstack import LocalStack
from trade2026.natsconf import NatsConfig
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
    config = NatsConfig(servers=(own_nats_server.url,))
    acct = Accounting()
    stack = LocalStack(RunContext(nats=config, accounting=acct, idle_timeout_s=4.0)).start()

    lines = list(merge_recorded([str(f) for f in sample_files()]))
    # With the flows' accounting, each step waits until the orders flow took the ticks.
    result = run_order_scenario(own_nats_server.url, lines, accounting=acct)
    stack.join(timeout_s=30)
    stack.check()
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
