"""The ticks-sink dataflow end to end with Bytewax's testing source and real Delta tables."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.ticks_sink import DLQ_SUBJECT, build_flow
from schemas.canonical import DeadLetter, Quote, TradeTick
from schemas.common import Aggressor
from schemas.transport import Message, Outgoing
from sinks.delta import DeltaSinkError, DeltaTicksConfig, table_uri
from trade2026.accounting import Accounting

T0 = 1_700_000_000 * 10**9


def msgs() -> list[Message]:
    out: list[Message] = []
    seq = 0
    for i in range(40):
        seq += 1
        t = TradeTick(
            "BTCUSDT.BINANCE",
            Decimal("65000.5"),
            Decimal("0.01"),
            Aggressor.SELL,
            str(i),
            T0 + i,
            T0 + i,
        )
        out.append(Message("md.ticks.BTCUSDT.BINANCE", msgspec.json.encode(t), T0, seq=seq))
        seq += 1
        q = Quote(
            "ETHUSDT.BINANCE",
            Decimal("3000"),
            Decimal("1"),
            Decimal("3001"),
            Decimal("2"),
            i,
            T0 + i,
            T0 + i,
        )
        out.append(Message("md.ticks.ETHUSDT.BINANCE", msgspec.json.encode(q), T0, seq=seq))
    out.append(Message("md.ticks.BAD", b"{not json", T0, seq=seq + 1))
    too_fine = (
        b'{"kind":"trade","instrument_id":"X","price":"1.0000000000000000000001",'
        b'"size":"1","aggressor":"BUY","trade_id":"z","ts_event":1,"ts_recv":1}'
    )
    out.append(Message("md.ticks.X", too_fine, T0, seq=seq + 2))
    return out


#: Source batch sizes and the flow's small-batch cut: record by record, and the arrow
#: (column) path with the checked rows split across two shards.
PATHS = pytest.mark.parametrize(
    ("source_batch", "small_batch"), [(1, 256), (7, 0)], ids=["records", "columns"]
)


def run(
    root: Path,
    items: list[Message],
    acc: Accounting,
    source_batch: int = 1,
    small_batch: int = 256,
) -> list[Outgoing]:
    dlq: list[Outgoing] = []
    cfg = DeltaTicksConfig(root=str(root), batch_rows=25, batch_ms=50)
    run_main(
        build_flow(
            cfg,
            source=TestingSource(items, batch_size=source_batch),
            dlq_sink=TestingSink(dlq),
            accounting=acc,
            shards=2,
            small_batch=small_batch,
        )
    )
    return dlq


@PATHS
def test_flow_writes_tables_dead_letters_and_balances(
    tmp_path: Path, source_batch: int, small_batch: int
) -> None:
    from deltalake import DeltaTable

    acc = Accounting()
    dlq = run(tmp_path, msgs(), acc, source_batch, small_batch)

    trades = DeltaTable(table_uri(str(tmp_path), "trade")).to_pyarrow_table()
    quotes = DeltaTable(table_uri(str(tmp_path), "quote")).to_pyarrow_table()
    assert trades.num_rows == 40 and quotes.num_rows == 40
    assert set(trades.column("price").to_pylist()) == {Decimal("65000.5")}

    assert {o.subject for o in dlq} == {DLQ_SUBJECT}
    dead = [msgspec.json.decode(o.data, type=DeadLetter) for o in dlq]
    assert sorted(d.reason for d in dead) == ["DECODE_ERROR", "SCHEMA_MISMATCH"]
    assert next(d for d in dead if d.reason == "DECODE_ERROR").payload == b"{not json"
    count = acc.stage("ticks_sink")
    assert (count.records_in, count.out, count.dead_lettered, count.duplicates) == (82, 80, 2, 0)
    assert count.balanced


@PATHS
def test_replaying_the_same_stream_adds_no_rows(
    tmp_path: Path, source_batch: int, small_batch: int
) -> None:
    from deltalake import DeltaTable

    items = msgs()
    run(tmp_path, items[:50], Accounting(), source_batch, small_batch)
    acc = Accounting()
    run(tmp_path, items, acc, source_batch, small_batch)  # the restart re-reads it all
    assert DeltaTable(table_uri(str(tmp_path), "trade")).to_pyarrow_table().num_rows == 40
    assert DeltaTable(table_uri(str(tmp_path), "quote")).to_pyarrow_table().num_rows == 40
    count = acc.stage("ticks_sink")
    assert count.duplicates == 50 and count.out == 30 and count.balanced


def test_unwritable_root_stops_the_flow(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Exception) as info:  # Bytewax wraps the sink's error
        run(blocker / "delta", msgs(), Accounting())
    seen: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    ours = [e for e in seen if isinstance(e, DeltaSinkError)]
    assert ours, f"no DeltaSinkError in the chain: {seen!r}"
    assert "hint:" in str(ours[0]) and str(blocker) in str(ours[0])
