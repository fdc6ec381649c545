"""Random sequences of commands and venue reports never break the order invariants.

The reports are deliberately hostile: fills bigger than what is left, acks and rejects in
the wrong state, duplicates, cancels crossing fills, time jumping past expiries.
"""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from operators.orders import LATE_FILL_STATES, TERMINAL, OrderManager
from schemas.canonical import OrderEvent
from schemas.common import OrderStatus, OrderType, Side, TimeInForce
from schemas.orders import (
    AlertRaised,
    CancelOrder,
    ExecType,
    ExecutionReport,
    ReplaceOrder,
    RiskAction,
    RiskDecision,
    SubmitOrder,
)

SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC
qtys = st.integers(min_value=1, max_value=40).map(lambda n: D(n) / 4)  # 0.25 .. 10
prices = st.integers(min_value=90, max_value=110).map(D)


class OrderLifecycle(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.mgr = OrderManager("acct")
        self.ts = T0
        self.n_orders = 0
        self.n_exec = 0
        self.sent: list[ExecutionReport] = []
        # model: what the test saw, per order
        self.filled: dict[str, D] = {}
        self.px_seen: dict[str, list[D]] = {}
        self.last_seq: dict[str, int] = {}
        self.terminal: dict[str, tuple[OrderStatus, D, D]] = {}

    # ------------------------------------------------------------------ plumbing
    def _tick(self) -> int:
        self.ts += 1_000
        return self.ts

    def _absorb(self, out: list[OrderEvent | AlertRaised]) -> None:
        for o in out:
            if not isinstance(o, OrderEvent):
                continue
            cid = o.client_order_id
            assert o.seq > self.last_seq.get(cid, 0), "seq must increase per order"
            self.last_seq[cid] = o.seq
            if o.last_qty is not None:
                assert o.last_px is not None
                self.filled[cid] = self.filled.get(cid, D(0)) + o.last_qty
                self.px_seen.setdefault(cid, []).append(o.last_px)
            assert o.cum_qty == self.filled.get(cid, D(0)), "cum is the sum of reported fills"
            assert o.cum_qty <= o.quantity
            if o.status in TERMINAL:
                assert o.leaves_qty == 0
            else:
                assert o.leaves_qty == o.quantity - o.cum_qty
            if o.cum_qty:
                assert o.avg_px is not None
                assert min(self.px_seen[cid]) <= o.avg_px <= max(self.px_seen[cid])

    def _cids(self) -> list[str]:
        return sorted(self.mgr.orders)

    def _report(self, cid: str, exec_type: ExecType, **kw: object) -> None:
        self.n_exec += 1
        rep = ExecutionReport(
            venue="V",
            exec_id=f"x{self.n_exec}",
            exec_type=exec_type,
            ts_event=self._tick(),
            client_order_id=cid,
            **kw,
        )  # type: ignore[arg-type]
        self.sent.append(rep)
        self._absorb(self.mgr.on_execution_report(rep))

    # ------------------------------------------------------------------ commands
    @rule(qty=qtys, tif=st.sampled_from(list(TimeInForce)), approved=st.booleans())
    def submit(self, qty: D, tif: TimeInForce, approved: bool) -> None:
        self.n_orders += 1
        cid = f"c{self.n_orders}"
        ts = self._tick()
        order = SubmitOrder(
            cid,
            "acct",
            "BTC.TEST",
            Side.BUY,
            OrderType.LIMIT,
            qty,
            D(100),
            tif,
            ts + 50_000 if tif is TimeInForce.GTD else None,
            ts,
        )
        dec = RiskDecision(
            "acct",
            cid,
            RiskAction.SUBMIT,
            approved,
            "APPROVED" if approved else "X",
            "",
            "v",
            "i",
            ts,
        )
        self._absorb(self.mgr.on_submit(order, dec))

    @precondition(lambda self: self.n_orders > 0)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self._cids()))
        self._absorb(self.mgr.on_cancel(CancelOrder("acct", cid, ts_submit=self._tick())))

    @precondition(lambda self: self.n_orders > 0)
    @rule(data=st.data(), qty=st.none() | qtys, px=st.none() | prices)
    def replace(self, data: st.DataObject, qty: D | None, px: D | None) -> None:
        cid = data.draw(st.sampled_from(self._cids()))
        cmd = ReplaceOrder("acct", cid, quantity=qty, price=px, ts_submit=self._tick())
        self._absorb(self.mgr.on_replace(cmd))

    @rule(step=st.integers(min_value=0, max_value=100_000))
    def time_passes(self, step: int) -> None:
        self.ts += step
        self._absorb(self.mgr.on_time(self.ts))

    # ------------------------------------------------------------------ venue
    @precondition(lambda self: self.n_orders > 0)
    @rule(data=st.data(), qty=qtys, px=prices)
    def trade(self, data: st.DataObject, qty: D, px: D) -> None:
        cid = data.draw(st.sampled_from(self._cids()))
        rec = self.mgr.orders[cid]
        # mostly fit in what is left, sometimes overfill on purpose
        if data.draw(st.booleans()) and rec.quantity > rec.cum_qty:
            qty = min(qty, rec.quantity - rec.cum_qty)
        self._report(cid, ExecType.TRADE, last_qty=qty, last_px=px)

    @precondition(lambda self: self.n_orders > 0)
    @rule(
        data=st.data(), exec_type=st.sampled_from([e for e in ExecType if e is not ExecType.TRADE])
    )
    def venue_event(self, data: st.DataObject, exec_type: ExecType) -> None:
        cid = data.draw(st.sampled_from(self._cids()))
        self._report(cid, exec_type)

    @precondition(lambda self: bool(self.sent))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        rep = data.draw(st.sampled_from(self.sent))
        assert self.mgr.on_execution_report(rep) == []

    # ------------------------------------------------------------------ invariants
    @invariant()
    def quantities_hold(self) -> None:
        if not hasattr(self, "mgr"):
            return
        for cid, o in self.mgr.orders.items():
            assert 0 <= o.cum_qty <= o.quantity, cid
            if o.status not in TERMINAL:
                assert o.leaves_qty == o.quantity - o.cum_qty
            else:
                assert o.leaves_qty == 0
            assert o.cum_qty == self.filled.get(cid, D(0))

    @invariant()
    def terminal_states_are_final(self) -> None:
        if not hasattr(self, "mgr"):
            return
        for cid, o in self.mgr.orders.items():
            before = self.terminal.get(cid)
            if before is not None:
                status, qty, cum = before
                assert o.status is status, f"{cid} left terminal {status} for {o.status}"
                assert o.quantity == qty
                if status in LATE_FILL_STATES:
                    assert o.cum_qty >= cum  # the documented late fill
                else:
                    assert o.cum_qty == cum
            if o.status in TERMINAL:
                self.terminal[cid] = (o.status, o.quantity, o.cum_qty)

    @invariant()
    def snapshot_round_trips(self) -> None:
        if not hasattr(self, "mgr"):
            return
        again = OrderManager.restore(self.mgr.snapshot())
        assert again.orders == self.mgr.orders


TestOrderLifecycle = OrderLifecycle.TestCase
TestOrderLifecycle.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
