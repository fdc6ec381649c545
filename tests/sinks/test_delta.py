"""The Delta tick writer against real local tables and a real S3-compatible server."""

from __future__ import annotations

import socket
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from schemas.canonical import BookDelta, BookLevel, Quote, TradeTick
from schemas.common import Aggressor
from sinks.delta import (
    DeltaSinkError,
    DeltaTicksConfig,
    Stamped,
    TickTableWriter,
    table_uri,
    tick_misfit,
)
from trade2026.accounting import Accounting

DAY = 86_400 * 10**9
T0 = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z


def trade(i: int, inst: str = "BTCUSDT.BINANCE", ts: int | None = None) -> TradeTick:
    t = T0 + i * 1_000 if ts is None else ts
    return TradeTick(
        inst, Decimal("65000.10"), Decimal("0.00100000"), Aggressor.BUY, f"t{i}", t, t + 5
    )


def quote(i: int) -> Quote:
    t = T0 + i * 1_000
    return Quote(
        "ETHUSDT.BINANCE",
        Decimal("3000.01"),
        Decimal("1.5"),
        Decimal("3000.02"),
        Decimal("2"),
        i,
        t,
        t + 1,
    )


def stamped(
    ticks: list, origin: str = "md.ticks.BTCUSDT.BINANCE", first_seq: int = 1
) -> list[Stamped]:
    return [Stamped(origin, first_seq + k, t) for k, t in enumerate(ticks)]


def read(root: str, kind: str, storage_options: dict[str, str] | None = None) -> list[dict]:
    from deltalake import DeltaTable

    return (
        DeltaTable(table_uri(root, kind), storage_options=storage_options)
        .to_pyarrow_table()
        .to_pylist()
    )


