"""Cost of one account's epoch snapshot with N open orders: full re-encode vs incremental.

Bytewax calls ``snapshot()`` on every key awoken in an epoch (verified: keys without
input in an epoch are not snapshotted), i.e. every second for a busy account, on the
worker's thread. Measured here, in process, per N open orders in one account:

* ``full_ms``: the previous design, every order record and risk entry encoded each time
  (reproduced by marking everything changed before the snapshot);
* ``incremental_ms``: the current design after ``changed`` orders were touched (one
  trade report each), the usual epoch;
* ``pickle_ms``: Bytewax pickles the returned ``bytes`` when recovery is on (a copy).

Medians of a few repeats, one run; A and B alternate within the run.
"""

from __future__ import annotations

import pickle
import statistics
import time
from decimal import Decimal

from benchmarks.common import print_table, write_result
from operators.orders import OrderManager
from operators.risk import AccountRisk, MarketView, RiskContext
from operators.risk_config import default_limits
from schemas.canonical import Order
from schemas.common import OrderType, Side, TimeInForce
from schemas.instruments import load_instruments
from schemas.orders import ExecType, ExecutionReport, RiskAction, RiskDecision

SIZES = (5_000, 20_000, 40_000)
CHANGED = 500
REPEATS = 5
T0 = 1_767_225_600_000_000_000
INST = "BTCUSDT.BINANCE"


def _approved(cid: str, ts: int) -> RiskDecision:
    return RiskDecision(
        account_id="bench",
        client_order_id=cid,
        action=RiskAction.SUBMIT,
        approved=True,
        reason="APPROVED",
        detail="",
        limits_version="bench",
        instruments_version="bench",
        ts_event=ts,
    )


def _build(n: int) -> tuple[OrderManager, AccountRisk]:
    from operators.risk import _OpenOrder

    ctx = RiskContext(default_limits(), load_instruments(None), MarketView())
    risk = AccountRisk("bench", ctx)
    mgr = OrderManager("bench")
    for i in range(n):
        cid = f"c{i:08d}"
        order = Order(
            client_order_id=cid,
            account_id="bench",
            instrument_id=INST,
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=Decimal("1.5"),
            price=Decimal("45000.10"),
            time_in_force=TimeInForce.GTC,
            ts_submit=T0 + i,
        )
        mgr.on_submit(order, _approved(cid, T0 + i))
        risk._remember(cid)
        risk._add_open(cid, _OpenOrder(INST, Side.BUY, Decimal("1.5"), Decimal("45000.10")))
    mgr.snapshot()
    risk.snapshot()
    return mgr, risk


def _touch(mgr: OrderManager, n: int, round_: int) -> None:
    for j in range(CHANGED):
        i = (round_ * CHANGED + j * 7919) % n
        rep = ExecutionReport(
            venue="V",
            exec_id=f"e{round_}-{j}",
            exec_type=ExecType.TRADE,
            ts_event=T0,
            client_order_id=f"c{i:08d}",
            last_qty=Decimal("0.001"),
            last_px=Decimal("45000.10"),
        )
        mgr.on_execution_report(rep)


def _timed(mgr: OrderManager, risk: AccountRisk, full: bool) -> tuple[float, float, int]:
    if full:
        mgr._dirty.update(mgr.orders)
        risk._open_dirty.update(risk._open)
    t0 = time.perf_counter()
    blob = mgr.snapshot() + risk.snapshot()
    t1 = time.perf_counter()
    pickle.dumps(blob)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, len(blob)


def main() -> dict[str, object]:
    rows = []
    for n in SIZES:
        mgr, risk = _build(n)
        full, inc, pick, size = [], [], [], 0
        for r in range(REPEATS):
            _touch(mgr, n, r)
            f_ms, _p, _s = _timed(mgr, risk, full=True)
            _touch(mgr, n, r + REPEATS)
            i_ms, p_ms, size = _timed(mgr, risk, full=False)
            full.append(f_ms)
            inc.append(i_ms)
            pick.append(p_ms)
        f, i = statistics.median(full), statistics.median(inc)
        rows.append(
            {
                "open_orders": n,
                "changed": CHANGED,
                "full_ms": round(f, 2),
                "incremental_ms": round(i, 2),
                "pickle_ms": round(statistics.median(pick), 2),
                "speedup": round(f / i, 1),
                "snapshot_bytes": size,
            }
        )
    result = {"benchmark": "order_snapshots", "repeats": REPEATS, "rows": rows}
    write_result("order_snapshots", result)
    header = list(rows[0])
    print_table(
        "one account's snapshot (order state + risk), ms", header, [list(r.values()) for r in rows]
    )
    return result


if __name__ == "__main__":
    main()
