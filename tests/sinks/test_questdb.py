"""The QuestDB writer: row building against the client's own Buffer, and retry, backoff,
spill and recovery against a failure-injection double of QuestDB's HTTP API.

Expected ILP bytes, DDL and backoff delays are written out by hand from the ILP
protocol description and the config values, never computed by the code under test.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from schemas.canonical import Fill, Position
from schemas.common import Liquidity, Side
from sinks.questdb import (
    BacklogFullError,
    QuestDBConfig,
    QuestDBSink,
    QuestDBWriter,
    RecordWriter,
    RetryConfig,
    build_conf,
)
from sinks.questdb_tables import ColumnKind, TableRegistry, default_registry, spec_from_struct
from sinks.spill import SpillConfig
from tests.sinks.questdb_double import QuestDBDouble

T0 = 1_723_161_300_000_000_000  # 2024-08-08T23:55:00Z


class FakeClock:
    """Integer-ns clock advanced only by the test and by the writer's injected sleep."""

    def __init__(self, t: int = T0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += round(seconds * 1e9)

    def advance(self, seconds: float) -> None:
        self.t += round(seconds * 1e9)


def fill(i: int, price: str = "65000.10") -> Fill:
    return Fill(
        exec_id=f"E{i}",
        order_id=f"O{i}",
        client_order_id=f"C{i}",
        account_id="ACC1",
        instrument_id="BTCUSDT.BINANCE",
        side=Side.BUY,
        quantity=Decimal("0.00100000"),
        price=Decimal(price),
        fee=Decimal("-0.0065"),
        fee_currency="USDT",
        liquidity=Liquidity.MAKER,
        ts_event=T0 + i,
    )


@pytest.fixture
def qdb() -> Iterator[QuestDBDouble]:
    with QuestDBDouble() as double:
        yield double


def writer_for(qdb: QuestDBDouble, tmp_path: Path, clock: FakeClock, **kw: object) -> QuestDBWriter:
    spill = kw.pop("spill", SpillConfig(directory=str(tmp_path / "spill")))
    cfg = QuestDBConfig(url=qdb.addr, spill=spill, **kw)  # type: ignore[arg-type]
    return QuestDBWriter(cfg, clock=clock, sleep=clock.sleep, rand=lambda: 0.5)


def exec_ids(qdb: QuestDBDouble) -> list[str]:
    return [r.fields["exec_id"] for r in qdb.accepted() if r.table == "fills"]


# -- row building against the client's Buffer ------------------------------------------------
def test_fill_row_in_decimal_mode_is_exact_binary_decimal() -> None:
    from questdb._client import Buffer  # questdb.ingress.Buffer without the deprecation

    spec = default_registry().for_record(fill(1))
    buf = Buffer(protocol_version=3)
    spec.add_row(buf, fill(1), "decimal")
    # DECIMAL binary form: '==' 0x17, scale byte, length byte, big-endian unscaled value.
    # 65000.10 -> 6500010 = 0x632EAA at scale 2; 0.00100000 -> 100000 = 0x0186A0 at scale 8;
    # -0.0065 -> -65 at scale 4, as the 16-bit two's complement 0xFFBF.
    expected = (
        b"fills,account_id=ACC1,instrument_id=BTCUSDT.BINANCE,side=BUY,fee_currency=USDT,"
        b"liquidity=MAKER "
        b'exec_id="E1",order_id="O1",client_order_id="C1",'
        b"quantity==\x17\x08\x03\x01\x86\xa0,"
        b"price==\x17\x02\x03\x63\x2e\xaa,"
        b"fee==\x17\x04\x02\xff\xbf,"
        b"ts_event=1723161300000000001i "
        b"1723161300000000001n\n"
    )
    assert bytes(buf) == expected


def test_fill_row_in_string_mode_is_exact_text() -> None:
    from questdb._client import Buffer  # questdb.ingress.Buffer without the deprecation

    spec = default_registry().for_record(fill(2))
    buf = Buffer(protocol_version=1)
    spec.add_row(buf, fill(2, price="1E+5"), "string")
    assert bytes(buf) == (
        b"fills,account_id=ACC1,instrument_id=BTCUSDT.BINANCE,side=BUY,fee_currency=USDT,"
        b'liquidity=MAKER exec_id="E2",order_id="O2",client_order_id="C2",'
        b'quantity="0.00100000",price="100000",fee="-0.0065",'
        b"ts_event=1723161300000000002i 1723161300000000002\n"
    )


def test_none_fields_are_left_out_of_the_row() -> None:
    from questdb._client import Buffer  # questdb.ingress.Buffer without the deprecation

    pos = Position(
        account_id="ACC1",
        instrument_id="ETHUSDT.BINANCE",
        quantity=Decimal("-2"),
        avg_open_price=None,
        realized_pnl=Decimal("0"),
        unrealized_pnl=Decimal("0"),
        mark_price=None,
        fees=Decimal("0"),
        ts_event=5,
    )
    buf = Buffer(protocol_version=1)
    default_registry().for_record(pos).add_row(buf, pos, "string")
    assert bytes(buf) == (
        b"positions,account_id=ACC1,instrument_id=ETHUSDT.BINANCE "
        b'quantity="-2",realized_pnl="0",unrealized_pnl="0",fees="0",ts_event=5i 5\n'
    )


def test_fills_ddl_has_designated_ts_symbols_day_partitions_wal_and_dedup() -> None:
    spec = default_registry().by_name("fills")
    assert spec.ddl("decimal") == (
        "CREATE TABLE IF NOT EXISTS fills (ts TIMESTAMP_NS, exec_id VARCHAR, order_id VARCHAR, "
        "client_order_id VARCHAR, account_id SYMBOL, instrument_id SYMBOL, side SYMBOL, "
        "quantity DECIMAL(38, 18), price DECIMAL(38, 18), fee DECIMAL(38, 18), "
        "fee_currency SYMBOL, liquidity SYMBOL, ts_event LONG) TIMESTAMP(ts) PARTITION BY DAY "
        "WAL DEDUP UPSERT KEYS(ts, instrument_id, exec_id)"
    )
    assert "price VARCHAR" in spec.ddl("string") and "(ts TIMESTAMP," in spec.ddl("string")


def test_a_new_record_type_needs_a_few_lines() -> None:
    class RiskDecision(msgspec.Struct, frozen=True):
        decision_id: str
        account_id: str
        approved: bool
        reason: str | None
        limit_used: Decimal
        ts_event: int

    registry = TableRegistry()
    spec = registry.register(
        spec_from_struct(
            RiskDecision,
            "risk_decisions",
            timestamp="ts_event",
            symbols=("account_id", "reason"),
            dedup_keys=("decision_id",),
        )
    )
    assert [(c.name, c.kind) for c in spec.columns] == [
        ("decision_id", ColumnKind.VARCHAR),
        ("account_id", ColumnKind.SYMBOL),
        ("approved", ColumnKind.BOOLEAN),
        ("reason", ColumnKind.SYMBOL),
        ("limit_used", ColumnKind.DECIMAL),
        ("ts_event", ColumnKind.LONG),
    ]
    rec = RiskDecision("D1", "ACC1", False, "MAX_NOTIONAL", Decimal("0.5"), 9)
    assert registry.for_record(rec) is spec
    from questdb._client import Buffer  # questdb.ingress.Buffer without the deprecation

    buf = Buffer(protocol_version=1)
    spec.add_row(buf, rec, "string")
    assert bytes(buf) == (
        b"risk_decisions,account_id=ACC1,reason=MAX_NOTIONAL "
        b'decision_id="D1",approved=f,limit_used="0.5",ts_event=9i 9\n'
    )


def test_conf_forces_explicit_flushes_and_no_client_retries() -> None:
    conf = build_conf(QuestDBConfig(url="http://db.internal:9000"))
    assert conf == (
        "http::addr=db.internal:9000;auto_flush=off;retry_timeout=0;"
        "request_timeout=10000;protocol_version=3;"
    )
    conf = build_conf(
        QuestDBConfig(url="https::addr=h:9001;username=u;password=p;", money="string")
    )
    assert conf.startswith("https::addr=h:9001;username=u;password=p;auto_flush=off;")
    assert conf.endswith("protocol_version=1;")
    assert "p;" not in repr(QuestDBConfig(url="http::addr=h:1;password=secret;"))
    env = {"QUESTDB_URL": "localhost:9999"}
    assert QuestDBConfig.from_env(env).url == "localhost:9999"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"url": "x", "bogus": 1}, QuestDBConfig)


