"""The demo's order scenario: scripted orders played against replayed market data.

Given a NATS server with the normalize, orders, venue and portfolio flows running, it
replays recorded lines to ``md.raw.*`` and, at each step's market time
(``data/scenarios/demo_orders.jsonl``, see the README beside it), pauses the replay,
sends the step through :class:`~trade2026.orderclient.OrderClient` and waits for the
flow's answer before going on. Then it reports every order's final status and each
account's positions and P&L as the portfolio flow published them.

Why pause the replay at each step
    The simulated venue executes a command against the ticks it has seen when the
    command takes effect. Pausing until the ticks published so far have come back
    through the normalize flow, and sending the order stamped with that market time,
    puts the order at the same point of the market on every run, however fast this
    machine is; the replay runs at full speed between steps.

Why wait on the flows, not only on this process's own subscriptions
    The ticks coming back to the demo say nothing about the orders flow, which reads
    ``md.ticks.>`` on a subscription of its own: risk refuses a market order whose
    reference price is older than ``max_market_data_age_ns``, so an orders flow a few
    thousand ticks behind made the scenario's market orders ``MARKET_DATA_STALE`` now and
    then. Given the flows' :class:`~trade2026.accounting.Accounting` (they run in this
    process), each step also waits until the orders flow's market-data stage
    (``orders_md``) has taken every tick the demo saw. After each step the replay stays
    paused until the venue has answered the command (its order event is no longer
    pending) and every fill of that order has come back, so a fill is published before
    the ticks that follow it. At the end, instead of a fixed settle time, it waits for
    the last position and P&L snapshot of every account that traded: snapshots fall due
    on event-time boundaries (``snapshot_interval_ns``), so the last one is stamped with
    the boundary of the latest tick or fill the account's book was sent. Every wait
    polls with a deadline and fails with what it was waiting for, except that a
    market-data catch-up whose counts stop moving for ``stall_s`` goes on with a
    warning (``ScenarioResult.warnings``): core NATS is at most once, and a tick lost on
    the way would otherwise stall the demo for good.

Limit prices in the script may be relative to the last quote (``price_ref`` and
``price_bps``), so the script keeps meaning the same thing over other recordings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from operators.portfolio import AccountPnl
from schemas.canonical import Fill, OrderEvent, Position, Quote, Tick, TradeTick
from schemas.common import OrderStatus, OrderType, Side, TimeInForce
from schemas.orders import CancelOrder, ReplaceOrder, RiskDecision, SubmitOrder

if TYPE_CHECKING:
    from nats.aio.client import Client

    from sources.recorded import RecordedLine
    from trade2026.accounting import Accounting

DEFAULT_SCENARIO = (
    Path(__file__).resolve().parent.parent / "data" / "scenarios" / "demo_orders.jsonl"
)
_NANOS = 1_000_000_000
log = logging.getLogger(__name__)
#: An order in one of these is waiting for the venue's answer.
_PENDING = frozenset(
    {OrderStatus.PENDING_NEW, OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE}
)


class ScenarioStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    at_s: float
    action: Literal["submit", "cancel", "replace"]
    account: str
    client_order_id: str
    instrument_id: str | None = None
    side: Side | None = None
    order_type: OrderType = OrderType.LIMIT
    quantity: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    price: Decimal | None = None
    price_ref: Literal["bid", "ask", "mid"] | None = None
    price_bps: Decimal = Decimal(0)
    expect: str | None = None
    note: str = ""


class StepOutcome(msgspec.Struct, frozen=True):
    step: ScenarioStep
    approved: bool
    reason: str
    detail: str


class OrderOutcome(msgspec.Struct, frozen=True):
    account: str
    client_order_id: str
    status: str
    cum_qty: Decimal
    avg_px: Decimal | None
    expect: str | None


class ScenarioResult(msgspec.Struct):
    steps: list[StepOutcome]
    orders: list[OrderOutcome]
    positions: list[Position]
    pnl: list[AccountPnl]
    fills: list[Fill]
    replayed: int
    elapsed_s: float
    #: Catch-up waits that ended because the counts stopped moving (core NATS lost
    #: messages) rather than because everything came back.
    warnings: list[str] = msgspec.field(default_factory=list)


def load_scenario(path: str | Path | None = None) -> list[ScenarioStep]:
    """Read a scenario file; a bad line fails with its line number (the demo's input)."""
    file = Path(path) if path else DEFAULT_SCENARIO
    steps: list[ScenarioStep] = []
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"demo orders: scenario {file} not found; hint: see data/scenarios/README.md"
        ) from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            steps.append(msgspec.json.decode(line, type=ScenarioStep))
        except msgspec.DecodeError as exc:
            raise ValueError(
                f"demo orders: {file}:{n}: {exc}; hint: fields are listed in "
                "data/scenarios/README.md"
            ) from exc
    return sorted(steps, key=lambda s: s.at_s)


