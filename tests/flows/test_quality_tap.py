"""The quality tap in a real flow: normalize over the recorded files plus injected faults."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import msgspec
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.normalize import build_flow
from flows.quality import OutgoingGate, Route
from operators.quality.batch import QualityStore
from operators.quality.tap import Quality, QualityConfig
from schemas.canonical import DeadLetter, Position
from schemas.instruments import load_instruments
from schemas.transport import Message, Outgoing
from sources.recorded import merge_recorded
from trade2026.accounting import Accounting

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
FILES = sorted(DATA.glob("*.gz"))
SUBJECT = "md.raw.binance.spot.btcusdt"


def _trade_from_the_future(recv: int) -> bytes:
    """A trade stamped 10 s after its receive time: within normalize's 60 s clock-drift
    allowance, beyond the ticks rule's 2 s. Decodes fine, fails only the quality tap."""
    with gzip.open(DATA / "spot_btcusdt_20240808.gz", "rt") as f:
        for line in f:
            doc = json.loads(line.split(" ", 1)[1])
            if doc.get("stream", "").endswith("@trade"):
                d = doc["data"]
                d["T"] = recv // 1_000_000 + 10_000
                d["t"] = 10**15  # a fresh trade id: not a duplicate for the sequencer
                return json.dumps(doc).encode()
    raise AssertionError("no trade in the sample")


def _messages() -> list[Message]:
    msgs = [Message(ln.subject, ln.data, ln.ts_recv) for ln in merge_recorded(map(str, FILES))]
    last = msgs[-1].ts_recv
    subject = next(m.subject for m in msgs if "btcusdt" in m.subject)
    msgs += [
        Message(subject, b"", last + 1),
        Message(subject, b"not json at all", last + 2),
        Message(subject, _trade_from_the_future(last + 3), last + 3),
    ]
    return msgs


def test_normalize_with_quality_dead_letters_and_stores_batches(tmp_path):
    msgs = _messages()
    out: list[Outgoing] = []
    acct = Accounting()
    quality = Quality(
        QualityConfig(store=str(tmp_path), batch_rows=20_000, max_duty=1.0, max_queue=8),
        load_instruments(),
        accounting=acct,
        clock=time.time_ns,
    )
    run_main(
        build_flow(
            TestingSource(msgs, batch_size=500), TestingSink(out), accounting=acct, quality=quality
        )
    )
    stats = quality.close()
    dead = [
        msgspec.json.decode(o.data, type=DeadLetter) for o in out if o.subject.startswith("dlq.")
    ]
    by = {(o.subject, d.reason): d for o, d in zip(
        [o for o in out if o.subject.startswith("dlq.")], dead, strict=True)}  # fmt: skip
    assert set(by) == {
        ("dlq.raw", "EMPTY_PAYLOAD"),
        ("dlq.raw", "INVALID_JSON"),
        ("dlq.ticks", "TIMESTAMP_IN_FUTURE"),
    }
    assert by[("dlq.raw", "INVALID_JSON")].payload == b"not json at all"
    future = by[("dlq.ticks", "TIMESTAMP_IN_FUTURE")]
    assert future.instrument_id == "BTCUSDT.BINANCE" and future.stage == "ticks"
    assert json.loads(future.payload)["trade_id"] == str(10**15)  # the tick as emitted
    # the refused trade never reaches md.ticks
    assert all(b"1000000000000000" not in o.data for o in out if o.subject.startswith("md.ticks"))

    n = len(msgs)
    raw, ticks, norm = (acct.stage(s) for s in ("quality.raw", "quality.ticks", "normalize"))
    assert (raw.records_in, raw.dead_lettered, raw.out) == (n, 2, n - 2)
    assert norm.records_in == n - 2 and norm.balanced
    assert ticks.records_in == norm.out and ticks.dead_lettered == 1 and ticks.balanced

    # every batch was validated against the suites (max_duty 1.0) and the clean data passes
    assert stats["raw"].validated_batches >= 1 and stats["ticks"].validated_batches >= 1
    assert stats["raw"].skipped_batches == stats["ticks"].skipped_batches == 0
    rows = QualityStore(tmp_path).read("validations")
    assert {r["stage"] for r in rows} == {"raw", "ticks"}
    assert sum(r["rows"] for r in rows if r["stage"] == "ticks") == ticks.out
    failed = [e for e in QualityStore(tmp_path).read("expectations") if not e["success"]]
    assert failed == []
    snap = {r["stage"]: r for r in QualityStore(tmp_path).read("accounting")}
    assert snap["quality.raw"]["dead_lettered"] == 2


