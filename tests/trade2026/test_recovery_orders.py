"""Kill -9 on the order path: orders, venue, portfolio and store lose nothing and repeat nothing.

Recorded ETHUSDT ticks (the normalize flow's output for the sample recording) and a
scripted set of orders (submits, cancels and replaces over three accounts; some denied,
some filled, some partly filled) go through the real flows, each in its own process with
a recovery directory (``tests/trade2026/orderpath_harness.py``), in two rounds:

1. round-1 commands in ``ORDERS`` -> **orders** decides them (venue commands, events);
2. the venue commands, placed among the first half of the ticks at their ``ts_submit``
   -> **venue** -> execution reports -> **orders** (order events, fills);
3. round-2 commands (replaces and cancels of round-1 orders, new orders) -> **orders**,
   then the second half of the ticks with the new venue commands -> **venue** -> **orders**;
4. fills placed among all the ticks at their ``ts_event`` -> **portfolio** (positions, P&L);
5. order events, decisions, fills, positions and P&L -> **store** (local Delta tables).

Each step runs one flow on inputs that are already complete, so its result cannot depend
on how fast another process is, and a step's output is the next step's input. The run is
made twice on fresh servers: once uninterrupted (the reference, each step run to its end
in the test process), once with each step's flow SIGKILLed at seeded random points of its
output and restarted on the same recovery directory until it finishes. Then every stream
the flows wrote, compared as multisets of ``(subject, bytes)``, and every Delta table,
compared as multisets of rows, must be exactly the reference's: no record missing, none
twice.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.normalize import build_flow as normalize_flow
from schemas.canonical import DeadLetter, Fill, OrderEvent, Quote, Tick
from schemas.common import OrderType, Side, TimeInForce
from schemas.orders import CancelOrder, ReplaceOrder, RiskDecision, SubmitOrder
from schemas.transport import MSG_ID_HEADER, RECV_NS_HEADER, Outgoing
from tests.faults import Runner, add_streams, recorded_messages, stream_count
from tests.trade2026 import orderpath_harness as harness
from tests.trade2026.orderpath_harness import STREAMS, committed_epoch
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer

SEED = 20261202
ETH = "ETHUSDT.BINANCE"
N_TICKS = 8_000
ACCOUNTS = ("alice", "bob", "carol")
TABLES = ("order_events", "fills", "risk_decisions", "positions", "account_pnl")
#: Output streams compared with the reference (ORDERS, VENUE_IN and PF_IN are inputs).
OUTPUTS = ("OUT_ORDERS", "VCMD", "EXEC", "PF_OUT", "DLQ")
EPOCH_S = "0.1"
IDLE_S = "1.0"
#: Per flow: source batch size, and the pause after each batch in the killed run, so each
#: step's input takes a few epochs (0.1 s) to go through and a kill lands inside it.
BATCH = {"orders": 5, "venue": 200, "portfolio": 200, "store": 20}
PACE_MS = {"orders": 40, "venue": 15, "portfolio": 15, "store": 30}
_encode = msgspec.json.Encoder().encode
_dead = msgspec.json.Decoder(DeadLetter).decode


# -- the input: ticks and the order script ---------------------------------------------------
@functools.cache
def _ticks() -> list[tuple[str, bytes, Tick]]:
    """The first ``N_TICKS`` canonical ticks of the sample recording, in stream order."""
    out: list[Outgoing] = []
    msgs = [m for _, m in recorded_messages()]
    run_main(normalize_flow(TestingSource(msgs, batch_size=1000), TestingSink(out)))
    decode = msgspec.json.Decoder(Tick).decode
    ticks = [(o.subject, o.data, decode(o.data)) for o in out if o.subject.startswith("md.ticks.")]
    return ticks[:N_TICKS]


def _px(x: Decimal) -> Decimal:
    return (x / Decimal("0.01")).to_integral_value(ROUND_HALF_EVEN) * Decimal("0.01")


Command = SubmitOrder | CancelOrder | ReplaceOrder


@functools.cache
def _script() -> tuple[list[Command], list[Command]]:
    """Round-1 and round-2 commands, each sorted by ``ts_submit``.

    Limit prices are set from the quote in force at the command's time (found here, from
    the ticks), a few basis points through or away from the touch, so some orders take
    liquidity at once, some rest and fill later, and some never fill. Denials on purpose:
    a market order (the orders flow gets no market data here, so risk has no reference and
    refuses it), a quantity over ``max_order_qty`` (20), a notional over 40,000 and an
    account risk does not know.
    """
    rng = random.Random(SEED)
    ticks = _ticks()
    quotes = [(t.ts_event, t) for _, _, t in ticks if isinstance(t, Quote)]
    t0, t_end = ticks[0][2].ts_event, ticks[-1][2].ts_event
    t_mid = ticks[len(ticks) // 2][2].ts_event

    def quote_at(ts: int) -> Quote:
        best = quotes[0][1]
        for at, q in quotes:
            if at > ts:
                break
            best = q
        return best

    def limit(ts: int, side: Side, bps: int) -> Decimal:
        q = quote_at(ts)
        touch = q.ask_price if side is Side.BUY else q.bid_price
        sign = 1 if side is Side.BUY else -1
        return _px(touch * (1 + Decimal(sign * bps) / 10_000))

    def submits(n: int, lo: int, hi: int, tag: str) -> list[SubmitOrder]:
        out = []
        for i in range(n):
            ts = lo + (i + 1) * (hi - lo) // (n + 2)
            account = ACCOUNTS[i % len(ACCOUNTS)]
            side = rng.choice([Side.BUY, Side.SELL])
            qty = Decimal(rng.choice(["0.05", "0.4", "1.5", "4", "12"]))
            bps = rng.choice([-30, -8, -2, 0, 3, 10])
            tif = rng.choice([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC])
            kind = OrderType.LIMIT
            price: Decimal | None = limit(ts, side, bps)
            if i == 5:
                kind, price, tif = OrderType.MARKET, None, TimeInForce.IOC
            if i == 9:
                qty = Decimal(25)
            if i == 13:
                qty, price = Decimal(18), limit(ts, side, 0)  # ~48,000 notional
            if i == 17:
                account = "mallory"
            out.append(
                SubmitOrder(
                    client_order_id=f"{tag}-{i}", account_id=account, instrument_id=ETH,
                    side=side, order_type=kind, quantity=qty, price=price,
                    time_in_force=tif, ts_submit=ts,
                )
            )  # fmt: skip
        return out

    round1: list[Command] = list(submits(36, t0, t_mid, "a"))
    resting = [
        o for o in round1 if isinstance(o, SubmitOrder) and o.time_in_force is TimeInForce.GTC
    ]
    # Passive orders 60 bps behind the touch, still open when round 2 replaces them into
    # the market (they fill), cancels one and leaves one open.
    passive = []
    for j in range(4):
        ts = t0 + (j + 1) * 3_000_000_000
        side = (Side.BUY, Side.SELL)[j % 2]
        passive.append(
            SubmitOrder(
                client_order_id=f"p-{j}", account_id=ACCOUNTS[j % 3], instrument_id=ETH,
                side=side, order_type=OrderType.LIMIT, quantity=Decimal("2"),
                price=limit(ts, side, -60), time_in_force=TimeInForce.GTC, ts_submit=ts,
            )
        )  # fmt: skip
    round1 += passive
    for j, o in enumerate(resting[::4]):
        round1.append(
            CancelOrder(o.account_id, o.client_order_id, f"c1-{j}", o.ts_submit + 2_000_000_000)
        )
    round1.sort(key=lambda c: c.ts_submit)
    round2: list[Command] = list(submits(18, t_mid, t_end, "b"))
    for j, o in enumerate(resting[1::3]):
        ts = t_mid + 500_000_000 + j * 1_000_000_000
        assert isinstance(o, SubmitOrder)
        if j % 2:
            round2.append(CancelOrder(o.account_id, o.client_order_id, f"c2-{j}", ts))
        else:  # into the market, and larger: fills, or is refused if no longer open
            round2.append(
                ReplaceOrder(
                    o.account_id, o.client_order_id, o.quantity + 1, limit(ts, o.side, 5),
                    f"r2-{j}", ts,
                )
            )  # fmt: skip
    for j, o in enumerate(passive[:3]):
        ts = t_mid + 5_000_000_000 * (j + 1)
        if j == 2:
            round2.append(CancelOrder(o.account_id, o.client_order_id, "pc-2", ts))
        else:
            round2.append(
                ReplaceOrder(
                    o.account_id, o.client_order_id, Decimal(3), limit(ts, o.side, 5), f"pr-{j}", ts
                )
            )
    round2.sort(key=lambda c: c.ts_submit)
    return round1, round2


_SUBJECT = {
    SubmitOrder: "orders.submit",
    CancelOrder: "orders.cancel",
    ReplaceOrder: "orders.replace",
}


# -- NATS helpers that keep headers --------------------------------------------------------------
Item = tuple[str, bytes, dict[str, str]]


def _publish(url: str, items: list[tuple[str, str, bytes, dict[str, str]]]) -> None:
    """(msg id, subject, data, headers) to JetStream, every ack awaited, none a duplicate."""

    async def go() -> int:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=4000)
        futures = [
            await js.publish_async(s, d, headers={**h, MSG_ID_HEADER: i}) for i, s, d, h in items
        ]
        acks = await asyncio.gather(*futures)
        await nc.close()
        return sum(1 for a in acks if not a.duplicate)

    assert asyncio.run(go()) == len(items)


def _read(url: str, stream: str) -> list[Item]:
    """Every message of a stream: (subject, data, headers without the msg id), in order."""

    async def go() -> list[Item]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        total = int((await js.stream_info(stream)).state.messages)
        out: list[Item] = []
        done = asyncio.Event()

        async def cb(msg: Any) -> None:
            headers = {k: v for k, v in (msg.headers or {}).items() if k != MSG_ID_HEADER}
            out.append((msg.subject, msg.data, headers))
            if len(out) >= total:
                done.set()

        if total:
            sub = await js.subscribe(
                ">", stream=stream, cb=cb, ordered_consumer=True, pending_msgs_limit=-1
            )
            await asyncio.wait_for(done.wait(), 30)
            await sub.unsubscribe()
        await nc.close()
        return out

    return asyncio.run(go())


def _interleave(
    ticks: list[tuple[str, bytes, Tick]], others: list[tuple[int, Item]], prefix: str, tag: str
) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """Ticks in stream order, each other item just before the first tick later than it.

    Msg ids are positions (``<tag>:<n>``): each stream is built once per run, and both
    runs build it from step outputs the test compares anyway.
    """
    pending = sorted(others, key=lambda x: x[0])
    out: list[tuple[str, str, bytes, dict[str, str]]] = []
    k = 0

    def add(subject: str, data: bytes, headers: dict[str, str]) -> None:
        out.append((f"{tag}:{len(out)}", prefix + subject, data, headers))

    for subject, data, tick in ticks:
        while k < len(pending) and pending[k][0] < tick.ts_event:
            add(*pending[k][1])
            k += 1
        add(subject, data, {RECV_NS_HEADER: str(tick.ts_recv)})
    for _, item in pending[k:]:
        add(*item)
    return out


# -- running one step ----------------------------------------------------------------------------
@dataclass
class Plan:
    """How the killed run kills: ``kills[step]`` kills at the given fractions of its output."""

    kills: dict[int, list[float]] = field(default_factory=dict)
    #: What happened: (step, flow, progress at the kill).
    log: list[tuple[int, str, int]] = field(default_factory=list)


class OrderPath:
    """One order path on one nats-server: the streams, a recovery dir per flow, the steps."""

    def __init__(self, url: str, tmp: Path, plan: Plan | None, step_sizes: list[int] | None):
        self.url = url
        self.tmp = tmp
        self.plan = plan
        self.step_sizes = step_sizes
        self.sizes: list[int] = []
        self.delta_root = tmp / "lake"
        self.runners: dict[str, Runner] = {}
        #: Per flow, the index (in its log) of each start that followed a kill.
        self.restarts: dict[str, list[int]] = {}
        add_streams(url, STREAMS)

    def _runner(self, flow: str) -> Runner:
        if flow not in self.runners:
            args = [
                flow, "--nats-url", self.url, "--recovery-dir", str(self.tmp / "rec" / flow),
                "--epoch-interval", EPOCH_S, "--idle-timeout", IDLE_S,
                "--delta-root", str(self.delta_root), "--batch", str(BATCH[flow]),
            ]  # fmt: skip
            if self.plan is not None:
                args += ["--pace-ms", str(PACE_MS[flow])]
            r = Runner(args, self.tmp / f"{flow}.log")
            r.args = [r.args[0], "-m", "tests.trade2026.orderpath_harness", *args]
            self.runners[flow] = r
        return self.runners[flow]

    def progress(self, flow: str) -> int:
        if flow == "store":
            logs = (self.delta_root / "orders" / t / "_delta_log" for t in TABLES)
            return sum(len(list(d.glob("*.json"))) for d in logs if d.is_dir())
        streams = {
            "orders": ("OUT_ORDERS", "VCMD"),
            "venue": ("EXEC",),
            "portfolio": ("PF_OUT",),
        }[flow]
        return sum(stream_count(self.url, s) for s in streams)

    def step(self, flow: str) -> None:
        """Run ``flow`` until its input is idle; in the killed run, kill it on the way."""
        index = len(self.sizes)
        runner = self._runner(flow)
        rec = self.tmp / "rec" / flow
        start = self.progress(flow)
        if self.plan is None:
            self._in_process(flow)
            self.sizes.append(self.progress(flow) - start)
            return
        fractions = self.plan.kills.get(index, [])
        for frac in fractions:
            assert self.step_sizes is not None and self.plan is not None
            target = start + max(1, int(frac * self.step_sizes[index]))
            before = committed_epoch(rec)
            runner.start()
            _wait(lambda t=target: self.progress(flow) >= t, runner, f"{flow} output {target}")  # type: ignore[misc]
            # ... and after a snapshot of this run's own, so the restart resumes from it.
            _wait(lambda b=before: committed_epoch(rec) > b, runner, f"{flow} snapshot")  # type: ignore[misc]
            runner.kill9()
            self.plan.log.append((index, flow, self.progress(flow) - start))
            self.restarts.setdefault(flow, []).append(_starts(runner.log))
        runner.start()
        rc = runner.wait(120)
        assert rc == 0, f"{flow} exited {rc}:\n{runner.log.read_text()[-3000:]}"
        self.sizes.append(self.progress(flow) - start)

    def _in_process(self, flow: str) -> None:
        """The reference: the same flow, built by the same harness, run here to the end.

        With recovery like the killed run: each step is a new run of a flow that resumes
        where its previous step left off (a run without it would read every input stream
        from the start again, racing the old orders against the new reports).
        """
        from datetime import timedelta

        from trade2026.recovery import RecoverySettings, run_kwargs

        config = NatsConfig(servers=(self.url,))
        built = harness.build(
            flow, config, idle_s=float(IDLE_S), delta_root=str(self.delta_root), pace_s=0.0,
            batch=BATCH[flow],
        )  # fmt: skip
        interval = timedelta(seconds=float(EPOCH_S))
        settings = RecoverySettings(self.tmp / "rec" / flow, epoch_interval=interval)
        run_main(built.flow, **run_kwargs(settings))

    def run(self) -> None:
        round1, round2 = _script()
        ticks = _ticks()
        half = len(ticks) // 2

        def publish_commands(cmds: list[Command], tag: str) -> None:
            _publish(
                self.url,
                [
                    (
                        f"{tag}-{i}",
                        _SUBJECT[type(c)],
                        _encode(c),
                        {RECV_NS_HEADER: str(c.ts_submit)},
                    )
                    for i, c in enumerate(cmds)
                ],
            )

        def to_venue(seg: list[tuple[str, bytes, Tick]], skip: int) -> int:
            cmds = _read(self.url, "VCMD")
            decode = msgspec.json.Decoder(SubmitOrder | CancelOrder | ReplaceOrder).decode
            timed = [(decode(d).ts_submit, (s, d, h)) for s, d, h in cmds[skip:]]
            _publish(self.url, _interleave(seg, timed, "vin.", f"vin{skip}"))
            return len(cmds)

        publish_commands(round1, "r1")
        self.step("orders")
        used = to_venue(ticks[:half], 0)
        self.step("venue")
        self.step("orders")
        publish_commands(round2, "r2")
        self.step("orders")
        to_venue(ticks[half:], used)
        self.step("venue")
        self.step("orders")
        fill = msgspec.json.Decoder(Fill).decode
        fills: list[tuple[int, Item]] = [
            (fill(d).ts_event, (s, d, {})) for s, d, _ in _read(self.url, "OUT_ORDERS")
            if s.startswith("fills.")
        ]  # fmt: skip
        _publish(self.url, _interleave(ticks, fills, "pin.", "pin"))
        self.step("portfolio")
        self.step("store")

    def stop(self) -> None:
        for r in self.runners.values():
            r.stop()

    def outputs(self) -> dict[str, Counter[tuple[str, bytes]]]:
        """Each output stream as a multiset of (subject, bytes).

        A dead letter's ``ts_recv`` is the wall clock of the run that made it (the inputs
        carry no receive-time header; see ``orderpath_harness.digest``), so it is zeroed.
        """
        out = {s: Counter((subj, d) for subj, d, _ in _read(self.url, s)) for s in OUTPUTS}
        out["DLQ"] = Counter(
            {
                (s, _encode(msgspec.structs.replace(_dead(d), ts_recv=0))): n
                for (s, d), n in out["DLQ"].items()
            }
        )
        return out

    def tables(self) -> dict[str, Counter[tuple[Any, ...]]]:
        from deltalake import DeltaTable

        from sinks.orderstore import order_table_uri

        out: dict[str, Counter[tuple[Any, ...]]] = {}
        for t in TABLES:
            rows = (
                DeltaTable(order_table_uri(str(self.delta_root), t)).to_pyarrow_table().to_pylist()
            )
            out[t] = Counter(tuple(sorted(r.items())) for r in rows)
        return out


def _starts(log: Path) -> int:
    """How many times the runner has started the flow so far (its log marks each start)."""
    return log.read_text().count("--- start") if log.exists() else 0


def _wait(pred: Callable[[], bool], runner: Runner, what: str, timeout_s: float = 60) -> None:
    runner.wait_until(pred, what, timeout_s)


STEPS = ("orders", "venue", "orders", "orders", "venue", "orders", "portfolio", "store")
#: Kills per step: the orders flow while it decides round 1 and while it takes each
#: round's execution reports, the venue in each round, the portfolio twice, the store once.
KILLS = (1, 1, 1, 0, 1, 1, 2, 1)


@pytest.fixture
def paths(
    nats_server_factory: Callable[..., LocalNatsServer], tmp_path: Path
) -> Iterator[Callable[[str, Plan | None, list[int] | None], OrderPath]]:
    made: list[OrderPath] = []

    def make(name: str, plan: Plan | None, sizes: list[int] | None) -> OrderPath:
        (tmp_path / name).mkdir()
        p = OrderPath(nats_server_factory().url, tmp_path / name, plan, sizes)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def test_order_path_killed_at_random_points_equals_an_uninterrupted_run(
    paths: Callable[[str, Plan | None, list[int] | None], OrderPath],
) -> None:
    reference = paths("reference", None, None)
    reference.run()
    want, want_rows = reference.outputs(), reference.tables()
    _sanity(want, want_rows)

    # Every step is killed once or twice at seeded random fractions of its output, and
    # the orders flow in each of its steps.
    rng = random.Random(SEED)
    plan = Plan()
    for i in range(len(STEPS)):
        plan.kills[i] = sorted(rng.uniform(0.1, 0.8) for _ in range(KILLS[i]))
    killed = paths("killed", plan, reference.sizes)
    killed.run()
    got, got_rows = killed.outputs(), killed.tables()

    for stream in OUTPUTS:
        missing = want[stream] - got[stream]
        extra = got[stream] - want[stream]
        assert not missing and not extra, (
            f"{stream}: {sum(missing.values())} missing, {sum(extra.values())} extra; "
            f"kills {plan.log}; missing e.g. {sorted(missing)[:3]}; extra e.g. {sorted(extra)[:3]}"
        )
    for table in TABLES:
        missing = want_rows[table] - got_rows[table]
        extra = got_rows[table] - want_rows[table]
        assert not missing and not extra, (
            f"{table}: {sum(missing.values())} rows missing, {sum(extra.values())} extra; "
            f"kills {plan.log}"
        )
    # Every planned kill happened, every restart after a kill resumed from a snapshot,
    # and replays did happen: outputs re-published after a restart were dropped by
    # JetStream (same Nats-Msg-Id) and re-written rows skipped by the Delta MERGE.
    assert len(plan.log) == sum(KILLS)
    assert {f for _, f, _ in plan.log} == {"orders", "venue", "portfolio", "store"}
    dropped = 0
    for flow, runner in killed.runners.items():
        runs = runner.log.read_text().split("--- start")[1:]
        for i in killed.restarts.get(flow, []):
            states = re.findall(r"^resume \S+ (\S+)$", runs[i], flags=re.M)
            assert states and any(s != "None" for s in states), (flow, i, runs[i][-2000:])
        for line in re.findall(r'^\{"done".*$', runner.log.read_text(), flags=re.M):
            done = msgspec.json.decode(line)
            dropped += done["js_duplicates"]
            dropped += sum(c["dup"] for st, c in done["accounting"].items() if st == "store")
    print(f"kills {plan.log}; replayed records dropped as duplicates: {dropped}")
    assert dropped > 0, "no kill interrupted anything that had to be replayed"


def _sanity(
    outputs: dict[str, Counter[tuple[str, bytes]]], rows: dict[str, Counter[tuple[Any, ...]]]
) -> None:
    """The reference exercises what the test claims to: checked from the records themselves."""
    events = [
        msgspec.json.decode(d, type=OrderEvent)
        for s, d in outputs["OUT_ORDERS"]
        if s.startswith("orders.events.")
    ]
    kinds = Counter(e.event for e in events)
    for kind in ("DENIED", "CANCELED", "REPLACED", "FILLED", "PARTIALLY_FILLED"):
        assert kinds[kind] > 0, f"the script produced no {kind} event: {kinds}"
    decisions = [
        msgspec.json.decode(d, type=RiskDecision)
        for s, d in outputs["OUT_ORDERS"]
        if s.startswith("risk.decisions.")
    ]
    reasons = Counter(d.reason for d in decisions if not d.approved)
    assert len(reasons) >= 3, reasons
    # Every record the streams carry is one row or one store dead letter: nothing
    # collapsed by the tables' keys.
    refused = Counter(
        msgspec.json.decode(d, type=DeadLetter).subject.split(".")[0]
        for s, d in outputs["DLQ"]
        if s == "dlq.store"
    )
    per_table = {
        "order_events": "orders.events.", "fills": "fills.", "risk_decisions": "risk.decisions.",
        "positions": "positions.", "account_pnl": "pnl.",
    }  # fmt: skip
    for table, prefix in per_table.items():
        stream = "PF_OUT" if table in ("positions", "account_pnl") else "OUT_ORDERS"
        n = sum(c for (s, _), c in outputs[stream].items() if s.startswith(prefix))
        stored = sum(rows[table].values())
        assert n > 0 and stored + refused[prefix.split(".")[0]] == n, (table, n, stored, refused)
    # The only dead letters are the store's refusals of unrepresentable averages (see
    # test_average_price_fits_the_order_store).
    assert {s for s, _ in outputs["DLQ"]} <= {"dlq.store"}


def test_average_price_fits_the_order_store() -> None:
    from operators.orders import OrderManager
    from schemas.orders import ExecType, ExecutionReport, RiskAction
    from sinks.orderstore import order_store_registry

    order = SubmitOrder(
        client_order_id="x", account_id="acct", instrument_id=ETH, side=Side.BUY,
        order_type=OrderType.LIMIT, quantity=Decimal(3), price=Decimal("100.01"),
        ts_submit=1_767_225_600_000_000_000,
    )  # fmt: skip
    mgr = OrderManager("acct")
    ok = RiskDecision("acct", "x", RiskAction.SUBMIT, True, "APPROVED", "", "v", "i", 1)
    mgr.on_submit(order, ok)

    def report(n: int, exec_type: ExecType, **kw: Any) -> list[Any]:
        return mgr.on_execution_report(
            ExecutionReport(
                venue="V", exec_id=f"e{n}", exec_type=exec_type, ts_event=order.ts_submit + n,
                venue_order_id="V1", client_order_id="x", **kw,
            )
        )  # fmt: skip

    report(1, ExecType.NEW)
    report(2, ExecType.TRADE, last_qty=Decimal(1), last_px=Decimal("100.00"))
    # (100.00 + 2 * 100.01) / 3 = 100.00666...: no exact decimal has it.
    (event,) = report(3, ExecType.TRADE, last_qty=Decimal(2), last_px=Decimal("100.01"))
    assert isinstance(event, OrderEvent) and event.event == "FILLED"
    spec = order_store_registry().for_record(event)
    spec.split(event, "decimal")  # raised RowError(DECIMAL_OUT_OF_RANGE) before rounding
    assert event.avg_px == Decimal("100.006666666666666667")


def test_portfolio_output_does_not_depend_on_batch_boundaries() -> None:
    """A restart cuts the input into other batches, so the output must not depend on them.

    Before the fix the fan-out step let a later quote stand in for an earlier one across a
    trade that opened a new snapshot interval (tick times are not monotonic): with the
    kill test's fills over 12,000 ticks, 238 of 634 snapshots changed with the batch size.
    """
    from flows.portfolio import build_flow as portfolio_flow
    from schemas.common import Liquidity
    from schemas.transport import Message

    ticks = _ticks()[:3000]
    rng = random.Random(SEED)
    fills: list[tuple[int, Item]] = []
    for i in range(40):
        _, _, at = ticks[rng.randrange(len(ticks))]
        px = at.bid_price if isinstance(at, Quote) else getattr(at, "price", Decimal(2683))
        fill = Fill(
            exec_id=f"x{i}", order_id=f"o{i}", client_order_id=f"o{i}",
            account_id=ACCOUNTS[i % 3], instrument_id=ETH, side=rng.choice(list(Side)),
            quantity=Decimal(rng.choice(["0.1", "1", "2.5"])), price=px, fee=Decimal("0.01"),
            fee_currency="USDT", liquidity=Liquidity.TAKER, ts_event=at.ts_event,
        )  # fmt: skip
        fills.append((fill.ts_event, (f"fills.{fill.account_id}", _encode(fill), {})))
    msgs = [Message(s, d, 0) for _, s, d, _ in _interleave(ticks, fills, "", "x")]
    runs = []
    for batch in (1, 7, 100, len(msgs)):
        out: list[Outgoing] = []
        run_main(portfolio_flow(TestingSource(msgs, batch_size=batch), TestingSink(out)))
        runs.append(Counter((o.subject, o.data) for o in out))
    assert sum(runs[0].values()) > 100
    assert all(r == runs[0] for r in runs[1:]), [sum((r - runs[0]).values()) for r in runs]
