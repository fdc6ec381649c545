"""The store flow: order-path subjects into real Delta tables, in process and over NATS."""

from __future__ import annotations

import asyncio
import base64
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
from bytewax.testing import TestingSink, TestingSource, run_main
from deltalake import DeltaTable

from flows.store import DLQ_SUBJECT, STAGE, RecordWriterSink, build_flow, build_store
from operators.portfolio import AccountPnl
from operators.tca import TcaWindow
from schemas.canonical import Fill, OrderEvent, Position
from schemas.common import Liquidity, OrderStatus, Side
from schemas.orders import RiskAction, RiskDecision
from schemas.transport import Message, Outgoing
from sinks.orderstore import DeltaOrderWriter, OrderStoreConfig, order_table_uri
from trade2026.accounting import Accounting
from trade2026.flowregistry import RunContext
from trade2026.localstack import wait_until
from trade2026.natsconf import NatsConfig

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
enc = msgspec.json.encode


def fill(exec_id: str, price: str = "87000.5") -> Fill:
    return Fill(
        exec_id,
        "o1",
        "c1",
        "alice",
        "BTCUSDT.BINANCE",
        Side.SELL,
        Decimal("0.25"),
        Decimal(price),
        Decimal("0.01"),
        "USDT",
        Liquidity.MAKER,
        T0 + 1,
    )


def good_records() -> list[tuple[str, object]]:
    return [
        (
            "orders.events.alice",
            OrderEvent(
                "FILLED",
                OrderStatus.FILLED,
                "o1",
                "c1",
                "alice",
                "BTCUSDT.BINANCE",
                Side.SELL,
                Decimal("0.25"),
                Decimal("0.25"),
                Decimal("0"),
                Decimal("87000.5"),
                T0 + 2,
                seq=3,
            ),
        ),
        ("fills.alice", fill("x1")),
        (
            "positions.alice",
            Position(
                "alice",
                "BTCUSDT.BINANCE",
                Decimal("-0.25"),
                Decimal("87000.5"),
                Decimal("0"),
                Decimal("0.125"),
                Decimal("87000"),
                Decimal("0.01"),
                T0 + 3,
            ),
        ),
        (
            "pnl.alice",
            AccountPnl(
                "alice",
                Decimal("0"),
                Decimal("0.125"),
                Decimal("0.01"),
                Decimal("0.115"),
                Decimal("21750"),
                1,
                T0 + 3,
            ),
        ),
        (
            "risk.decisions.alice",
            RiskDecision(
                "alice",
                "c1",
                RiskAction.SUBMIT,
                True,
                "APPROVED",
                "",
                "l1",
                "i1",
                T0,
            ),
        ),
        (
            "tca.windows.instrument.BTCUSDT.BINANCE",
            TcaWindow(
                "instrument",
                "BTCUSDT.BINANCE",
                T0,
                T0 + 60 * 10**9,
                fills=1,
                filled_qty=Decimal("0.25"),
                notional=Decimal("21750.125"),
            ),
        ),
    ]


BAD: list[tuple[str, bytes, str]] = [
    ("fills.alice", b'{"kind":"fill","exec_id":', "DECODE_ERROR"),
    # A fill published where positions go: the subject names the type.
    ("positions.alice", enc(fill("x9")), "DECODE_ERROR"),
    ("fills.alice", enc(fill("x8", price="1.0000000000000000000001")), "DECIMAL_OUT_OF_RANGE"),
    ("fills.alice", b"x" * 70_000, "OVERSIZED"),
    ("orders.alerts", b"{}", "UNEXPECTED_SUBJECT"),
]


def messages() -> list[Message]:
    out = [Message(s, enc(r), T0, seq=i) for i, (s, r) in enumerate(good_records())]
    out += [Message(s, d, T0) for s, d, _ in BAD]
    # Redelivered copies (a publisher retried): stored once, counted as duplicates.
    out += [
        Message("fills.alice", enc(fill("x1")), T0),
        Message("fills.alice", enc(fill("x2")), T0),
    ]
    return out


def table(root: Path, name: str) -> list[dict[str, Any]]:
    return DeltaTable(order_table_uri(str(root), name)).to_pyarrow_table().to_pylist()