# -- the writer against the double -----------------------------------------------------------
def test_rows_arrive_exact_and_tables_are_created_first(qdb: QuestDBDouble, tmp_path: Path) -> None:
    clock = FakeClock()
    w = writer_for(qdb, tmp_path, clock, batch_rows=4)
    assert isinstance(w, RecordWriter)
    w.write([fill(i) for i in range(10)])
    assert w.flush() is True
    assert exec_ids(qdb) == [f"E{i}" for i in range(10)]
    first = qdb.accepted()[0]
    assert first.fields["price"] == Decimal("65000.10")
    assert first.fields["fee"] == Decimal("-0.0065")
    assert first.symbols["instrument_id"] == "BTCUSDT.BINANCE"
    assert first.ts == T0
    assert sorted(q.split(" (")[0] for q in qdb.ddl) == [
        "CREATE TABLE IF NOT EXISTS fills",
        "CREATE TABLE IF NOT EXISTS order_events",
        "CREATE TABLE IF NOT EXISTS orders",
        "CREATE TABLE IF NOT EXISTS positions",
    ]
    # batches of at most 4 rows: 4 + 4 + 2
    assert [b.count(b"\n") for b in qdb.bodies] == [4, 4, 2]
    assert w.backlog().pending_rows == 0
    w.close()


