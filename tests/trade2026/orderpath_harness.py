"""The order-path flows wired JetStream-to-JetStream, one per process, for the kill -9 test.

``python -m tests.trade2026.orderpath_harness orders|venue|portfolio|store --nats-url URL
--recovery-dir DIR`` builds the real flow (``flows.orders.build_flow`` and so on) and runs
it with Bytewax recovery until its inputs go idle, like ``python -m flows.pipeline`` does
for normalize. Only the wiring is the test's own:

* every input is a :class:`~sources.nats.JetStreamSource`, because only a stream has a
  position to resume from (the production wiring reads ``exec.reports``, ``fills``,
  ``positions`` and ``md.ticks`` from core NATS, which loses what is published while a
  flow is down: docs/recovery.md);
* every output goes through a :class:`~sinks.nats.JetStreamSink`, whose ``Nats-Msg-Id``
  is the flow's own header when it sets one (venue commands, execution reports) and
  otherwise a digest of subject and payload, so a replayed output that is byte-identical
  is dropped by the stream and one that is not shows up as extra;
* the venue and the portfolio take one input stream whose interleaving of commands, fills
  and ticks the test fixes (subjects ``vin.<subject>`` and ``pin.<subject>``, the prefix
  stripped here), because their results depend on that interleaving and two live
  sources would race.

The streams (created by the test): ``ORDERS`` (orders.>), ``EXEC`` (exec.reports.>),
``VCMD`` (venue.commands.>), ``OUT_ORDERS`` (orders.events.>, risk.decisions.>,
orders.alerts, fills.>), ``VENUE_IN`` (vin.>), ``PF_IN`` (pin.>), ``PF_OUT``
(positions.>, pnl.>) and ``DLQ`` (dlq.>). ``ORDERS`` is made without ``no_ack``, unlike
``ensure_order_streams``: the test publishes with acks and no requester waits for a reply.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.risk_config import AccountLimits, RiskLimits
from schemas.canonical import DeadLetter
from schemas.transport import Message, Outgoing
from trade2026.accounting import Accounting
from trade2026.natsconf import NatsConfig

if TYPE_CHECKING:
    from sinks.nats import JetStreamSink

_encode = msgspec.json.Encoder().encode

#: Stream name -> subjects, for the test to create.
STREAMS: dict[str, list[str]] = {
    "ORDERS": ["orders.submit", "orders.cancel", "orders.replace", "orders.control"],
    "EXEC": ["exec.reports.>"],
    "VCMD": ["venue.commands.>"],
    "OUT_ORDERS": ["orders.events.>", "risk.decisions.>", "orders.alerts", "fills.>"],
    "VENUE_IN": ["vin.>"],
    "PF_IN": ["pin.>"],
    "PF_OUT": ["positions.>", "pnl.>"],
    "DLQ": ["dlq.>"],
}
FLOWS = ("orders", "venue", "portfolio", "store")

#: Written out here, not read from trade2026/config/risk.toml, so an edit there cannot
#: change what the test expects. No order-count or loss limits that the script could
#: trip by accident; the script's denials are chosen on purpose (see the test).
LIMITS = RiskLimits(
    version="kill-test-1",
    default_account="default",
    require_declared_accounts=True,
    defaults=AccountLimits(
        max_order_qty=Decimal(20),
        max_order_notional=Decimal(40_000),
        max_open_orders=500,
        max_position_qty=Decimal(1_000),
    ),
    accounts={"alice": AccountLimits(), "bob": AccountLimits(), "carol": AccountLimits()},
)


_dead_letter = msgspec.json.Decoder(DeadLetter).decode


def digest(item: Outgoing) -> str:
    """``Nats-Msg-Id`` for an output that carries none: its subject and bytes.

    A dead letter is named by what it refused and why, without its ``ts_recv``: the
    flows here read JetStream messages without a ``T26-Recv-Ns`` header, so the source
    stamps the wall clock and a replayed dead letter differs in that field only (the
    fix belongs in ``sources/nats.py``, docs/recovery.md follow-up 2).
    """
    h = hashlib.blake2b(item.subject.encode(), digest_size=16)
    h.update(b"\0")
    if item.subject.startswith("dlq."):
        h.update(_encode(msgspec.structs.replace(_dead_letter(item.data), ts_recv=0)))
    else:
        h.update(item.data)
    return h.hexdigest()


class _Part(StatefulSourcePartition[Message, Any]):
    """One inner partition; strips a subject prefix and paces non-empty batches."""

    def __init__(self, inner: StatefulSourcePartition[Message, Any], strip: str, pace_s: float):
        self._inner = inner
        self._strip = strip
        self._pace_s = pace_s

    def next_batch(self) -> list[Message]:
        batch = self._inner.next_batch()
        if batch and self._strip:
            n = len(self._strip)
            batch = [
                Message(m.subject[n:], m.data, m.ts_recv, m.headers, m.reply, m.seq) for m in batch
            ]
        if batch and self._pace_s:
            # A slow producer, so a kill can land in the middle of the input however fast
            # this machine is; the resume position is the inner partition's, untouched.
            time.sleep(self._pace_s)
        return list(batch)

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class Inputs(FixedPartitionedSource[Message, Any]):
    """Several JetStream sources as one input step (partitions ``<i>/<part>``).

    Each partition's resume state is printed as ``resume <part> <state>`` so the test can
    see that a restart resumed from a snapshot.
    """

    def __init__(
        self, sources: Sequence[FixedPartitionedSource[Message, Any]], *, strip: str = "",
        pace_s: float = 0.0,
    ) -> None:  # fmt: skip
        self._sources = list(sources)
        self._strip = strip
        self._pace_s = pace_s

    def list_parts(self) -> list[str]:
        return [f"{i}/{p}" for i, s in enumerate(self._sources) for p in s.list_parts()]

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> StatefulSourcePartition[Message, Any]:
        print(f"resume {for_part} {resume_state}", file=sys.stderr, flush=True)
        index, part = for_part.split("/", 1)
        inner = self._sources[int(index)].build_part(step_id, part, resume_state)
        return _Part(inner, self._strip, self._pace_s)


class Built(NamedTuple):
    flow: Dataflow
    #: Where every output but the store's rows goes; its stats count the duplicates
    #: JetStream dropped (a replay after a restart, re-published with the same id).
    sink: JetStreamSink
    accounting: Accounting


def build(
    flow: str, config: NatsConfig, *, idle_s: float, delta_root: str, pace_s: float, batch: int
) -> Built:
    """The flow ``flow`` of the order path between the test's streams (module doc)."""
    from sinks.nats import JetStreamSink
    from sources.nats import JetStreamSource

    acct = Accounting()

    def js(stream: str, subjects: str | list[str]) -> JetStreamSource:
        return JetStreamSource(
            stream, subjects, config, batch_size=batch, idle_timeout_s=idle_s,
            idle_wait=timedelta(milliseconds=1),
        )  # fmt: skip

    sink = JetStreamSink(config, msg_id=digest)
    if flow == "orders":
        from flows.orders import build_flow as orders_flow

        dataflow = orders_flow(
            Inputs([js("ORDERS", "orders.>")], pace_s=pace_s),
            sink,
            reports=Inputs([js("EXEC", "exec.reports.>")], pace_s=pace_s),
            limits=LIMITS,
            accounting=acct,
        )
        return Built(dataflow, sink, acct)
    if flow == "venue":
        from flows.venue import build_flow as venue_flow

        dataflow = venue_flow(
            Inputs([js("VENUE_IN", "vin.>")], strip="vin.", pace_s=pace_s), sink, accounting=acct
        )
        return Built(dataflow, sink, acct)
    if flow == "portfolio":
        from flows.portfolio import build_flow as portfolio_flow

        dataflow = portfolio_flow(
            Inputs([js("PF_IN", "pin.>")], strip="pin.", pace_s=pace_s), sink, accounting=acct
        )
        return Built(dataflow, sink, acct)
    from flows.store import RecordWriterSink
    from flows.store import build_flow as store_flow
    from sinks.orderstore import DeltaOrderWriter, OrderStoreConfig
    from sinks.questdb import RecordWriter

    def make(_worker: int) -> RecordWriter:
        return DeltaOrderWriter(OrderStoreConfig(root=delta_root))

    source = Inputs(
        [
            js("OUT_ORDERS", ["orders.events.>", "risk.decisions.>", "fills.>"]),
            js("PF_OUT", ["positions.>", "pnl.>"]),
        ],
        pace_s=pace_s,
    )
    dataflow = store_flow(source, sink, writer_sink=RecordWriterSink(acct, make), accounting=acct)
    return Built(dataflow, sink, acct)