class _Market:
    """What came back through the normalize flow: tick count, last quotes, market time."""

    def __init__(self) -> None:
        self.ticks = 0
        self.now_ns = 0
        self.quotes: dict[str, Quote] = {}
        #: Per instrument, the latest event time of a quote or trade (what marks a book).
        self.last_mark_ns: dict[str, int] = {}
        self._decode = msgspec.json.Decoder(Tick).decode

    async def on_tick(self, msg: Any) -> None:
        self.ticks += 1
        tick = self._decode(msg.data)
        # Orders are stamped on the receive clock, the one risk judges staleness on.
        self.now_ns = max(self.now_ns, tick.ts_recv)
        if isinstance(tick, Quote | TradeTick):
            inst = tick.instrument_id
            self.last_mark_ns[inst] = max(self.last_mark_ns.get(inst, 0), tick.ts_event)
            if isinstance(tick, Quote):
                self.quotes[inst] = tick


async def _caught_up(
    cond: Callable[[], bool],
    moving: Callable[[], object],
    *,
    stall_s: float,
    timeout_s: float,
    what: Callable[[], str],
    poll_s: float = 0.005,
) -> str | None:
    """Poll ``cond`` until it holds; None then. Market data is on core NATS (at most
    once): a message lost on the way never comes, so once ``moving()`` (the counts) has
    not changed for ``stall_s`` the wait ends and says ``what`` was missing. Past
    ``timeout_s`` with the counts still moving it fails."""
    deadline = time.monotonic() + timeout_s
    last, since = moving(), time.monotonic()
    while not cond():
        now = time.monotonic()
        current = moving()
        if current != last:
            last, since = current, now
        elif now - since >= stall_s:
            return what()
        if now >= deadline:
            raise RuntimeError(f"demo orders: timed out after {timeout_s:g}s: {what()}")
        await asyncio.sleep(poll_s)
    return None