def test_flow_stores_each_record_type_dead_letters_the_rest_and_balances(tmp_path: Path) -> None:
    acct = Accounting()
    dlq: list[Outgoing] = []
    cfg = OrderStoreConfig(root=str(tmp_path))
    sink = RecordWriterSink(acct, lambda _i: DeltaOrderWriter(cfg))
    run_main(
        build_flow(
            TestingSource(messages(), batch_size=4),
            TestingSink(dlq),
            writer_sink=sink,
            accounting=acct,
        )
    )

    assert sorted(r["exec_id"] for r in table(tmp_path, "fills")) == ["x1", "x2"]
    (ev,) = table(tmp_path, "order_events")
    assert ev["event"] == "FILLED" and ev["avg_px"] == Decimal("87000.5") and ev["seq"] == 3
    (pos,) = table(tmp_path, "positions")
    assert pos["unrealized_pnl"] == Decimal("0.125") and pos["ts"] == T0 + 3
    (pnl,) = table(tmp_path, "account_pnl")
    assert pnl["net_pnl"] == Decimal("0.115")
    (dec,) = table(tmp_path, "risk_decisions")
    assert dec["approved"] is True and dec["action"] == "SUBMIT"
    (win,) = table(tmp_path, "tca_windows")
    assert win["notional"] == Decimal("21750.125")

    assert {o.subject for o in dlq} == {DLQ_SUBJECT}
    dead = [msgspec.json.decode(o.data) for o in dlq]
    assert sorted(d["reason"] for d in dead) == sorted(r for _, _, r in BAD)
    by_reason = {d["reason"]: d for d in dead}
    assert base64.b64decode(by_reason["UNEXPECTED_SUBJECT"]["payload"]) == b"{}"
    assert by_reason["UNEXPECTED_SUBJECT"]["subject"] == "orders.alerts"

    total = acct.stage(STAGE)
    assert (total.records_in, total.out, total.dead_lettered, total.duplicates) == (13, 7, 5, 1)
    fills = acct.stage(STAGE, "fills")
    assert (fills.records_in, fills.out, fills.dead_lettered, fills.duplicates) == (6, 2, 3, 1)


def test_a_rerun_of_the_same_input_adds_nothing(tmp_path: Path) -> None:
    cfg = OrderStoreConfig(root=str(tmp_path))
    for _ in range(2):
        acct = Accounting()
        sink = RecordWriterSink(acct, lambda _i: DeltaOrderWriter(cfg))
        run_main(
            build_flow(
                TestingSource(messages()), TestingSink([]), writer_sink=sink, accounting=acct
            )
        )
    assert len(table(tmp_path, "fills")) == 2
    second = acct.stage(STAGE)
    assert (second.out, second.duplicates) == (0, 8) and second.balanced


def test_build_store_persists_what_is_published_on_nats(own_nats_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    acct = Accounting()
    ctx = RunContext(nats=NatsConfig(servers=(url,)), accounting=acct, idle_timeout_s=1.5)
    flow, source = build_store(ctx, str(tmp_path))
    failures: list[BaseException] = []

    def target() -> None:
        try:
            run_main(flow)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert wait_until(lambda: len(source.stats) == 6 or failures, 20), "store never subscribed"

    async def publish() -> None:
        nc = await nats.connect(url)
        for subject, rec in good_records():
            await nc.publish(subject, enc(rec))
        await nc.publish("fills.alice", b"not json")
        await nc.flush()
        await nc.close()

    asyncio.run(publish())
    thread.join(timeout=60)
    assert not thread.is_alive() and not failures
    for name in (
        "order_events",
        "fills",
        "positions",
        "account_pnl",
        "risk_decisions",
        "tca_windows",
    ):
        assert len(table(tmp_path, name)) == 1, name
    total = acct.stage(STAGE)
    assert (total.records_in, total.out, total.dead_lettered) == (7, 6, 1)


def test_batch_suites_see_every_stored_order_event_and_fill_once_decoded(tmp_path: Path) -> None:
    """The store runs the order_events and fills batch suites (off the orders process):
    every record that decoded and fits is offered, nothing is judged per record here."""
    from operators.quality.tap import Quality, QualityConfig
    from schemas.instruments import load_instruments

    quality = Quality(
        QualityConfig(store=str(tmp_path / "quality"), stages=("order_events", "fills")),
        load_instruments(),
        clock=lambda: T0,
    )
    validators = {s: quality.validator(s) for s in ("order_events", "fills")}
    acct = Accounting()
    sink = RecordWriterSink(acct, lambda _i: DeltaOrderWriter(OrderStoreConfig(root=str(tmp_path))))
    run_main(
        build_flow(
            TestingSource(messages(), batch_size=4),
            TestingSink([]),
            writer_sink=sink,
            accounting=acct,
            batch_validators={k: v for k, v in validators.items() if v is not None},
        )
    )
    stats = quality.close(30)
    bad = {d for s, d, _ in BAD}
    for stage, prefix in (("order_events", "orders.events."), ("fills", "fills.")):
        good = [m for m in messages() if m.subject.startswith(prefix) and m.data not in bad]
        assert stats[stage].offered_rows == len(good) > 0, (stage, stats[stage])
    assert not [s for s in acct.stages() if s.startswith("quality.")]