def test_partial_batch_waits_for_the_interval(qdb: QuestDBDouble, tmp_path: Path) -> None:
    clock = FakeClock()
    w = writer_for(qdb, tmp_path, clock, batch_rows=100, batch_interval_ms=1000)
    w.write([fill(1)])
    assert exec_ids(qdb) == []
    clock.advance(1.0)
    w.write([fill(2)])
    assert exec_ids(qdb) == ["E1", "E2"]
    w.close()


def test_5xx_is_retried_with_exponential_backoff_and_jitter(
    qdb: QuestDBDouble, tmp_path: Path
) -> None:
    clock = FakeClock()
    retry = RetryConfig(initial_ms=100, max_ms=250, multiplier=2.0, jitter=0.2)
    w = writer_for(qdb, tmp_path, clock, retry=retry)
    qdb.fail_next(4, status=503)
    w.write([fill(i) for i in range(3)])
    assert w.flush() is False
    assert w.backlog().memory_rows == 3
    assert w.backlog().down_since_ns == T0
    attempts = qdb.write_attempts
    assert w.flush() is False  # still backing off: no request at all
    assert qdb.write_attempts == attempts
    assert w.drain(timeout_s=10) is True
    # rand=0.5 and jitter=0.2 scale each delay by 0.9: 100ms, 200ms, then capped at 250ms.
    assert clock.sleeps == pytest.approx([0.09, 0.18, 0.225, 0.225])
    assert qdb.write_statuses == [503, 503, 503, 503, 204]
    assert exec_ids(qdb) == ["E0", "E1", "E2"]
    assert w.backlog().down_since_ns is None
    w.close()