async def _until(
    cond: Callable[[], bool], timeout_s: float, what: Callable[[], str], poll_s: float = 0.005
) -> None:
    """Poll ``cond`` until it holds; past ``timeout_s`` fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"demo orders: timed out after {timeout_s:g}s: {what()}")
        await asyncio.sleep(poll_s)


def _immediate(step: ScenarioStep) -> bool:
    """A submit the venue answers at once and for good: market, IOC or FOK."""
    return step.action == "submit" and (
        step.order_type is OrderType.MARKET
        or step.time_in_force in (TimeInForce.IOC, TimeInForce.FOK)
    )


def _limit_price(step: ScenarioStep, market: _Market, tick_size: Decimal) -> Decimal | None:
    if step.price is not None or step.price_ref is None:
        return step.price
    inst = step.instrument_id or ""
    q = market.quotes.get(inst)
    if q is None:
        raise RuntimeError(
            f"demo orders: no quote for {inst} by {step.at_s}s; hint: start the step later"
        )
    ref = {"bid": q.bid_price, "ask": q.ask_price, "mid": (q.bid_price + q.ask_price) / 2}
    raw = ref[step.price_ref] * (1 + step.price_bps / 10_000)
    return (raw / tick_size).to_integral_value(ROUND_HALF_EVEN) * tick_size


async def play(
    nc: Client,
    lines: Sequence[RecordedLine],
    steps: Sequence[ScenarioStep],
    *,
    accounting: Accounting | None = None,
    snapshot_interval_ns: int | None = None,
    catch_up_timeout_s: float = 60.0,
    stall_s: float = 3.0,
    settle_timeout_s: float = 20.0,
    progress: Callable[[int], None] | None = None,
) -> ScenarioResult:
    """Replay ``lines`` to NATS with ``steps`` sent at their market times; collect results.

    ``accounting`` is the flows' own when they run in this process (``LocalStack``):
    each step then also waits until the orders flow has taken every tick sent so far.
    ``snapshot_interval_ns`` is the portfolio flow's (its default if None). A wait that
    runs past its timeout raises :class:`RuntimeError` naming what it waited for; a
    market-data catch-up stalled for ``stall_s`` (lost ticks) goes on with a warning.
    """
    from flows.orders import MD_STAGE
    from flows.portfolio import PortfolioFlowConfig
    from operators.orders import TERMINAL
    from schemas.instruments import load_instruments
    from sources.recorded import Pacer, replay_to_nats
    from trade2026.orderclient import OrderClient

    interval = snapshot_interval_ns or PortfolioFlowConfig().snapshot_interval_ns
    registry = load_instruments()
    market = _Market()
    latest_pos: dict[tuple[str, str], Position] = {}
    latest_pnl: dict[str, AccountPnl] = {}
    events: dict[tuple[str, str], OrderEvent] = {}
    fills: list[Fill] = []
    filled: dict[tuple[str, str], Decimal] = {}

    dec_pos = msgspec.json.Decoder(Position).decode
    dec_pnl = msgspec.json.Decoder(AccountPnl).decode
    dec_event = msgspec.json.Decoder(OrderEvent).decode
    dec_fill = msgspec.json.Decoder(Fill).decode

    async def on_position(msg: Any) -> None:
        p = dec_pos(msg.data)
        key = (p.account_id, p.instrument_id)
        old = latest_pos.get(key)
        if old is None or p.ts_event >= old.ts_event:
            latest_pos[key] = p

    async def on_pnl(msg: Any) -> None:
        t = dec_pnl(msg.data)
        old = latest_pnl.get(t.account_id)
        if old is None or t.ts_event >= old.ts_event:
            latest_pnl[t.account_id] = t

    async def on_event(msg: Any) -> None:
        e = dec_event(msg.data)
        key = (e.account_id, e.client_order_id)
        old = events.get(key)
        if old is None or e.seq >= old.seq:
            events[key] = e

    async def on_fill(msg: Any) -> None:
        f = dec_fill(msg.data)
        fills.append(f)
        key = (f.account_id, f.client_order_id)
        filled[key] = filled.get(key, Decimal(0)) + f.quantity

    subs = [
        await nc.subscribe("md.ticks.>", cb=market.on_tick, pending_msgs_limit=1_000_000),
        await nc.subscribe("positions.>", cb=on_position),
        await nc.subscribe("pnl.>", cb=on_pnl),
        await nc.subscribe("orders.events.>", cb=on_event),
        await nc.subscribe("fills.>", cb=on_fill),
    ]
    await nc.flush()
    # What the orders flow took before this subscription (its start-up probe) is not
    # part of what it must catch up on.
    md_base = accounting.stage(MD_STAGE).records_in if accounting is not None else 0

    def dead_letters() -> str:
        """The flows' dead letters so far, by stage and reason (a lost event or tick is
        often one of these)."""
        if accounting is None:
            return ""
        parts = [
            f"{st} {dict(accounting.reasons(st)) or accounting.stage(st).dead_lettered}"
            for st in accounting.stages()
            if accounting.stage(st).dead_lettered
        ]
        return "; dead-lettered: " + ", ".join(parts) if parts else ""

    def flow_counts() -> str:
        if accounting is None:
            return ""
        n = accounting.stage("normalize")
        return (
            f" (normalize: {n.records_in:,} in, {n.out:,} out; "
            f"orders flow: {orders_md_taken():,} ticks taken)"
        )

    def orders_md_taken() -> int:
        assert accounting is not None
        return accounting.stage(MD_STAGE).records_in - md_base

    warnings: list[str] = []

    def moving() -> tuple[int, int]:
        return market.ticks, orders_md_taken() if accounting is not None else 0

    async def caught_up(published: int) -> None:
        """Every tick of the ``published`` lines is back here and, if we can see it, in
        the orders flow's market view (risk judges market orders on that view)."""
        missing = await _caught_up(
            lambda: market.ticks >= published,
            moving,
            stall_s=stall_s,
            timeout_s=catch_up_timeout_s,
            what=lambda: (
                f"{market.ticks:,} ticks back from the normalize flow, "
                f"{published:,} lines replayed{flow_counts()}{dead_letters()}"
            ),
        )
        if accounting is not None:
            seen = market.ticks
            missing = missing or await _caught_up(
                lambda: orders_md_taken() >= seen,
                moving,
                stall_s=stall_s,
                timeout_s=catch_up_timeout_s,
                what=lambda: (
                    f"the orders flow took {orders_md_taken():,} of the {seen:,} ticks "
                    f"back here (accounting stage {MD_STAGE})"
                ),
            )
        if missing is not None:
            note = f"market data lost on core NATS, going on: {missing}"
            log.warning("demo orders: %s", note)
            warnings.append(note)

    t0 = time.perf_counter()
    pacer = Pacer(None, time.monotonic_ns, asyncio.sleep)
    outcomes: list[StepOutcome] = []
    start_ns = lines[0].ts_recv if lines else 0
    pos = 0
    immediate: set[tuple[str, str]] = set()

    def unsettled() -> list[str]:
        """Orders still waiting for the venue (a market or IOC/FOK order until it is
        done), or whose fills have not all come back."""
        return [
            describe(k)
            for k, e in sorted(events.items())
            if e.status in _PENDING
            or (k in immediate and e.status not in TERMINAL)
            or filled.get(k, Decimal(0)) != e.cum_qty
        ]

    def describe(key: tuple[str, str]) -> str:
        e = events.get(key)
        state = "no order event" if e is None else f"{e.status.value} (seq {e.seq})"
        got = filled.get(key, Decimal(0))
        cum = e.cum_qty if e is not None else Decimal(0)
        return f"order {key[0]}/{key[1]}: {state}, fills back {got} of cum_qty {cum}"

    async def settled() -> None:
        await _until(
            lambda: not unsettled(),
            settle_timeout_s,
            lambda: (
                "; ".join(unsettled())
                + dead_letters()
                + "; hint: are the venue and orders flows running?"
            ),
        )

    async def replay_until(end: int) -> None:
        nonlocal pos
        if end > pos:
            await replay_to_nats(lines[pos:end], nc, pacer=pacer)
            pos = end
            if progress is not None:
                progress(pos)
        await caught_up(pos)

    def index_after(ts_recv: int) -> int:
        end = pos
        while end < len(lines) and lines[end].ts_recv <= ts_recv:
            end += 1
        return end

    instrument_of = {
        (s.account, s.client_order_id): s.instrument_id
        for s in steps
        if s.action == "submit" and s.instrument_id is not None
    }
    async with OrderClient(nc=nc, timeout_s=5.0) as client:
        for step in steps:
            await replay_until(index_after(start_ns + int(step.at_s * _NANOS)))
            outcome = await _send(client, step, market, registry, instrument_of)
            outcomes.append(outcome)
            if outcome.approved and _immediate(step):
                immediate.add((step.account, step.client_order_id))
    # A command takes effect at the venue on the ticks after it (venue latency), so the
    # last steps need a little more market. Replay one more second, wait until every
    # command was answered and its fills are back, and only then the rest: the last
    # fills reach the portfolio ahead of the ticks that move its snapshots on.
    if lines:
        await replay_until(index_after(lines[min(pos, len(lines) - 1)].ts_recv + _NANOS))
    await settled()
    await replay_until(len(lines))
    await settled()

    def final_boundaries() -> dict[str, int]:
        """Per account that traded, the boundary its last snapshot is stamped with: that
        of the latest tick (quote or trade) or fill its book was sent."""
        latest: dict[str, int] = {}
        for f in fills:
            ts = max(f.ts_event, market.last_mark_ns.get(f.instrument_id, 0))
            latest[f.account_id] = max(latest.get(f.account_id, 0), ts)
        return {acc: ts - ts % interval for acc, ts in latest.items()}

    boundaries = final_boundaries()
    traded = {(f.account_id, f.instrument_id) for f in fills}

    def stale_snapshots() -> list[str]:
        out = []
        for acc, b in sorted(boundaries.items()):
            t = latest_pnl.get(acc)
            if t is None or t.ts_event < b:
                out.append(f"pnl.{acc} at {t.ts_event if t else None}, want {b}")
        for acc, inst in sorted(traded):
            p = latest_pos.get((acc, inst))
            if p is None or p.ts_event < boundaries[acc]:
                at = p.ts_event if p else None
                out.append(f"positions.{acc} {inst} at {at}, want {boundaries[acc]}")
        return out

    await _until(
        lambda: not stale_snapshots(),
        settle_timeout_s,
        lambda: (
            "last portfolio snapshots missing: "
            + "; ".join(stale_snapshots())
            + "; hint: is the portfolio flow running?"
        ),
    )
    for sub in subs:
        await sub.unsubscribe()
    expects = {(s.account, s.client_order_id): s.expect for s in steps if s.action == "submit"}
    orders = [
        OrderOutcome(acc, coid, e.status.value, e.cum_qty, e.avg_px, expects.get((acc, coid)))
        for (acc, coid), e in sorted(events.items())
    ]
    return ScenarioResult(
        steps=outcomes,
        orders=orders,
        positions=[latest_pos[k] for k in sorted(latest_pos)],
        pnl=[latest_pnl[k] for k in sorted(latest_pnl)],
        fills=fills,
        replayed=pos,
        elapsed_s=time.perf_counter() - t0,
        warnings=warnings,
    )


