"""Incremental snapshots restore exactly, and the bounded memories stay bounded."""

from __future__ import annotations

from decimal import Decimal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.orders import BoundedLog, OrderManager
from schemas.canonical import Order
from schemas.common import OrderStatus, OrderType, Side, TimeInForce
from schemas.orders import CancelOrder, ExecType, ExecutionReport, RiskAction, RiskDecision

T0 = 1_767_225_600_000_000_000
CIDS = [f"c{i}" for i in range(6)]


def _order(cid: str, ts: int) -> Order:
    return Order(
        client_order_id=cid,
        account_id="A",
        instrument_id="BTCUSDT.BINANCE",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal(3),
        price=Decimal(100),
        time_in_force=TimeInForce.DAY,
        ts_submit=ts,
    )


def _ok(cid: str, ts: int, approved: bool = True) -> RiskDecision:
    return RiskDecision(
        account_id="A",
        client_order_id=cid,
        action=RiskAction.SUBMIT,
        approved=approved,
        reason="APPROVED" if approved else "TEST",
        detail="",
        limits_version="t",
        instruments_version="t",
        ts_event=ts,
    )


def _apply(mgr: OrderManager, step: tuple[str, int, int], ts: int) -> list[object]:
    kind, i, e = step
    cid = CIDS[i]
    if kind == "submit":
        return list(mgr.on_submit(_order(cid, ts), _ok(cid, ts, approved=e % 4 != 0)))
    if kind == "cancel":
        return list(mgr.on_cancel(CancelOrder(account_id="A", client_order_id=cid, ts_submit=ts)))
    if kind == "time":
        return list(mgr.on_time(ts + e * 20_000_000_000_000))
    exec_type = {
        "new": ExecType.NEW,
        "trade": ExecType.TRADE,
        "canceled": ExecType.CANCELED,
    }[kind]
    rep = ExecutionReport(
        venue="V",
        exec_id=f"x{e}",  # few ids: duplicates are common, as after a redelivery
        exec_type=exec_type,
        ts_event=ts,
        client_order_id=cid,
        venue_order_id=f"v{i}",
        last_qty=Decimal(1) if exec_type is ExecType.TRADE else None,
        last_px=Decimal(100) if exec_type is ExecType.TRADE else None,
    )
    return list(mgr.on_execution_report(rep))


STEP = st.tuples(
    st.sampled_from(["submit", "cancel", "time", "new", "trade", "canceled"]),
    st.integers(0, len(CIDS) - 1),
    st.integers(0, 12),
)


def _state(mgr: OrderManager) -> tuple[object, ...]:
    return (
        {c: msgspec.to_builtins(r) for c, r in mgr.orders.items()},
        dict(mgr._by_venue_id),
        set(mgr._seen_exec),
        # The effective expiry schedule. Heap entries are dropped lazily: an entry whose
        # order closed, or which an earlier order with the same client id left behind, is
        # skipped by on_time (its expiry must equal the order's own), and identical
        # entries expire an order once, so the schedule is a set of the entries that act.
        {
            (at, c)
            for at, c in mgr._expiries
            if c in mgr.orders
            and mgr.orders[c].status not in _TERMINAL
            and mgr.orders[c].expires_at == at
        },
        list(mgr._retire),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(STEP, max_size=60),
    cuts=st.sets(st.integers(0, 60), max_size=6),
    max_terminal=st.integers(1, 4),
)
def test_incremental_snapshots_restore_to_the_same_decisions(
    steps: list[tuple[str, int, int]], cuts: set[int], max_terminal: int
) -> None:
    """A live manager snapshotted at random points, and a copy restored at each point,
    decide every later input identically and hold identical state."""
    live = OrderManager("A", max_terminal=max_terminal)
    twin = OrderManager("A", max_terminal=max_terminal)
    for n, step in enumerate(steps):
        if n in cuts:
            # the live one keeps its caches; the twin starts again from the bytes
            twin = OrderManager.restore(live.snapshot(), max_terminal=max_terminal)
            assert _state(twin) == _state(live)
        ts = T0 + n * 1_000_000
        assert _apply(twin, step, ts) == _apply(live, step, ts)
        assert _state(twin) == _state(live)
        assert sum(r.status in _TERMINAL for r in live.orders.values()) <= max_terminal
    again = OrderManager.restore(live.snapshot(), max_terminal=max_terminal)
    assert _state(again) == _state(live)


_TERMINAL = {
    OrderStatus.FILLED,
    OrderStatus.CANCELED,
    OrderStatus.REJECTED,
    OrderStatus.DENIED,
    OrderStatus.EXPIRED,
}


def test_a_snapshot_is_not_changed_by_later_work() -> None:
    """Bytewax keeps the snapshot object: it must not alias the cached, live state."""
    mgr = OrderManager("A")
    mgr.on_submit(_order("a", T0), _ok("a", T0))
    first = mgr.snapshot()
    kept = bytes(first)
    mgr.on_submit(_order("b", T0), _ok("b", T0))
    mgr.snapshot()
    assert first == kept
    assert set(OrderManager.restore(first).orders) == {"a"}


def test_bounded_log_keeps_the_newest_and_returns_what_it_drops() -> None:
    log: BoundedLog[int] = BoundedLog(10, chunk=4)
    dropped = [d for i in range(25) for d in log.append(i)]
    assert list(log) == list(range(dropped[-1] + 1, 25))
    assert 6 <= len(log) <= 10
    assert dropped == list(range(dropped[-1] + 1))
    chunks = [msgspec.msgpack.decode(raw, type=list[int]) for raw in log.snapshot()]
    again: BoundedLog[int] = BoundedLog(10, chunk=4)
    assert again.extend_restored(chunks) == []
    assert list(again) == list(log)


def test_a_retired_orders_expiry_never_expires_a_new_order_with_its_id() -> None:
    """Expiry entries are dropped lazily; one left behind must not act on a later order."""
    mgr = OrderManager("A", max_terminal=1)

    def gtd(cid: str, ts: int, expire: int) -> Order:
        o = _order(cid, ts)
        return msgspec.structs.replace(o, time_in_force=TimeInForce.GTD, expire_time=expire)

    mgr.on_submit(gtd("c1", T0, T0 + 10), _ok("c1", T0))
    mgr.on_cancel(CancelOrder(account_id="A", client_order_id="c1", ts_submit=T0 + 1))
    canceled = ExecutionReport(
        venue="V", exec_id="x1", exec_type=ExecType.CANCELED, ts_event=T0 + 2, client_order_id="c1"
    )
    mgr.on_execution_report(canceled)
    mgr.on_submit(gtd("c2", T0 + 3, T0 + 1_000), _ok("c2", T0 + 3))
    mgr.on_cancel(CancelOrder(account_id="A", client_order_id="c2", ts_submit=T0 + 4))
    mgr.on_execution_report(msgspec.structs.replace(canceled, exec_id="x2", client_order_id="c2"))
    assert "c1" not in mgr.orders  # retired: only one closed order is kept
    mgr.on_submit(gtd("c1", T0 + 5, T0 + 100), _ok("c1", T0 + 5))  # a new order, same id
    assert mgr.on_time(T0 + 50) == []  # the first c1's entry (T0 + 10) must not expire it
    assert mgr.orders["c1"].status is OrderStatus.PENDING_NEW
    (expired,) = mgr.on_time(T0 + 100)
    assert expired.event == "EXPIRED" and expired.client_order_id == "c1"
