"""The order-path store's Delta fallback against real local Delta tables."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from operators.portfolio import AccountPnl
from operators.tca import FillQuality, OrderQuality, TcaWindow
from schemas.canonical import Fill, Order, OrderEvent, Position
from schemas.common import Liquidity, OrderStatus, OrderType, Side
from schemas.orders import RiskAction, RiskDecision
from sinks.delta import DeltaSinkError
from sinks.orderstore import (
    DeltaOrderWriter,
    OrderStoreConfig,
    order_store_writer,
    order_table_uri,
)
from sinks.questdb import QuestDBWriter, RecordWriter

T0 = 1_700_000_000 * 10**9 + 123  # 2023-11-14T22:13:20.000000123Z
DEC = pa.decimal128(38, 18)


def fill(exec_id: str = "e1", price: str = "65000.10") -> Fill:
    return Fill(
        exec_id,
        "o1",
        "c1",
        "ACC1",
        "BTCUSDT.BINANCE",
        Side.BUY,
        Decimal("0.5"),
        Decimal(price),
        Decimal("0.0325"),
        "USDT",
        Liquidity.TAKER,
        T0,
    )


def event(seq: int) -> OrderEvent:
    return OrderEvent(
        "PARTIALLY_FILLED",
        OrderStatus.PARTIALLY_FILLED,
        "o1",
        "c1",
        "ACC1",
        "BTCUSDT.BINANCE",
        Side.BUY,
        Decimal("1"),
        Decimal("0.5"),
        Decimal("0.5"),
        Decimal("65000.1"),
        T0 + seq,
        last_qty=Decimal("0.5"),
        last_px=Decimal("65000.1"),
        seq=seq,
    )


def one_of_each() -> list[object]:
    return [
        Order(
            "c1",
            "ACC1",
            "BTCUSDT.BINANCE",
            Side.BUY,
            OrderType.LIMIT,
            Decimal("1"),
            Decimal("65000.1"),
            ts_submit=T0,
        ),
        event(1),
        fill(),
        Position(
            "ACC1",
            "BTCUSDT.BINANCE",
            Decimal("-0.5"),
            Decimal("65000.1"),
            Decimal("0"),
            Decimal("-1.25"),
            Decimal("65002.6"),
            Decimal("0.0325"),
            T0,
        ),
        AccountPnl(
            "ACC1",
            Decimal("0"),
            Decimal("-1.25"),
            Decimal("0.0325"),
            Decimal("-1.2825"),
            Decimal("32501.3"),
            1,
            T0,
        ),
        RiskDecision(
            "ACC1",
            "c2",
            RiskAction.SUBMIT,
            False,
            "NOTIONAL_EXCEEDS_MAX_PER_ORDER",
            "1e6 > 5e5",
            "limits-v1",
            "instr-v1",
            T0,
        ),
        FillQuality(
            "e1",
            "o1",
            "ACC1",
            "BTCUSDT.BINANCE",
            Side.BUY,
            Decimal("0.5"),
            Decimal("65000.1"),
            Decimal("0.0325"),
            Decimal("64999.95"),
            Decimal("0.0231"),
            T0,
        ),
        OrderQuality(
            "o1",
            "ACC1",
            "BTCUSDT.BINANCE",
            Side.BUY,
            Decimal("1"),
            Decimal("0.5"),
            Decimal("0.5"),
            Decimal("65000.1"),
            None,
            None,
            2_000,
            T0 - 2_000,
            T0,
        ),
        TcaWindow(
            "instrument",
            "BTCUSDT.BINANCE",
            T0,
            T0 + 60 * 10**9,
            fills=1,
            filled_qty=Decimal("0.5"),
            notional=Decimal("32500.05"),
        ),
    ]


def rows(root: Path, table: str) -> list[dict[str, Any]]:
    return DeltaTable(order_table_uri(str(root), table)).to_pyarrow_table().to_pylist()


def test_every_order_path_record_lands_in_its_table_exactly(tmp_path: Path) -> None:
    w = DeltaOrderWriter(OrderStoreConfig(root=str(tmp_path)))
    assert isinstance(w, RecordWriter)
    w.write(one_of_each())
    assert w.backlog().memory_rows == 9
    assert w.flush() is True
    assert w.backlog().memory_rows == 0

    tables = [
        "orders",
        "order_events",
        "fills",
        "positions",
        "account_pnl",
        "risk_decisions",
        "tca_fills",
        "tca_orders",
        "tca_windows",
    ]
    for table in tables:
        assert len(rows(tmp_path, table)) == 1, table

    (f,) = rows(tmp_path, "fills")
    assert f["price"] == Decimal("65000.10") and f["fee"] == Decimal("0.0325")
    assert f["ts"] == T0 and f["ts_event"] == T0  # nanoseconds survive
    assert f["date"] == dt.date(2023, 11, 14)
    assert f["side"] == "BUY" and f["liquidity"] == "TAKER"
    (p,) = rows(tmp_path, "positions")
    assert p["quantity"] == Decimal("-0.5") and p["unrealized_pnl"] == Decimal("-1.25")
    (r,) = rows(tmp_path, "risk_decisions")
    assert r["approved"] is False and r["reason"] == "NOTIONAL_EXCEEDS_MAX_PER_ORDER"
    (q,) = rows(tmp_path, "tca_orders")
    assert q["arrival_mid"] is None and q["time_to_first_fill_ns"] == 2_000
    (win,) = rows(tmp_path, "tca_windows")
    assert win["ts"] == T0 and win["notional"] == Decimal("32500.05")
    assert w.take_counts()[("fills", "out")] == 1


def test_schema_is_enforced_decimal_and_int_ns_partitioned_by_date(tmp_path: Path) -> None:
    w = DeltaOrderWriter(OrderStoreConfig(root=str(tmp_path)))
    w.write(one_of_each())
    w.flush()
    table = DeltaTable(order_table_uri(str(tmp_path), "fills"))
    schema = table.to_pyarrow_table().schema
    assert schema.field("price").type == DEC and schema.field("fee").type == DEC
    assert schema.field("ts").type == pa.int64() and schema.field("ts_event").type == pa.int64()
    assert table.metadata().partition_columns == ["date"]
    nullable = {f.name: f.nullable for f in table.schema().fields}
    assert nullable["exec_id"] is False
    tq = DeltaTable(order_table_uri(str(tmp_path), "tca_orders"))
    assert {f.name: f.nullable for f in tq.schema().fields}["arrival_mid"] is True


def test_redelivery_and_restart_store_each_record_once(tmp_path: Path) -> None:
    cfg = OrderStoreConfig(root=str(tmp_path))
    first = DeltaOrderWriter(cfg)
    first.write([fill("e1"), fill("e2"), fill("e1"), event(1), event(2)])
    first.flush()
    assert first.take_counts() == {
        ("fills", "out"): 2,
        ("fills", "duplicate"): 1,
        ("order_events", "out"): 2,
        ("order_events", "duplicate"): 0,
    }
    first.close()

    # A restarted writer sees the same records again (a redelivery after a crash).
    again = DeltaOrderWriter(cfg)
    again.write([fill("e2"), fill("e3"), event(2), event(3)])
    again.flush()
    counts = again.take_counts()
    assert counts[("fills", "out")] == 1 and counts[("fills", "duplicate")] == 1
    assert counts[("order_events", "out")] == 1 and counts[("order_events", "duplicate")] == 1
    assert sorted(r["exec_id"] for r in rows(tmp_path, "fills")) == ["e1", "e2", "e3"]
    assert sorted(r["seq"] for r in rows(tmp_path, "order_events")) == [1, 2, 3]

    # Nothing new at all: no commit either.
    before = DeltaTable(order_table_uri(str(tmp_path), "fills")).version()
    again.write([fill("e1")])
    again.flush()
    assert DeltaTable(order_table_uri(str(tmp_path), "fills")).version() == before


def test_records_that_do_not_fit_are_dead_lettered_never_rounded(tmp_path: Path) -> None:
    w = DeltaOrderWriter(OrderStoreConfig(root=str(tmp_path)))
    too_fine = fill("e9", price="65000.1000000000000000001")  # 22 decimals
    w.write([too_fine, "not a record", fill("e1")])
    w.flush()
    reasons = [d.reason for d in w.dead_letters]
    assert reasons == ["DECIMAL_OUT_OF_RANGE", "NO_TABLE"]
    assert msgspec.json.decode(w.dead_letters[0].payload)["price"] == "65000.1000000000000000001"
    assert w.dead_letters[0].stage == "sink.orderstore"
    assert [r["exec_id"] for r in rows(tmp_path, "fills")] == ["e1"]
    counts = w.take_counts()
    assert counts[("fills", "dead_lettered")] == 1 and counts[("-", "dead_lettered")] == 1
    assert w.backlog().dead_lettered == 2


def test_trailing_zeros_past_the_scale_are_exact_and_accepted(tmp_path: Path) -> None:
    w = DeltaOrderWriter(OrderStoreConfig(root=str(tmp_path)))
    w.write([fill("e1", price="65000.10000000000000000000000")])
    w.flush()
    assert not w.dead_letters
    assert rows(tmp_path, "fills")[0]["price"] == Decimal("65000.1")


def test_unwritable_root_raises_a_clear_error_and_keeps_the_rows(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    w = DeltaOrderWriter(OrderStoreConfig(root=str(blocker)), clock=lambda: 42)
    w.write([fill()])
    with pytest.raises(DeltaSinkError, match="hint"):
        w.flush()
    b = w.backlog()
    assert b.memory_rows == 1 and b.down_since_ns == 42 and b.last_error


def test_batch_rows_triggers_a_commit_on_write(tmp_path: Path) -> None:
    w = DeltaOrderWriter(OrderStoreConfig(root=str(tmp_path), batch_rows=3))
    w.write([fill("e1"), fill("e2")])
    assert w.backlog().memory_rows == 2
    w.write([fill("e3")])
    assert w.backlog().memory_rows == 0
    assert len(rows(tmp_path, "fills")) == 3


def test_factory_picks_questdb_only_when_configured(tmp_path: Path) -> None:
    delta = order_store_writer(
        OrderStoreConfig(root=str(tmp_path)), env={"TRADE2026_DELTA_ROOT": "ignored"}
    )
    assert isinstance(delta, DeltaOrderWriter)
    quest = order_store_writer(
        env={"QUESTDB_URL": "127.0.0.1:1", "QUESTDB_SPILL_DIR": str(tmp_path / "spill")},
        worker_index=3,
    )
    try:
        assert isinstance(quest, QuestDBWriter)
        # The QuestDB writer gets every order-path table, not only its four defaults.
        assert {s.name for s in quest.tables.specs()} >= {
            "risk_decisions",
            "account_pnl",
            "tca_fills",
            "tca_orders",
            "tca_windows",
        }
        assert quest.config.spill.directory == str(tmp_path / "spill" / "worker-3")
    finally:
        quest.close()  # nothing pending: returns without contacting the server