def test_without_quality_nothing_changes():
    msgs = _messages()
    plain: list[Outgoing] = []
    run_main(build_flow(TestingSource(msgs, batch_size=500), TestingSink(plain)))
    subjects = {o.subject.split(".")[0] + "." + o.subject.split(".")[1] for o in plain}
    assert "dlq.raw" not in subjects and "dlq.ticks" not in subjects


def test_outgoing_gate_judges_by_subject_and_passes_the_rest():
    from decimal import Decimal

    q = Quality(QualityConfig(), load_instruments(), clock=time.time_ns)
    gate = OutgoingGate(
        q, [Route("positions.", "positions", msgspec.json.Decoder(Position).decode)]
    )
    d = Decimal
    good = Position("acct-1", "BTCUSDT.BINANCE", d(1), d(100), d(0), d(0), d(101), d(0), 5)
    bad = Position("acct-1", "NOPE.NOWHERE", d(1), d(100), d(0), d(0), d(101), d(0), 6)
    items = [
        Outgoing("positions.acct-1", msgspec.json.encode(good)),
        Outgoing("pnl.acct-1", b"{}"),
        Outgoing("positions.acct-1", msgspec.json.encode(bad)),
    ]
    out = gate(items)
    assert out[:2] == items[:2]
    assert out[2].subject == "dlq.positions"
    letter = msgspec.json.decode(out[2].data, type=DeadLetter)
    assert (letter.reason, letter.payload) == ("UNKNOWN_INSTRUMENT", items[2].data)
    c = q.accounting.stage("quality.positions")
    assert (c.records_in, c.out, c.dead_lettered) == (2, 1, 1)


def test_outgoing_gate_names_its_dead_letters_after_the_records_they_replace() -> None:
    """A replay after a crash publishes the same dead letter again: it carries a
    ``Nats-Msg-Id`` (``q:`` + the replaced record's id, else a digest of its own subject and
    bytes), so the DLQ stream drops the second copy."""
    from decimal import Decimal

    from trade2026.orderclient import content_msg_id

    d = Decimal
    bad = Position("acct-1", "NOPE.NOWHERE", d(1), d(100), d(0), d(0), d(101), d(0), 6)
    data = msgspec.json.encode(bad)
    named = Outgoing("positions.acct-1", data, {"Nats-Msg-Id": "pos:acct-1:NOPE.NOWHERE:6"})
    anonymous = Outgoing("positions.acct-1", data)

    def gate_once(item: Outgoing) -> Outgoing:  # a fresh gate: a restarted process
        q = Quality(QualityConfig(), load_instruments(), clock=time.time_ns)
        gate = OutgoingGate(
            q, [Route("positions.", "positions", msgspec.json.Decoder(Position).decode)]
        )
        (out,) = gate([item])
        return out

    first = gate_once(named)
    assert first.subject == "dlq.positions"
    assert first.headers == {"Nats-Msg-Id": "q:pos:acct-1:NOPE.NOWHERE:6"}
    assert msgspec.json.decode(first.data, type=DeadLetter).payload == data
    assert gate_once(named) == first  # the replay: same subject, bytes and id

    plain = gate_once(anonymous)
    assert plain.data == first.data
    assert plain.headers == {"Nats-Msg-Id": "q:" + content_msg_id("dlq.positions", plain.data)}
    assert gate_once(anonymous).headers == plain.headers
    # A passing record is published as it came.
    good = Outgoing("positions.acct-1", data.replace(b"NOPE.NOWHERE", b"BTCUSDT.BINANCE"), {})
    assert gate_once(good) is good