def report(built: Built, flow: str) -> str:
    """One JSON line: what JetStream dropped as already stored, and the flow's accounting."""
    counts = {
        stage: {"in": c.records_in, "out": c.out, "dead": c.dead_lettered, "dup": c.duplicates}
        for stage in built.accounting.stages()
        for c in [built.accounting.stage(stage)]
    }
    dropped = sum(st.duplicates for st in built.sink.stats.values())
    return _encode({"done": flow, "js_duplicates": dropped, "accounting": counts}).decode()


def committed_epoch(rec_dir: Path) -> int:
    """The highest epoch any partition of a recovery store has committed (0 if none).

    Read straight from Bytewax's SQLite files (as tests/trade2026/test_recovery.py does),
    so a kill can be timed to land after a snapshot of the run being killed.
    """
    best = 0
    for part in sorted(rec_dir.glob("part-*.sqlite3")) if rec_dir.is_dir() else []:
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            row = db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
        best = max(best, row[0] or 0)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    from bytewax.run import cli_main

    from trade2026.recovery import RecoverySettings, run_kwargs

    p = argparse.ArgumentParser(prog="python -m tests.trade2026.orderpath_harness")
    p.add_argument("flow", choices=FLOWS)
    p.add_argument("--nats-url", required=True)
    p.add_argument("--recovery-dir", type=Path, required=True)
    p.add_argument("--epoch-interval", type=float, default=0.1)
    p.add_argument("--idle-timeout", type=float, default=1.0)
    p.add_argument("--delta-root", default="")
    p.add_argument("--pace-ms", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=200)
    args = p.parse_args(argv)
    config = NatsConfig(servers=(args.nats_url,), reconnect_wait_s=0.1)
    built = build(
        args.flow,
        config,
        idle_s=args.idle_timeout,
        delta_root=args.delta_root,
        pace_s=args.pace_ms / 1000,
        batch=args.batch,
    )
    interval = timedelta(seconds=args.epoch_interval)
    settings = RecoverySettings(args.recovery_dir, epoch_interval=interval)
    cli_main(built.flow, **run_kwargs(settings))
    print(report(built, args.flow), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