def test_round_trip_is_exact_and_partitioned_by_date_only(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    root = str(tmp_path)
    w = TickTableWriter(DeltaTicksConfig(root=root))
    book = BookDelta(
        "BTCUSDT.BINANCE",
        [BookLevel(Decimal("64999.99"), Decimal("0"))],
        [
            BookLevel(Decimal("65000.01"), Decimal("1.25")),
            BookLevel(Decimal("65000.02"), Decimal("3")),
        ],
        10,
        12,
        False,
        T0 + DAY,
        T0 + DAY + 7,
    )
    res = w.write(
        [
            *stamped([trade(0), trade(1, ts=T0 + DAY)]),
            Stamped("md.ticks.ETHUSDT.BINANCE", 1, quote(1)),
            Stamped("md.ticks.BTCUSDT.BINANCE", 3, book),
        ]
    )
    assert res.written == {"trade": 2, "quote": 1, "book_delta": 1}
    assert res.commits == 3

    trades = sorted(read(root, "trade"), key=lambda r: r["ts_event"])
    assert [r["price"] for r in trades] == [Decimal("65000.10"), Decimal("65000.10")]
    assert trades[0]["size"] == Decimal("0.001")
    assert trades[0]["ts_recv"] == T0 + 5  # integer ns, not rounded to micros
    assert [str(r["date"]) for r in trades] == ["2023-11-14", "2023-11-15"]
    assert trades[0]["aggressor"] == "BUY" and trades[0]["seq"] == 1
    (b,) = read(root, "book_delta")
    assert [(lv["price"], lv["size"]) for lv in b["asks"]] == [
        (Decimal("65000.01"), Decimal("1.25")),
        (Decimal("65000.02"), Decimal("3")),
    ]
    assert b["bids"][0]["size"] == 0
    assert DeltaTable(table_uri(root, "trade")).metadata().partition_columns == ["date"]
    (q,) = read(root, "quote")
    assert q["bid_price"] == Decimal("3000.01") and q["update_id"] == 1


@pytest.mark.parametrize(
    ("tick", "needle"),
    [
        (
            TradeTick("X", Decimal("1.0000000000000000001"), Decimal(1), Aggressor.SELL, "a", 1, 1),
            "decimal places",
        ),
        (TradeTick("X", Decimal("1e25"), Decimal(1), Aggressor.SELL, "a", 1, 1), "integer digits"),
        (TradeTick("X", Decimal("NaN"), Decimal(1), Aggressor.SELL, "a", 1, 1), "not finite"),
        (TradeTick("X", Decimal(1), Decimal(1), Aggressor.SELL, "a", 2**63, 1), "int64"),
        (Quote("X", Decimal(1), Decimal(1), Decimal(1), Decimal(1), 2**64, 1, 1), "update_id"),
        (TradeTick("", Decimal(1), Decimal(1), Aggressor.SELL, "a", 1, 1), "instrument_id"),
    ],
)
def test_records_that_do_not_fit_are_named(tick: object, needle: str) -> None:
    why = tick_misfit(tick)  # type: ignore[arg-type]
    assert why is not None and needle in why


def test_fitting_edge_values_are_accepted() -> None:
    ok = TradeTick(
        "X",
        Decimal("99999999999999999999.000000000000000001"),
        Decimal("1.10000000000000000000000"),
        Aggressor.SELL,
        "a",
        0,
        0,
    )
    assert tick_misfit(ok) is None


def test_crash_and_replay_writes_no_duplicates(tmp_path: Path) -> None:
    root = str(tmp_path)
    acc = Accounting()
    ticks = [trade(i) for i in range(300)]
    first = TickTableWriter(DeltaTicksConfig(root=root), accounting=acc)
    for lo in range(0, 200, 50):  # seqs 1..200 committed, then the process "crashes"
        first.write(stamped(ticks[lo : lo + 50], first_seq=lo + 1))
    del first
    # JetStream replays from an older snapshot (seq 121) in differently sized batches.
    second = TickTableWriter(DeltaTicksConfig(root=root), accounting=acc)
    r1 = second.write(stamped(ticks[120:170], first_seq=121))
    r2 = second.write(stamped(ticks[170:300], first_seq=171))
    assert r1.written == {} and r1.duplicates == 50
    assert r2.written == {"trade": 100} and r2.duplicates == 30

    seqs = sorted(r["seq"] for r in read(root, "trade"))
    assert seqs == list(range(1, 301))
    count = acc.stage("ticks_sink")
    assert (count.out, count.duplicates) == (300, 80)


def test_same_seq_in_other_origin_is_not_a_duplicate(tmp_path: Path) -> None:
    w = TickTableWriter(DeltaTicksConfig(root=str(tmp_path)))
    w.write(stamped([trade(0)], origin="md.ticks.A", first_seq=5))
    res = w.write(stamped([trade(1)], origin="md.ticks.B", first_seq=5))
    assert res.written == {"trade": 1}
    res = w.write([Stamped("md.ticks.C", None, trade(2)), Stamped("md.ticks.C", None, trade(2))])
    assert res.written == {"trade": 2}  # no sequence: cannot de-duplicate, always written


def test_concurrent_writers_on_one_table(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    root = str(tmp_path)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(writer_id: str, inst: str) -> None:
        try:
            w = TickTableWriter(
                DeltaTicksConfig(root=root, writer_id=writer_id, commit_retries=20), kinds=["trade"]
            )
            barrier.wait()
            for b in range(10):
                w.write(
                    stamped(
                        [trade(b * 20 + k, inst) for k in range(20)],
                        origin=f"md.ticks.{inst}",
                        first_seq=b * 20 + 1,
                    )
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"w{i}", f"I{i}")) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = read(root, "trade")
    assert len(rows) == 400
    for i in range(2):
        assert sorted(r["seq"] for r in rows if r["instrument_id"] == f"I{i}") == list(
            range(1, 201)
        )
    dt = DeltaTable(table_uri(root, "trade"))
    assert dt.transaction_version("w0/md.ticks.I0") == 200
    assert dt.transaction_version("w1/md.ticks.I1") == 200


def test_scheduled_compaction_merges_files(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    root = str(tmp_path)
    w = TickTableWriter(DeltaTicksConfig(root=root, compact_every=4), kinds=["trade"])
    for b in range(4):
        w.write(stamped([trade(b * 10 + k) for k in range(10)], first_seq=b * 10 + 1))
    dt = DeltaTable(table_uri(root, "trade"))
    assert len(dt.file_uris()) == 1  # four one-day appends compacted into one file
    assert len(read(root, "trade")) == 40
    assert dt.history(1)[0]["operation"] == "OPTIMIZE"


def test_unwritable_root_stops_with_a_clear_error(tmp_path: Path) -> None:
    # Tests run as root here, and chmod does not stop root; a regular file where the
    # root directory should be fails for every user, like a read-only or full volume.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(DeltaSinkError) as info:
        TickTableWriter(DeltaTicksConfig(root=str(blocker / "delta")))
    msg = str(info.value)
    assert "ticks_sink" in msg and str(blocker) in msg and "hint:" in msg


def test_write_failure_after_start_is_not_acknowledged(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "delta"
    w = TickTableWriter(DeltaTicksConfig(root=str(root)), kinds=["trade"])
    w.write(stamped([trade(0)], first_seq=1))
    shutil.rmtree(root)
    root.write_text("the volume went away")  # now a file: every write must fail
    with pytest.raises(DeltaSinkError) as info:
        w.write(stamped([trade(1)], first_seq=2))
    assert "write 1 rows" in str(info.value) and "hint:" in str(info.value)
    assert w.committed_version("trade", "md.ticks.BTCUSDT.BINANCE") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_s3_round_trip_and_replay_against_moto() -> None:
    boto3 = pytest.importorskip("boto3", reason="moto[server] brings boto3; not installed")
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        creds = {
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "region_name": "us-east-1",
        }
        boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="ticks")
        opts = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
        }
        cfg = DeltaTicksConfig(root="s3://ticks/lake")
        w = TickTableWriter(cfg, storage_options=opts, kinds=["trade"])
        w.write(stamped([trade(i) for i in range(10)], first_seq=1))
        again = TickTableWriter(cfg, storage_options=opts, kinds=["trade"])
        res = again.write(stamped([trade(i) for i in range(5, 15)], first_seq=6))
        assert (res.written, res.duplicates) == ({"trade": 5}, 5)
        rows = read("s3://ticks/lake", "trade", opts)
        assert sorted(r["seq"] for r in rows) == list(range(1, 16))
        assert rows[0]["price"] == Decimal("65000.10")
    finally:
        server.stop()
