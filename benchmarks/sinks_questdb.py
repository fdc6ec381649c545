"""QuestDB sink row building: rows/s into the client's ILP buffer, no server involved.

- spec.add_row: our path (validate Decimals, split a Fill into symbols/columns, Buffer.row);
- Buffer.row: the client alone, on pre-split dicts (the ceiling for row-at-a-time);
- Buffer.dataframe: the client's columnar path on a pandas frame of the same rows.

Both money encodings are measured: ``decimal`` (ILP v3 binary DECIMAL) and ``string``.
Writes ``benchmarks/results/sinks_questdb.json`` and prints a table; medians of
``--repeat`` runs. Usage: ``python -m benchmarks.sinks_questdb --rows 50000``.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import click

from benchmarks.common import median_of, print_table, write_result

T0 = 1_714_521_600 * 10**9


def make_fills(n: int) -> list[Any]:
    from schemas.canonical import Fill
    from schemas.common import Liquidity, Side

    insts = ("BTCUSDT.BINANCE", "ETHUSDT.BINANCE", "SOLUSDT.BINANCE")
    return [
        Fill(
            exec_id=f"E{i}",
            order_id=f"O{i // 3}",
            client_order_id=f"C{i // 3}",
            account_id=f"ACC{i % 4}",
            instrument_id=insts[i % 3],
            side=Side.BUY if i % 2 else Side.SELL,
            quantity=Decimal("0.00100000"),
            price=Decimal(f"65000.{i % 100:02d}"),
            fee=Decimal("-0.0065"),
            fee_currency="USDT",
            liquidity=Liquidity.MAKER,
            ts_event=T0 + i * 1_000,
        )
        for i in range(n)
    ]


@click.command()
@click.option("--rows", default=50_000, show_default=True)
@click.option("--repeat", default=3, show_default=True)
def main(rows: int, repeat: int) -> None:
    import pandas as pd
    from questdb import TimestampNanos
    from questdb._client import Buffer

    from sinks.questdb_tables import default_registry

    fills = make_fills(rows)
    spec = default_registry().by_name("fills")
    results: dict[str, Any] = {"rows": rows, "repeat": repeat}
    table = []
    for money, proto in (("decimal", 3), ("string", 1)):
        split = [spec.split(f, money) for f in fills]  # type: ignore[arg-type]

        def add_row(proto: int = proto, money: str = money) -> float:
            buf = Buffer(protocol_version=proto)
            t = time.perf_counter()
            for f in fills:
                spec.add_row(buf, f, money)  # type: ignore[arg-type]
            return rows / (time.perf_counter() - t)

        def raw_row(proto: int = proto, split: list[Any] = split) -> float:
            buf = Buffer(protocol_version=proto)
            t = time.perf_counter()
            for sy, co, ts in split:
                buf.row("fills", symbols=sy, columns=co, at=TimestampNanos(ts))
            return rows / (time.perf_counter() - t)

        frame = pd.DataFrame([{**sy, **co, "ts": pd.Timestamp(ts, unit="ns", tz="UTC")}
                              for sy, co, ts in split])  # fmt: skip
        for col in ("account_id", "instrument_id", "side", "fee_currency", "liquidity"):
            frame[col] = frame[col].astype("category")

        def dataframe(proto: int = proto, frame: Any = frame) -> float:
            buf = Buffer(protocol_version=proto)
            t = time.perf_counter()
            buf.dataframe(frame, table_name="fills", at="ts")
            return rows / (time.perf_counter() - t)

        for name, fn in (("spec.add_row", add_row), ("Buffer.row", raw_row),
                         ("Buffer.dataframe", dataframe)):  # fmt: skip
            med, samples = median_of(repeat, fn)
            results[f"{money}/{name}"] = {"rows_per_s": round(med), "samples": samples}
            table.append((money, name, f"{med:,.0f}"))
    path = write_result("sinks_questdb", results)
    print_table(f"QuestDB row building, {rows:,} fills (median of {repeat})",
                ("money", "path", "rows/s"), table)  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
