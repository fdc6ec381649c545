"""The normalize dataflow, in-process over the recorded files and end to end through NATS.

Expected numbers come from the raw files themselves (plain gzip + json, or polars),
never from the code under test.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import msgspec
import polars as pl
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.normalize import build_flow
from schemas.canonical import Tick, TradeTick
from schemas.transport import Message, Outgoing
from sources.recorded import RecordedSource
from trade2026.accounting import Accounting
from trade2026.flowregistry import RunContext, build_normalize
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import NatsLoop

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
FILES = sorted(DATA.glob("*.gz"))
TICKS = msgspec.json.Decoder(Tick)


def raw_counts(path: Path) -> Counter[str]:
    """Count stream kinds straight from the file, independently of our reader."""
    counts: Counter[str] = Counter()
    with gzip.open(path, "rt") as f:
        for line in f:
            doc = json.loads(line.split(" ", 1)[1])
            stream = doc.get("stream", "")
            counts["snapshot" if "lastUpdateId" in doc else stream.split("@")[1]] += 1
    return counts


def test_every_recorded_message_becomes_a_tick_and_accounting_balances() -> None:
    out: list[Outgoing] = []
    acct = Accounting()
    run_main(build_flow(RecordedSource(FILES), TestingSink(out), accounting=acct))
    kinds = Counter(
        type(TICKS.decode(o.data)).__name__ for o in out if o.subject.startswith("md.ticks.")
    )
    expected: Counter[str] = Counter()
    for f in FILES:
        expected += raw_counts(f)
    assert kinds["TradeTick"] == expected["trade"]
    assert kinds["Quote"] == expected["bookTicker"]
    assert kinds["BookDelta"] == expected["depth"] + expected["snapshot"]
    total = acct.stage("normalize")
    assert total.records_in == sum(expected.values())
    assert total.balanced and total.dead_lettered == 0 and total.duplicates == 0


def test_redelivered_batch_is_deduplicated_and_counted() -> None:
    with gzip.open(FILES[0]) as f:
        lines = f.read().splitlines()[:500]
    msgs = [
        Message("md.raw.binance.btcusdt", ln.split(b" ", 1)[1], int(ln.split(b" ")[0]))
        for ln in lines
    ]
    replayed = msgs + msgs[-100:]  # an at-least-once source redelivers its last 100
    out: list[Outgoing] = []
    acct = Accounting()
    run_main(build_flow(TestingSource(replayed, batch_size=64), TestingSink(out), accounting=acct))
    count = acct.stage("normalize")
    assert count.records_in == 600 and count.duplicates == 100 and count.out == 500
    assert len([o for o in out if o.subject.startswith("md.ticks.")]) == 500


def test_bad_records_reach_the_dead_letter_subject_with_their_bytes() -> None:
    bad = [b"{oops", b'{"stream":"btcusdt@trade","data":{"p":"NaN"}}', b"[]"]
    msgs = [Message("md.raw.binance.btcusdt", b, 1) for b in bad]
    out: list[Outgoing] = []
    acct = Accounting()
    run_main(build_flow(TestingSource(msgs), TestingSink(out), accounting=acct))
    assert [o.subject for o in out] == ["dlq.normalize"] * 3
    payloads = [msgspec.json.decode(o.data)["payload"] for o in out]
    import base64

    assert [base64.b64decode(p) for p in payloads] == bad
    assert acct.stage("normalize").dead_lettered == 3


def _polars_trades(path: Path) -> pl.DataFrame:
    """VWAP and volume per symbol straight from the raw file, exact decimals in polars."""
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            doc = json.loads(line.split(" ", 1)[1])
            if doc.get("stream", "").endswith("@trade"):
                rows.append({"s": doc["data"]["s"], "p": doc["data"]["p"], "q": doc["data"]["q"]})
    df = pl.DataFrame(rows).with_columns(
        pl.col("p").cast(pl.Decimal(38, 8)), pl.col("q").cast(pl.Decimal(38, 8))
    )
    return df.group_by("s").agg(
        pl.len().alias("trades"),
        pl.col("q").sum().alias("volume"),
        (pl.col("p") * pl.col("q")).sum().alias("notional"),
    )


@pytest.mark.slow
def test_end_to_end_through_nats_matches_independent_vwap(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    path = DATA / "spot_ethusdt_20240808.gz"
    expected = _polars_trades(path).row(0, named=True)
    with gzip.open(path) as f:
        n_lines = sum(1 for _ in f)
    config = NatsConfig(servers=(own_nats_server.url,))
    acct = Accounting()
    flow, source = build_normalize(
        RunContext(nats=config, accounting=acct, stop_after=n_lines, idle_timeout_s=30)
    )
    thread = threading.Thread(target=run_main, args=(flow,), daemon=True)
    thread.start()

    loop = NatsLoop.acquire()
    received: list[bytes] = []
    try:
        nc = loop.connect(config)

        async def collect(msg) -> None:  # type: ignore[no-untyped-def]
            received.append(msg.data)

        async def sub() -> None:
            await nc.subscribe("md.ticks.>", cb=collect, pending_msgs_limit=1_000_000)
            await nc.flush()

        loop.run(sub())
        deadline = time.monotonic() + 20
        while not source.stats and time.monotonic() < deadline:
            time.sleep(0.01)
        replay = subprocess.run(
            [
                sys.executable,
                "-m",
                "trade2026.cli",
                "replay",
                str(path),
                "--speed",
                "max",
                "--nats-url",
                own_nats_server.url,
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert replay.returncode == 0, replay.stderr
        thread.join(timeout=60)
        assert not thread.is_alive(), "flow did not finish after the replay"
        deadline = time.monotonic() + 10
        while len(received) < n_lines and time.monotonic() < deadline:
            time.sleep(0.05)
        loop.run(nc.close())
    finally:
        NatsLoop.release(loop)

    ticks = [TICKS.decode(b) for b in received]
    trades = [t for t in ticks if isinstance(t, TradeTick)]
    assert len(trades) == expected["trades"]
    volume = sum((t.size for t in trades), Decimal(0))
    notional = sum((t.price * t.size for t in trades), Decimal(0))
    assert volume == expected["volume"]
    assert notional == expected["notional"]
    assert notional / volume == expected["notional"] / expected["volume"]  # the VWAP
    assert acct.stage("normalize").balanced
    assert acct.stage("normalize").records_in == n_lines


def test_msg_ids_name_records_so_a_replay_repeats_them_exactly() -> None:
    with gzip.open(FILES[0]) as f:
        lines = f.read().splitlines()[:300]
    msgs = [
        Message("md.raw.binance.btcusdt", ln.split(b" ", 1)[1], int(ln.split(b" ")[0]))
        for ln in lines
    ] + [Message("md.raw.binance.btcusdt", b"{bad", 7)]
    first: list[Outgoing] = []
    second: list[Outgoing] = []
    run_main(build_flow(TestingSource(msgs), TestingSink(first), msg_ids=True))
    run_main(build_flow(TestingSource(msgs, batch_size=7), TestingSink(second), msg_ids=True))
    ids = [o.headers["Nats-Msg-Id"] for o in first if o.headers]
    assert len(ids) == len(first) == len(set(ids))  # every output named, no two alike
    assert sorted(ids) == sorted(o.headers["Nats-Msg-Id"] for o in second if o.headers)
    trades = [o for o in first if b'"kind":"trade"' in o.data[:20]]
    tid = msgspec.json.decode(trades[0].data)["trade_id"]
    assert trades[0].headers == {"Nats-Msg-Id": f"t:BTCUSDT.BINANCE:{tid}"}