def test_outage_of_minutes_loses_nothing_and_duplicates_nothing(
    qdb: QuestDBDouble, tmp_path: Path
) -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    cfg = QuestDBConfig(
        url=qdb.addr,
        batch_rows=50,
        max_memory_rows=200,
        spill_after_ms=30_000,
        retry=RetryConfig(initial_ms=100, max_ms=20_000),
        spill=SpillConfig(directory=str(tmp_path / "spill"), segment_bytes=16_384),
    )
    w = QuestDBWriter(cfg, clock=clock, sleep=clock.sleep, rand=lambda: 0.5, registry=registry)
    n = 0
    w.write([fill(n := n + 1) for _ in range(20)])
    w.flush()
    assert len(exec_ids(qdb)) == 20

    qdb.fail_always(500)  # first the server errors ...
    spilled_seen = 0
    for second in range(300):  # ... five minutes of traffic, 10 fills a second
        if second == 60:
            qdb.fail_always(None)
            qdb.stop()  # ... then it is gone entirely: connection refused
        w.write([fill(n := n + 1) for _ in range(10)])
        w.flush()
        b = w.backlog()
        assert b.memory_rows <= 200
        spilled_seen = max(spilled_seen, b.spill_rows)
        clock.advance(1.0)
    assert spilled_seen > 0
    backlog = w.backlog()
    assert backlog.pending_rows == 3000
    assert backlog.spill_bytes > 0
    gauge = registry.get_sample_value("trade2026_questdb_spill_rows", {"sink": "questdb"})
    assert gauge == backlog.spill_rows
    assert registry.get_sample_value("trade2026_questdb_down", {"sink": "questdb"}) == 1

    qdb.start()  # same port
    assert w.drain(timeout_s=120) is True
    assert exec_ids(qdb) == [f"E{i}" for i in range(1, 3021)]  # each once, in order
    assert w.backlog() == w.backlog().__class__()
    assert list((tmp_path / "spill").glob("seg-*")) == []
    assert registry.get_sample_value("trade2026_questdb_spill_rows", {"sink": "questdb"}) == 0
    assert registry.get_sample_value("trade2026_questdb_backlog_rows", {"sink": "questdb"}) == 0
    assert (
        registry.get_sample_value("trade2026_questdb_rows_written_total", {"sink": "questdb"})
        == 3020
    )
    w.close()


def test_full_backlog_refuses_rows_with_a_clear_error_and_drops_none(
    qdb: QuestDBDouble, tmp_path: Path
) -> None:
    clock = FakeClock()
    # Each spilled fill frame is ~300 bytes: room for a little over one batch.
    w = writer_for(
        qdb,
        tmp_path,
        clock,
        batch_rows=10,
        max_memory_rows=10,
        spill=SpillConfig(directory=str(tmp_path / "spill"), max_bytes=4_000),
    )
    qdb.stop()
    accepted: list[int] = []
    refused: list[int] = []
    with pytest.raises(BacklogFullError, match=r"backlog full.*hint: bring QuestDB back"):
        for b in range(20):
            batch = list(range(b * 10, b * 10 + 10))
            try:
                w.write([fill(i) for i in batch])
            except BacklogFullError:
                refused.extend(batch)
                raise
            accepted.extend(batch)
            clock.advance(1.0)
    assert accepted and refused
    assert w.backlog().pending_rows == len(accepted)
    qdb.start()
    assert w.drain(timeout_s=60)
    w.write([fill(i) for i in refused])  # the caller retries what was refused
    assert w.flush()
    assert exec_ids(qdb) == [f"E{i}" for i in accepted + refused]
    w.close()


def test_rejected_rows_are_isolated_and_dead_lettered(qdb: QuestDBDouble, tmp_path: Path) -> None:
    clock = FakeClock()
    w = writer_for(qdb, tmp_path, clock)
    qdb.reject_rows(lambda row: row.fields.get("exec_id") in ("E3", "E6"))
    w.write([fill(i) for i in range(8)])
    assert w.flush() is True
    assert exec_ids(qdb) == ["E0", "E1", "E2", "E4", "E5", "E7"]
    assert [(d.stage, d.reason) for d in w.dead_letters] == [
        ("sink.questdb", "QUESTDB_REJECTED"),
        ("sink.questdb", "QUESTDB_REJECTED"),
    ]
    assert "injected rejection" in w.dead_letters[0].detail
    assert msgspec.json.decode(w.dead_letters[0].payload, type=Fill) == fill(3)
    assert w.backlog().dead_lettered == 2
    w.close()


def test_a_price_questdb_would_round_is_dead_lettered_not_rounded(
    qdb: QuestDBDouble, tmp_path: Path
) -> None:
    clock = FakeClock()
    got = []
    cfg = QuestDBConfig(url=qdb.addr, spill=SpillConfig(directory=str(tmp_path / "s")))
    w = QuestDBWriter(cfg, clock=clock, sleep=clock.sleep, on_dead_letter=got.append)
    w.write([fill(1, price="1.0000000000000000001"), fill(2, price="1.100000000000000000000")])
    assert w.flush()
    assert [d.reason for d in got] == ["DECIMAL_OUT_OF_RANGE"]
    assert exec_ids(qdb) == ["E2"]
    assert qdb.accepted()[0].fields["price"] == Decimal("1.1")
    w.close()


