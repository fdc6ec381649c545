"""Pre-trade risk cost per order, in process (target: at most 20 µs per order).

Drives :class:`operators.risk.RiskEngine` with a realistic mix (every limit enabled, open
orders accumulating, market data ticking) and reports the median over several repeats of
the mean cost per order. Run: ``python -m benchmarks.risk_check``.
"""

from __future__ import annotations

import json
import statistics
import time
from decimal import Decimal
from pathlib import Path

from operators.risk import RiskEngine
from operators.risk_config import AccountLimits, RiskLimits
from schemas.canonical import TradeTick
from schemas.common import Aggressor, OrderType, Side
from schemas.instruments import load_instruments
from schemas.orders import SubmitOrder

RESULTS = Path(__file__).resolve().parent / "results" / "risk_check.json"
SEC = 1_000_000_000
T0 = 1_767_225_600 * SEC
TARGET_US = 20.0


def _limits() -> RiskLimits:
    return RiskLimits(
        version="bench",
        defaults=AccountLimits(
            max_order_qty=Decimal("100"),
            max_order_notional=Decimal("10000000"),
            max_position_qty=Decimal("1000000"),
            max_gross_exposure=Decimal("1000000000000"),
            max_open_orders=1_000_000,
            rate_window_ns=SEC,
            max_orders_per_window=10_000_000,
            max_cancels_per_window=10_000_000,
            daily_loss_limit=Decimal("100000"),
            price_band_bps=Decimal("500"),
            max_market_data_age_ns=60 * SEC,
        ),
        accounts={"a1": AccountLimits(), "a2": AccountLimits()},
    )


def measure(orders: int = 20_000, repeats: int = 5) -> dict[str, object]:
    """Median µs/order over ``repeats`` runs of ``orders`` checks each."""
    registry = load_instruments()
    inst = registry.get("BTCUSDT.BINANCE")
    assert inst is not None
    per_run: list[float] = []
    approved = 0
    for r in range(repeats):
        eng = RiskEngine(_limits(), registry)
        eng.on_tick(
            TradeTick(
                inst.instrument_id, Decimal("45000.00"), Decimal("1"), Aggressor.BUY, "t", T0, T0
            )
        )
        batch = [
            SubmitOrder(
                client_order_id=f"r{r}-{i}",
                account_id="a1" if i % 2 else "a2",
                instrument_id=inst.instrument_id,
                side=Side.BUY if i % 3 else Side.SELL,
                order_type=OrderType.LIMIT,
                quantity=Decimal("0.001") * (1 + i % 7),
                price=Decimal("45000.00") + Decimal("0.01") * (i % 50),
                ts_submit=T0 + i * 1000,
            )
            for i in range(orders)
        ]
        start = time.perf_counter_ns()
        for o in batch:
            if eng.check_submit(o).approved:
                approved += 1
        per_run.append((time.perf_counter_ns() - start) / orders / 1000)
    median = statistics.median(per_run)
    return {
        "benchmark": "risk_check",
        "orders": orders,
        "repeats": repeats,
        "median_us_per_order": round(median, 3),
        "min_us_per_order": round(min(per_run), 3),
        "max_us_per_order": round(max(per_run), 3),
        "approved": approved,
        "target_us": TARGET_US,
        "meets_target": median <= TARGET_US,
    }


def main() -> None:
    result = measure()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="pre-trade risk check, in process")
    for col in ("orders x repeats", "median µs/order", "min", "max", "target", "ok"):
        table.add_column(col)
    table.add_row(
        f"{result['orders']} x {result['repeats']}",
        str(result["median_us_per_order"]),
        str(result["min_us_per_order"]),
        str(result["max_us_per_order"]),
        f"<= {TARGET_US}",
        "yes" if result["meets_target"] else "NO",
    )
    Console().print(table)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