async def _send(
    client: Any,
    step: ScenarioStep,
    market: _Market,
    registry: Any,
    instrument_of: dict[tuple[str, str], str],
) -> StepOutcome:
    ts = market.now_ns
    decision: RiskDecision
    if step.action == "cancel":
        decision = await client.cancel(
            CancelOrder(step.account, step.client_order_id, ts_submit=ts)
        )
    else:
        inst_id = step.instrument_id
        if step.action == "replace" and inst_id is None:
            inst_id = instrument_of.get((step.account, step.client_order_id))
        inst = registry.get(inst_id or "")
        tick = inst.tick_size if inst is not None else Decimal("0.01")
        price = _limit_price(msgspec.structs.replace(step, instrument_id=inst_id), market, tick)
        if step.action == "replace":
            decision = await client.replace(
                ReplaceOrder(
                    step.account,
                    step.client_order_id,
                    quantity=step.quantity,
                    price=price,
                    ts_submit=ts,
                )
            )
        else:
            if inst_id is None or step.side is None or step.quantity is None:
                raise ValueError(
                    f"demo orders: submit {step.client_order_id} lacks instrument_id, side or "
                    "quantity; hint: see data/scenarios/README.md"
                )
            decision = await client.submit(
                SubmitOrder(
                    client_order_id=step.client_order_id,
                    account_id=step.account,
                    instrument_id=inst_id,
                    side=step.side,
                    order_type=step.order_type,
                    quantity=step.quantity,
                    price=price if step.order_type is OrderType.LIMIT else None,
                    time_in_force=step.time_in_force,
                    ts_submit=ts,
                )
            )
    return StepOutcome(step, decision.approved, decision.reason, decision.detail)


