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

Limit prices in the script may be relative to the last quote (``price_ref`` and
``price_bps``), so the script keeps meaning the same thing over other recordings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from operators.portfolio import AccountPnl
from schemas.canonical import Fill, OrderEvent, Position, Quote, Tick
from schemas.common import OrderType, Side, TimeInForce
from schemas.orders import CancelOrder, ReplaceOrder, RiskDecision, SubmitOrder

if TYPE_CHECKING:
    from nats.aio.client import Client

    from sources.recorded import RecordedLine

DEFAULT_SCENARIO = (
    Path(__file__).resolve().parent.parent / "data" / "scenarios" / "demo_orders.jsonl"
)
_NANOS = 1_000_000_000


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
        self._decode = msgspec.json.Decoder(Tick).decode

    async def on_tick(self, msg: Any) -> None:
        self.ticks += 1
        tick = self._decode(msg.data)
        # Orders are stamped on the receive clock, the one risk judges staleness on.
        self.now_ns = max(self.now_ns, tick.ts_recv)
        if isinstance(tick, Quote):
            self.quotes[tick.instrument_id] = tick


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
    settle_s: float = 0.5,
    catch_up_timeout_s: float = 5.0,
    progress: Callable[[int], None] | None = None,
) -> ScenarioResult:
    """Replay ``lines`` to NATS with ``steps`` sent at their market times; collect results."""
    from schemas.instruments import load_instruments
    from sources.recorded import Pacer, replay_to_nats
    from trade2026.orderclient import OrderClient

    registry = load_instruments()
    market = _Market()
    latest_pos: dict[tuple[str, str], Position] = {}
    latest_pnl: dict[str, AccountPnl] = {}
    events: dict[tuple[str, str], OrderEvent] = {}
    fills: list[Fill] = []

    dec_pos = msgspec.json.Decoder(Position).decode
    dec_pnl = msgspec.json.Decoder(AccountPnl).decode
    dec_event = msgspec.json.Decoder(OrderEvent).decode
    dec_fill = msgspec.json.Decoder(Fill).decode

    async def on_position(msg: Any) -> None:
        p = dec_pos(msg.data)
        latest_pos[(p.account_id, p.instrument_id)] = p

    async def on_pnl(msg: Any) -> None:
        t = dec_pnl(msg.data)
        latest_pnl[t.account_id] = t

    async def on_event(msg: Any) -> None:
        e = dec_event(msg.data)
        key = (e.account_id, e.client_order_id)
        old = events.get(key)
        if old is None or e.seq >= old.seq:
            events[key] = e

    async def on_fill(msg: Any) -> None:
        fills.append(dec_fill(msg.data))

    subs = [
        await nc.subscribe("md.ticks.>", cb=market.on_tick, pending_msgs_limit=1_000_000),
        await nc.subscribe("positions.>", cb=on_position),
        await nc.subscribe("pnl.>", cb=on_pnl),
        await nc.subscribe("orders.events.>", cb=on_event),
        await nc.subscribe("fills.>", cb=on_fill),
    ]
    await nc.flush()

    async def caught_up(published: int) -> None:
        deadline = time.monotonic() + catch_up_timeout_s
        while market.ticks < published and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    t0 = time.perf_counter()
    pacer = Pacer(None, time.monotonic_ns, asyncio.sleep)
    outcomes: list[StepOutcome] = []
    start_ns = lines[0].ts_recv if lines else 0
    pos = 0
    instrument_of = {
        (s.account, s.client_order_id): s.instrument_id
        for s in steps
        if s.action == "submit" and s.instrument_id is not None
    }
    async with OrderClient(nc=nc, timeout_s=5.0) as client:
        for step in steps:
            until = start_ns + int(step.at_s * _NANOS)
            end = pos
            while end < len(lines) and lines[end].ts_recv <= until:
                end += 1
            if end > pos:
                await replay_to_nats(lines[pos:end], nc, pacer=pacer)
                pos = end
                if progress is not None:
                    progress(pos)
            await caught_up(pos)
            outcomes.append(await _send(client, step, market, registry, instrument_of))
        if pos < len(lines):
            await replay_to_nats(lines[pos:], nc, pacer=pacer)
            pos = len(lines)
            if progress is not None:
                progress(pos)
        await caught_up(pos)
        await asyncio.sleep(settle_s)
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
    progress: Callable[[int], None] | None = None,
) -> ScenarioResult:
    """Play the scenario against the flows behind ``url``; blocks until done."""
    from trade2026.natsconf import NatsConfig
    from trade2026.natsloop import NatsLoop

    steps = load_scenario(scenario)
    config = NatsConfig.from_env(servers=(url,), name="trade2026-demo-orders")
    loop = NatsLoop.acquire()
    try:
        nc = loop.connect(config)
        try:
            return loop.run(play(nc, lines, steps, progress=progress))
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
