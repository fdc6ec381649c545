"""Scale-out changes where the work runs, never what comes out.

Each flow runs on the same input three ways: one worker, two workers in one process
(``bytewax.testing.cluster_main``), and two processes over loopback TCP (two
``python -m tests.scaleout.driver`` subprocesses, bytewax's own cluster mode). Keyed
state is partitioned by the engine, so each key's records meet on one worker in input
order; the outputs must therefore be the same multiset of records in every layout
(the order in which *different* keys' records leave the workers is free).

* normalize: the recorded Binance sample (two files, ~75k raw messages) through decode,
  dedupe and gap detection;
* features: the canonical ticks of that sample plus position records, through 1 s / 1 m
  bars and account windows;
* orders: a seeded mix of submits, cancels, replaces, halts (account and global),
  retries, execution reports, positions, and invalid requests for several accounts,
  all on one input partition so that the router sees one fixed order. Market data is
  left out on purpose: its view is per process and not keyed state (flows/orders.py),
  so with it the result would depend on timing even on one worker.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from bytewax.testing import cluster_main, run_main

from schemas.canonical import Position
from schemas.common import OrderType, Side, TimeInForce
from schemas.orders import (
    CancelOrder,
    ControlAction,
    ControlCommand,
    ControlScope,
    ExecType,
    ExecutionReport,
    ReplaceOrder,
    SubmitOrder,
)
from schemas.transport import Message
from tests.scaleout.driver import build, read_outputs, write_messages
from trade2026.orderclient import CANCEL_SUBJECT, CONTROL_SUBJECT, REPLACE_SUBJECT, SUBMIT_SUBJECT
from trade2026.sample import SAMPLE_DIR

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_723_075_200_000_000_000  # 2024-08-08T00:00:00Z
_enc = msgspec.json.Encoder().encode


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(layout: str, flow: str, input_dir: Path, out_dir: Path) -> Counter[bytes]:
    out_dir.mkdir()
    if layout == "1 worker":
        run_main(build(flow, input_dir, out_dir))
    elif layout == "2 workers":
        cluster_main(build(flow, input_dir, out_dir), [], 0, worker_count_per_proc=2)
    else:
        addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(2))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.scaleout.driver",
                    flow,
                    str(input_dir),
                    str(out_dir),
                    "--process-id",
                    str(i),
                    "--addresses",
                    addresses,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        logs = []
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=240)
            finally:
                proc.kill()
            logs.append(out.decode(errors="replace")[-2000:])
        assert all(p.returncode == 0 for p in procs), logs
        # Both processes produced output: the keyed work really was split between them.
        per_process: Counter[str] = Counter()
        for path in out_dir.glob("*.bin"):
            items = msgspec.msgpack.decode(path.read_bytes(), type=list[bytes])
            per_process[path.stem.rsplit("-p", 1)[1]] += len(items)
        assert len(per_process) == 2 and min(per_process.values()) > 0, per_process
    return Counter(read_outputs(out_dir))


def _assert_same(runs: dict[str, Counter[bytes]]) -> None:
    base = runs["1 worker"]
    assert sum(base.values()) > 0
    for layout, got in runs.items():
        missing, extra = base - got, got - base
        assert not missing and not extra, (
            f"{layout}: {sum(missing.values())} outputs missing and {sum(extra.values())} "
            f"extra compared with 1 worker"
        )


LAYOUTS = ("1 worker", "2 workers", "2 processes")


# -- normalize -----------------------------------------------------------------------------
def test_normalize_is_the_same_on_one_worker_two_workers_and_two_processes(
    tmp_path: Path,
) -> None:
    runs = {
        layout: _run(layout, "normalize", SAMPLE_DIR, tmp_path / str(i))
        for i, layout in enumerate(LAYOUTS)
    }
    _assert_same(runs)
    # Every sample message came out as something (a tick, a gap, a dead letter).
    assert sum(runs["1 worker"].values()) > 70_000


# -- features ------------------------------------------------------------------------------
def _feature_inputs(tmp_path: Path) -> Path:
    """Canonical ticks of the sample (one file per instrument) plus position records."""
    from flows.normalize import build_flow as build_normalize
    from schemas.transport import Outgoing
    from sources.recorded import RecordedSource
    from tests.scaleout.driver import FileSink

    raw = tmp_path / "normalized"
    raw.mkdir()
    run_main(build_normalize(RecordedSource(sorted(SAMPLE_DIR.glob("*.gz"))), FileSink(raw, "n")))
    per_subject: dict[str, list[Message]] = {}
    for item in read_outputs(raw):
        out = msgspec.msgpack.decode(item, type=Outgoing)
        if out.subject.startswith("md.ticks."):
            per_subject.setdefault(out.subject, []).append(Message(out.subject, out.data, 0))
    inputs = tmp_path / "features_in"
    inputs.mkdir()
    for subject, msgs in per_subject.items():
        # The normalizer's output order per instrument is its stream order.
        write_messages(inputs / f"{subject}.msgpack", msgs)
    rng = random.Random(11)
    positions = []
    for i in range(600):
        acct = rng.choice(["alice", "bob", "carol"])
        qty = Decimal(rng.randint(-50, 50)) / 10
        pos = Position(
            acct,
            "BTCUSDT.BINANCE",
            qty,
            Decimal("60000.5"),
            Decimal(rng.randint(-500, 500)),
            Decimal(rng.randint(-100, 100)),
            Decimal("60010"),
            Decimal("1.25"),
            T0 + i * 500_000_000,
        )
        positions.append(Message(f"positions.{acct}", _enc(pos), 0))
    write_messages(inputs / "positions.msgpack", positions)
    return inputs


def test_features_are_the_same_on_one_worker_two_workers_and_two_processes(
    tmp_path: Path,
) -> None:
    inputs = _feature_inputs(tmp_path)
    assert len(list(inputs.glob("*.msgpack"))) >= 3  # two instruments and the positions
    runs = {
        layout: _run(layout, "features", inputs, tmp_path / str(i))
        for i, layout in enumerate(LAYOUTS)
    }
    _assert_same(runs)


# -- orders --------------------------------------------------------------------------------
def _order_inputs(tmp_path: Path, n: int = 1500) -> Path:
    """A seeded order-path session on one partition (see the module docstring)."""
    rng = random.Random(2026)
    accounts = ["alice", "bob", "demo", "default", "mallory"]  # mallory is not declared
    open_orders: list[tuple[str, str]] = []
    msgs: list[Message] = []
    ts = T0

    def add(subject: str, record: object, raw: bytes | None = None) -> None:
        msgs.append(Message(subject, raw if raw is not None else _enc(record), ts))

    for i in range(n):
        ts += rng.randint(1, 40) * 1_000_000
        acct = rng.choice(accounts)
        roll = rng.random()
        if roll < 0.45 or not open_orders:
            cid = f"{acct}-{i}"
            inst = rng.choice(["BTCUSDT.BINANCE", "ETHUSDT.BINANCE"])
            base = Decimal("60000") if inst.startswith("BTC") else Decimal("2600")
            price = base + Decimal(rng.randint(-300, 300)) / 100
            if rng.random() < 0.05:
                price += Decimal("0.005")  # off the tick: denied
            qty = Decimal(rng.randint(1, 40)) / 100
            tif = rng.choice([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC])
            order = SubmitOrder(
                cid,
                acct,
                inst,
                rng.choice([Side.BUY, Side.SELL]),
                OrderType.LIMIT,
                qty,
                price,
                tif,
                ts_submit=ts,
            )
            add(SUBMIT_SUBJECT, order)
            open_orders.append((acct, cid))
            if rng.random() < 0.05:
                add(SUBMIT_SUBJECT, order)  # a client retry, byte-identical
        elif roll < 0.60:
            acct, cid = rng.choice(open_orders)
            add(CANCEL_SUBJECT, CancelOrder(acct, cid, f"c{i}", ts))
        elif roll < 0.70:
            acct, cid = rng.choice(open_orders)
            add(
                REPLACE_SUBJECT,
                ReplaceOrder(acct, cid, Decimal(rng.randint(1, 40)) / 100, None, f"r{i}", ts),
            )
        elif roll < 0.88:
            acct, cid = rng.choice(open_orders)
            inst = "BTCUSDT.BINANCE"
            report = ExecutionReport(
                "BINANCE",
                f"x{i}",
                ExecType.TRADE,
                ts,
                client_order_id=cid,
                account_id=acct,
                instrument_id=inst,
                last_qty=Decimal("0.01"),
                last_px=Decimal("60000.00"),
                fee=Decimal("0.01"),
                fee_currency="USDT",
            )
            add("exec.reports.BINANCE", report)
            if rng.random() < 0.1:
                add("exec.reports.BINANCE", report)  # a venue resend: duplicate exec id
        elif roll < 0.93:
            pos = Position(
                acct,
                "ETHUSDT.BINANCE",
                Decimal(rng.randint(-5, 5)),
                None,
                Decimal(0),
                Decimal(0),
                None,
                Decimal(0),
                ts,
            )
            add(f"positions.{acct}", pos)
        elif roll < 0.97:
            action = rng.choice([ControlAction.HALT, ControlAction.RESUME])
            add(CONTROL_SUBJECT, ControlCommand(action, ControlScope.ACCOUNT, acct, "test"))
        elif roll < 0.985:
            action = rng.choice([ControlAction.HALT, ControlAction.RESUME])
            add(CONTROL_SUBJECT, ControlCommand(action, ControlScope.GLOBAL, None, "test"))
        else:
            add(SUBMIT_SUBJECT, None, b'{"account_id": "bob", "client_order_id": "broken"')
    inputs = tmp_path / "orders_in"
    inputs.mkdir()
    write_messages(inputs / "orders.msgpack", msgs)
    return inputs


def test_orders_are_the_same_on_one_worker_two_workers_and_two_processes(
    tmp_path: Path,
) -> None:
    inputs = _order_inputs(tmp_path)
    runs = {
        layout: _run(layout, "orders", inputs, tmp_path / str(i))
        for i, layout in enumerate(LAYOUTS)
    }
    _assert_same(runs)
    subjects = Counter(
        msgspec.msgpack.decode(b, type=list[object])[0] for b in runs["1 worker"].elements()
    )
    # The session exercised the paths whose state is keyed by account.
    for prefix in ("orders.events.", "risk.decisions.", "fills.", "venue.commands.", "dlq."):
        assert any(str(s).startswith(prefix) for s in subjects), (prefix, subjects)


@pytest.fixture(autouse=True)
def _no_risk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The subprocesses must read the bundled limits, as the in-process runs do."""
    monkeypatch.delenv("TRADE2026_RISK", raising=False)
    monkeypatch.delenv("TRADE2026_INSTRUMENTS", raising=False)