def run_order_scenario(
    url: str,
    lines: Sequence[RecordedLine],
    *,
    scenario: str | Path | None = None,
    accounting: Accounting | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScenarioResult:
    """Play the scenario against the flows behind ``url``; blocks until done.

    Pass the flows' ``accounting`` when they run in this process (see :func:`play`).
    """
    from trade2026.natsconf import NatsConfig
    from trade2026.natsloop import NatsLoop

    steps = load_scenario(scenario)
    config = NatsConfig.from_env(servers=(url,), name="trade2026-demo-orders")
    loop = NatsLoop.acquire()
    try:
        nc = loop.connect(config)
        try:
            return loop.run(play(nc, lines, steps, accounting=accounting, progress=progress))
        finally:
            loop.run(nc.close())
    finally:
        NatsLoop.release(loop)


def print_result(result: ScenarioResult, console: Any = None) -> None:
    """Rich tables: what risk decided, how each order ended, and positions and P&L."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    orders = Table(title="orders: risk decision and final status")
    for col in ("account", "order", "risk", "final status", "expected", "filled", "avg px"):
        orders.add_column(col)
    decided = {
        (o.step.account, o.step.client_order_id): o
        for o in result.steps
        if o.step.action == "submit"
    }
    final = {(o.account, o.client_order_id): o for o in result.orders}
    for key, d in decided.items():
        o = final.get(key)
        status = o.status if o is not None else ("DENIED" if not d.approved else "?")
        ok = d.step.expect is None or d.step.expect == status
        orders.add_row(
            key[0],
            key[1],
            "approved" if d.approved else f"denied: {d.reason}",
            status if ok else f"[red]{status}[/red]",
            d.step.expect or "",
            f"{o.cum_qty.normalize():f}" if o is not None else "0",
            f"{o.avg_px:.2f}" if o is not None and o.avg_px is not None else "",
        )
    con.print(orders)
    positions = Table(title="positions (last portfolio snapshot)")
    for col in (
        "account",
        "instrument",
        "quantity",
        "avg open",
        "mark",
        "realized",
        "unrealized",
        "fees",
    ):
        positions.add_column(col, justify="left" if col in ("account", "instrument") else "right")
    for p in result.positions:
        positions.add_row(
            p.account_id,
            p.instrument_id,
            f"{p.quantity.normalize():f}",
            f"{p.avg_open_price:.2f}" if p.avg_open_price is not None else "",
            f"{p.mark_price:.2f}" if p.mark_price is not None else "",
            f"{p.realized_pnl:.4f}",
            f"{p.unrealized_pnl:.4f}",
            f"{p.fees:.4f}",
        )
    con.print(positions)
    pnl = Table(title="P&L per account (USDT)")
    for col in ("account", "realized", "unrealized", "fees", "net", "gross exposure"):
        pnl.add_column(col, justify="left" if col == "account" else "right")
    for t in result.pnl:
        pnl.add_row(
            t.account_id,
            f"{t.realized_pnl:.4f}",
            f"{t.unrealized_pnl:.4f}",
            f"{t.fees:.4f}",
            f"{t.net_pnl:.4f}",
            f"{t.gross_exposure:.2f}",
        )
    con.print(pnl)
    for note in result.warnings:
        con.print(f"[yellow]warning: demo orders: {note}[/yellow]")
    con.print(
        f"{len(result.steps)} scripted steps, {len(result.fills)} fills, "
        f"{result.replayed:,} messages replayed in {result.elapsed_s:.2f}s"
    )


__all__ = [
    "DEFAULT_SCENARIO",
    "ScenarioResult",
    "ScenarioStep",
    "load_scenario",
    "play",
    "print_result",
    "run_order_scenario",
]