def test_slow_answer_is_resent_and_the_duplicate_is_byte_identical(
    qdb: QuestDBDouble, tmp_path: Path
) -> None:
    clock = FakeClock()
    w = writer_for(qdb, tmp_path, clock, request_timeout_ms=150)
    qdb.slow(1.0)  # the server stores the rows but answers after the client gave up
    w.write([fill(1), fill(2)])
    assert w.flush() is False
    qdb.slow(0)
    clock.advance(1.0)
    assert w.flush() is True
    # In doubt, so sent twice; identical rows with identical DEDUP UPSERT KEYS
    # (ts, instrument_id, exec_id) collapse to one row each in QuestDB.
    assert exec_ids(qdb) == ["E1", "E2", "E1", "E2"]
    assert qdb.bodies[0] == qdb.bodies[1]
    w.close()


def test_close_while_down_spills_and_the_next_writer_replays_first(
    qdb: QuestDBDouble, tmp_path: Path
) -> None:
    clock = FakeClock()
    w1 = writer_for(qdb, tmp_path, clock, close_timeout_ms=2_000)
    qdb.stop()
    w1.write([fill(i) for i in range(5)])
    w1.close()  # cannot reach QuestDB: the rows go to disk, not to /dev/null
    assert w1.backlog().spill_rows == 5
    qdb.start()
    w2 = writer_for(qdb, tmp_path, clock)
    assert w2.backlog().spill_rows == 5
    w2.write([fill(5)])
    assert w2.flush()
    assert exec_ids(qdb) == ["E0", "E1", "E2", "E3", "E4", "E5"]
    w2.close()


def test_bytewax_flow_writes_through_the_sink(qdb: QuestDBDouble, tmp_path: Path) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    cfg = QuestDBConfig(url=qdb.addr, spill=SpillConfig(directory=str(tmp_path / "spill")))
    flow = Dataflow("questdb_sink_test")
    stream = op.input("in", flow, TestingSource([fill(i) for i in range(25)], batch_size=10))
    op.output("out", stream, QuestDBSink(cfg))
    run_main(flow)
    assert exec_ids(qdb) == [f"E{i}" for i in range(25)]


# -- against a real server -------------------------------------------------------------------
@pytest.mark.questdb
def test_real_questdb_round_trip_is_exact_and_idempotent(tmp_path: Path) -> None:
    url = os.environ.get("QUESTDB_URL")
    if not url:
        pytest.skip("QUESTDB_URL not set: start one with `docker compose up questdb`")
    import json
    import time
    import uuid

    money = os.environ.get("QUESTDB_MONEY", "decimal")
    registry = TableRegistry()
    table = f"t26_fills_{uuid.uuid4().hex[:8]}"
    registry.register(
        spec_from_struct(
            Fill,
            table,
            timestamp="ts_event",
            symbols=("account_id", "instrument_id", "fee_currency"),
            dedup_keys=("instrument_id", "exec_id"),
        )
    )
    cfg = QuestDBConfig(
        url=url,
        money=money,
        spill=SpillConfig(directory=str(tmp_path / "spill")),  # type: ignore[arg-type]
    )
    w = QuestDBWriter(cfg, tables=registry)
    try:
        rows = [fill(i, price=f"65000.{i:02d}") for i in range(20)]
        w.write(rows)
        assert w.flush()
        w.write(rows[:5])  # redelivery
        assert w.flush()
        base = url if "://" in url else f"http://{url}"
        query = f"SELECT exec_id, price FROM {table} ORDER BY ts"
        deadline = time.monotonic() + 30
        while True:  # WAL tables apply asynchronously
            qs = urllib.parse.urlencode({"query": query})
            with urllib.request.urlopen(f"{base}/exec?{qs}", timeout=5) as r:
                dataset = json.loads(r.read())["dataset"]
            if len(dataset) >= 20 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [row[0] for row in dataset] == [f"E{i}" for i in range(20)]
        assert [Decimal(str(row[1])) for row in dataset] == [
            Decimal(f"65000.{i:02d}") for i in range(20)
        ]
    finally:
        try:
            w.exec_sql(f"DROP TABLE IF EXISTS {table}")
        finally:
            w.close()
