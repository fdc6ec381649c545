"""The order path through real NATS: submit-to-ack and submit-to-fill latency, throughput.

Set-up: a private nats-server with JetStream, the orders flow (flows/orders.py) and the
simulated venue (flows/venue.py) as child processes (one Bytewax worker each by
default), exactly as ``trade2026 run orders|venue`` wires them but without recovery
snapshots. Risk limits are a generous bench file (every check on, nothing binding), so
the measured path is the approve path; eight accounts share the load.

Measurements (``trade2026 bench orders``):

* **submit-to-ack at 1,000 and 5,000 orders/s offered**, open loop. A pacer thread wakes
  at each order's *scheduled* send time (``time.sleep`` is precise to tens of µs, unlike
  asyncio timers, which round to whole milliseconds) and hands the due orders to the
  event loop. Latency is measured from the scheduled time to the reply's arrival, so a
  stall in the flow cannot hide by delaying the sends behind it (coordinated omission);
  the client's own send lag (scheduled -> actually written) is reported separately.
* **submit-to-fill**: marketable limit orders at a low rate while quotes tick every 2 ms;
  from the scheduled send to the first ``Fill`` on ``fills.<account>``. It includes the
  simulated venue's latency in event time (``venue.toml``: 5 ms for BINANCE) and waiting
  for the next tick, so it is dominated by the simulation, not by the platform.
* **maximum sustained orders/s**: closed loop with a bounded number in flight; the rate
  between 10 % and 90 % of the replies (steady state, no start-up or drain).
* **risk check per order, in process**: :func:`benchmarks.risk_check.measure`.
* **the quality layer's cost**: the flow runs as ``trade2026 run orders`` does, with the
  per-record rules on order events, fills and new venue orders (their batch suites run
  in the store flow); the ack and max-rate phases then run again, each on a fresh
  server, with the batch suites in this process too (``with_batch_suites``, as before
  they moved) and with no quality layer (``without_quality``). The same comparison in
  process, without NATS, is :func:`per_order_cpu` (CPU per order, arms alternating,
  medians): steadier than the NATS phases on a shared machine.

The measuring client speaks the documented protocol directly (one wildcard inbox,
``T26-Reply-To``, no task or future per order) rather than through
:class:`trade2026.orderclient.OrderClient`, so that its own per-request overhead stays
out of the numbers. Everything shares this machine's cores: the client, nats-server and
both flows; the numbers are for that whole arrangement, medians and percentiles of one run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import print_table, write_result

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {
    "p99_ms_at_1000": 2.0,
    "p99_ms_at_5000": 5.0,
    "sustained_orders_per_s": 20_000,
    "risk_check_us": 20.0,
}
ACCOUNTS = tuple(f"bench-{i}" for i in range(8))
INSTRUMENT = "BTCUSDT.BINANCE"

_BENCH_LIMITS = """\
# Written by benchmarks/orders.py: every check enabled, none binding at bench rates.
version = "bench-orders"
default_account = "bench-0"
require_declared_accounts = true

[defaults]
max_order_qty = "100"
max_order_notional = "10000000"
max_position_qty = "1000000"
max_gross_exposure = "1000000000000"
max_open_orders = 10000000
rate_window_ns = 1_000_000_000
max_orders_per_window = 10000000
max_cancels_per_window = 10000000
daily_loss_limit = "100000000"
price_band_bps = "500"
max_market_data_age_ns = 60_000_000_000
"""

_FLOW_CODE = """\
import sys
from bytewax.run import cli_main
from trade2026.flowregistry import RunContext
from trade2026.natsconf import NatsConfig
from flows.{name} import production_flow
cli_main(
    production_flow(RunContext(nats=NatsConfig.from_env()){kwargs}),
    workers_per_process={workers},
)
"""


class BenchSetupError(RuntimeError):
    """The benchmark cannot run here (a flow is missing or never answers)."""


def _check_flows() -> None:
    import importlib.util

    for name in ("orders", "venue"):
        if importlib.util.find_spec(f"flows.{name}") is None:
            raise BenchSetupError(
                f"bench orders: flows/{name}.py is missing; hint: the order path flows "
                "(issue 3) must be in the checkout before this benchmark can drive them"
            )
        import importlib

        if not hasattr(importlib.import_module(f"flows.{name}"), "production_flow"):
            raise BenchSetupError(
                f"bench orders: flows/{name}.py has no production_flow(ctx); "
                "hint: it is what `trade2026 run` launches"
            )


def _start_flow(
    name: str, url: str, workers: int, env: dict[str, str], log: Path, kwargs: str = ""
) -> Any:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _FLOW_CODE.format(name=name, workers=workers, kwargs=kwargs)],
            env={**env, "NATS_URL": url},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _ms(ns: list[int]) -> dict[str, float | int]:
    if not ns:
        return {"n": 0}
    s = sorted(ns)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] / 1e6, 3)

    return {
        "n": len(s),
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "p999_ms": q(0.999),
        "max_ms": round(s[-1] / 1e6, 3),
        "mean_ms": round(statistics.fmean(s) / 1e6, 3),
    }


class _Driver:
    """One NATS connection sending SubmitOrders and timing the replies and fills."""

    def __init__(self, url: str, run_tag: str) -> None:
        self.url = url
        self.tag = run_tag
        self.nc: Any = None
        self.prefix = ""
        self.base = 0  # token of the current phase's first order
        self.sched: list[int] = []
        self.sent: list[int] = []
        self.done: list[int] = []
        self.fill: list[int] = []
        self.approved = 0
        self.denied_reasons: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.completed = 0
        self.room: asyncio.Event | None = None
        self.window = 0
        self.next_token = 0

    async def connect(self) -> None:
        import nats

        self.nc = await nats.connect(self.url, pending_size=64 * 1024 * 1024)
        self.prefix = self.nc.new_inbox()
        await self.nc.subscribe(self.prefix + ".*", cb=self._on_reply, pending_msgs_limit=-1)
        await self.nc.subscribe("fills.>", cb=self._on_fill, pending_msgs_limit=-1)
        await self.nc.flush()

    async def _on_reply(self, msg: Any) -> None:
        now = time.perf_counter_ns()
        k = int(msg.subject[len(self.prefix) + 1 :]) - self.base
        if not msg.data:  # a server status (e.g. 503 no responders), not the flow's answer
            status = f"STATUS_{(msg.headers or {}).get('Status', '?')}"
            self.statuses[status] = self.statuses.get(status, 0) + 1
            return
        if 0 <= k < len(self.done) and not self.done[k]:
            self.done[k] = now
            self.completed += 1
            if b'"approved":true' in msg.data:
                self.approved += 1
            else:
                import msgspec

                reason = str(msgspec.json.decode(msg.data).get("reason", "?"))
                self.denied_reasons[reason] = self.denied_reasons.get(reason, 0) + 1
            if self.room is not None and self.next_token - self.base - self.completed < (
                self.window // 2
            ):
                self.room.set()

    async def _on_fill(self, msg: Any) -> None:
        now = time.perf_counter_ns()
        marker = b'"client_order_id":"' + self.tag.encode() + b"-"
        i = msg.data.find(marker)
        if i < 0:
            return
        j = msg.data.index(b'"', i + len(marker))
        k = int(msg.data[i + len(marker) : j]) - self.base
        if 0 <= k < len(self.fill) and not self.fill[k]:
            self.fill[k] = now

    def _reset(self, n: int) -> None:
        self.base = self.next_token
        self.next_token += n
        self.sched = [0] * n
        self.sent = [0] * n
        self.done = [0] * n
        self.fill = [0] * n
        self.approved = 0
        self.completed = 0
        self.denied_reasons = {}
        self.statuses = {}

    def _order(self, k: int, ts_submit: int, price: str, side: str, tif: str = "GTC") -> bytes:
        token = self.base + k
        account = ACCOUNTS[token % len(ACCOUNTS)]
        return (
            f'{{"kind":"submit_order","client_order_id":"{self.tag}-{token}",'
            f'"account_id":"{account}","instrument_id":"{INSTRUMENT}","side":"{side}",'
            f'"order_type":"LIMIT","quantity":"0.001","price":"{price}",'
            f'"time_in_force":"{tif}","ts_submit":{ts_submit}}}'
        ).encode()

    async def _publish(self, k: int, payload: bytes) -> None:
        reply = f"{self.prefix}.{self.base + k}"
        self.sent[k] = time.perf_counter_ns()
        await self.nc.publish(
            "orders.submit", payload, reply=reply, headers={"T26-Reply-To": reply}
        )

    async def _send_range(self, i: int, j: int, wall0: int, t0: int, fill: bool) -> None:
        for k in range(i, j):
            ts = wall0 + (self.sched[k] - t0)
            if fill:
                # Marketable: buy at the ask, sell at the bid (quotes 44999.99 / 45000.00).
                side, price = ("BUY", "45000.00") if k % 2 == 0 else ("SELL", "44999.99")
            else:
                # Inside the 5 % band but not marketable: acks measure the approve path
                # and nothing fills.
                side, price = ("BUY", "44000.00") if k % 2 == 0 else ("SELL", "46000.00")
            await self._publish(k, self._order(k, ts, price, side))

    async def open_loop(self, rate: float, n: int, *, fill: bool = False) -> dict[str, Any]:
        """Send ``n`` orders at ``rate``/s on schedule; wait for the stragglers."""
        self._reset(n)
        loop = asyncio.get_running_loop()
        interval = 1e9 / rate
        t0 = time.perf_counter_ns() + 20_000_000
        wall0 = time.time_ns() + 20_000_000
        self.sched = [t0 + int(k * interval) for k in range(n)]

        def pace() -> None:
            i = 0
            while i < n:
                wait = self.sched[i] - time.perf_counter_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
                now = time.perf_counter_ns()
                j = i
                while j < n and self.sched[j] <= now:
                    j += 1
                asyncio.run_coroutine_threadsafe(self._send_range(i, j, wall0, t0, fill), loop)
                i = j

        pacer = threading.Thread(target=pace, name="bench-pacer", daemon=True)
        pacer.start()
        while pacer.is_alive():
            await asyncio.sleep(0.05)
        await self.nc.flush()
        deadline = time.monotonic() + 5.0
        want = self.fill if fill else self.done
        while time.monotonic() < deadline and (
            self.completed < n or (fill and sum(1 for f in want if f) < self.approved)
        ):
            await asyncio.sleep(0.02)
        ack = [d - s for d, s in zip(self.done, self.sched, strict=True) if d]
        lag = [s1 - s0 for s1, s0 in zip(self.sent, self.sched, strict=True) if s1]
        from_send = [d - s for d, s in zip(self.done, self.sent, strict=True) if d and s]
        out: dict[str, Any] = {
            "offered_per_s": rate,
            "orders": n,
            "answered": self.completed,
            "approved": self.approved,
            "denied": dict(self.denied_reasons),
            "server_statuses": dict(self.statuses),
            "ack_from_scheduled": _ms(ack),
            "ack_from_send": _ms(from_send),
            "client_send_lag": _ms(lag),
        }
        if fill:
            out["fill_from_scheduled"] = _ms(
                [f - s for f, s in zip(self.fill, self.sched, strict=True) if f]
            )
            out["filled"] = sum(1 for f in self.fill if f)
        return out

    async def max_rate(self, n: int, window: int, max_s: float) -> dict[str, Any]:
        """Closed loop, ``window`` in flight: the flow's sustained decision rate."""
        self._reset(n)
        self.window = window
        self.room = asyncio.Event()
        wall = time.time_ns()
        t_start = time.perf_counter_ns()
        k = 0
        stop_at = time.monotonic() + max_s
        while k < n and time.monotonic() < stop_at:
            while k < n and k - self.completed < window:
                self.sched[k] = time.perf_counter_ns()
                side, price = ("BUY", "44000.00") if k % 2 == 0 else ("SELL", "46000.00")
                await self._publish(
                    k, self._order(k, wall + (self.sched[k] - t_start), price, side)
                )
                k += 1
            self.next_token = self.base + k
            self.room.clear()
            try:
                await asyncio.wait_for(self.room.wait(), 2.0)
            except TimeoutError:
                if self.completed == 0:
                    break
        sent = k
        deadline = time.monotonic() + 5.0
        while self.completed < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.room = None
        self.next_token = self.base + n
        times = sorted(d for d in self.done if d)
        rate = 0.0
        if len(times) >= 20:
            lo, hi = times[len(times) // 10], times[(len(times) * 9) // 10]
            rate = ((len(times) * 9) // 10 - len(times) // 10) / ((hi - lo) / 1e9)
        overall = len(times) / ((times[-1] - t_start) / 1e9) if times else 0.0
        return {
            "window": window,
            "sent": sent,
            "answered": self.completed,
            "approved": self.approved,
            "denied": dict(self.denied_reasons),
            "server_statuses": dict(self.statuses),
            "sustained_orders_per_s": round(rate),
            "overall_orders_per_s": round(overall),
            "latency_in_flight": _ms(
                [d - s for d, s in zip(self.done, self.sched, strict=True) if d]
            ),
        }

    async def ticker(self, stop: asyncio.Event, every_s: float = 0.002) -> None:
        """Quotes on md.ticks.<instrument>: the venue needs ticks to move its clock."""
        n = 0
        while not stop.is_set():
            ts = time.time_ns()
            n += 1
            await self.nc.publish(
                f"md.ticks.{INSTRUMENT}",
                (
                    f'{{"kind":"quote","instrument_id":"{INSTRUMENT}","bid_price":"44999.99",'
                    f'"bid_size":"100","ask_price":"45000.00","ask_size":"100",'
                    f'"update_id":{n},"ts_event":{ts},"ts_recv":{ts}}}'
                ).encode(),
            )
            await asyncio.sleep(every_s)

    async def probe(self, timeout_s: float) -> None:
        """Until the orders flow answers (a zero-quantity order: denied, nothing rests)."""
        from trade2026.natsconf import NatsConfig
        from trade2026.orderclient import OrderClient, OrderTimeout

        payload = (
            f'{{"kind":"submit_order","client_order_id":"{self.tag}-probe",'
            f'"account_id":"bench-0","instrument_id":"{INSTRUMENT}","side":"BUY",'
            f'"order_type":"LIMIT","quantity":"0","price":"1","ts_submit":1}}'
        ).encode()
        deadline = time.monotonic() + timeout_s
        async with OrderClient(NatsConfig.from_env({"NATS_URL": self.url})) as client:
            while True:
                try:
                    await client.request("orders.submit", payload, 1.0)
                    return
                except OrderTimeout:
                    if time.monotonic() > deadline:
                        raise BenchSetupError(
                            f"bench orders: the orders flow did not answer within {timeout_s}s; "
                            "hint: see the flow log printed below"
                        ) from None


async def _drive(
    url: str,
    rates: tuple[int, ...],
    seconds: float,
    max_orders: int,
    fills: bool,
    startup_s: float,
) -> dict[str, Any]:
    drv = _Driver(url, f"b{os.getpid()}")
    await drv.connect()
    await drv.probe(startup_s)
    out: dict[str, Any] = {}
    await drv.open_loop(500, 500)  # warm-up: imports, caches, the JetStream path
    if fills:
        # First, while the venue's book is empty: the ack phases leave tens of thousands
        # of resting orders at the venue, whose backlog would then delay the fills.
        stop = asyncio.Event()
        tick = asyncio.get_running_loop().create_task(drv.ticker(stop))
        await asyncio.sleep(0.3)  # the venue and risk see a market first
        out["fills"] = await drv.open_loop(100, int(100 * max(2.0, seconds / 2)), fill=True)
        stop.set()
        await tick
    for rate in rates:
        # Each phase starts on an idle flow: the stream is FIFO, so the probe's answer
        # means the previous phase's backlog (if the flow fell behind) is decided.
        await drv.probe(startup_s)
        out[f"ack_at_{rate}"] = await drv.open_loop(rate, int(rate * seconds))
    await drv.probe(startup_s)
    out["max_sustained"] = await drv.max_rate(max_orders, window=2048, max_s=10.0)
    await drv.nc.close()
    return out


class _Counter:
    """What the in-process sink keeps: a count (publishing is NATS's cost, measured above)."""

    def __init__(self) -> None:
        self.n = 0


def _in_process_run(msgs: list[Any], batch: int, limits: Any, quality: bool) -> tuple[float, int]:
    """CPU seconds (this process) for one in-process run of the orders flow; outputs."""
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    from flows.orders import build_flow
    from operators.quality.tap import QualityConfig

    counter = _Counter()

    class _Part(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            counter.n += len(items)

    class _Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
            return _Part()

    flow = build_flow(
        TestingSource(msgs, batch_size=batch),
        _Sink(),
        limits=limits,
        quality=QualityConfig() if quality else None,
    )
    t0 = time.process_time()
    run_main(flow)
    return time.process_time() - t0, counter.n


def per_order_cpu(orders: int = 20_000, batch: int = 100, repeats: int = 3) -> dict[str, Any]:
    """Our Python plus Bytewax per approved order, in process, with and without the
    per-record quality gate (rules only, as in production minus the background suites).

    CPU time of this process, not wall time, so other load on the machine moves it less;
    the arms alternate and the median of ``repeats`` is reported. Each run is a fresh
    flow (new accounts), so every order is a new, approved, resting order: the same
    approve path as the NATS phases, minus NATS.
    """
    from operators.risk_config import load_limits
    from schemas.transport import Message

    with tempfile.TemporaryDirectory(prefix="t26-bench-orders-cpu-") as tmp:
        path = Path(tmp) / "risk.toml"
        path.write_text(_BENCH_LIMITS + "".join(f"\n[accounts.{a}]\n" for a in ACCOUNTS))
        limits = load_limits(path)
    t0 = time.time_ns()
    msgs = []
    for k in range(orders):
        side, price = ("BUY", "44000.00") if k % 2 == 0 else ("SELL", "46000.00")
        data = (
            f'{{"kind":"submit_order","client_order_id":"cpu-{k}",'
            f'"account_id":"{ACCOUNTS[k % len(ACCOUNTS)]}","instrument_id":"{INSTRUMENT}",'
            f'"side":"{side}","order_type":"LIMIT","quantity":"0.001","price":"{price}",'
            f'"time_in_force":"GTC","ts_submit":{t0 + k * 1000}}}'
        ).encode()
        reply = f"_INBOX.bench.{k}"
        msgs.append(Message("orders.submit", data, t0 + k * 1000, {"T26-Reply-To": reply}))
    arms: dict[str, list[float]] = {"without_quality": [], "with_quality": []}
    outputs: dict[str, int] = {}
    for _ in range(repeats):
        for arm in arms:
            cpu, n = _in_process_run(msgs, batch, limits, arm == "with_quality")
            arms[arm].append(cpu / orders * 1e6)
            outputs[arm] = n
    med = {arm: round(statistics.median(v), 2) for arm, v in arms.items()}
    return {
        "orders": orders,
        "batch": batch,
        "repeats": repeats,
        "outputs_per_order": {a: round(n / orders, 2) for a, n in outputs.items()},
        "us_per_order": med,
        "runs_us_per_order": {a: [round(x, 2) for x in v] for a, v in arms.items()},
        "quality_gate_overhead": round(med["with_quality"] / med["without_quality"] - 1, 3),
    }


#: The quality arms: flow keyword arguments, and the key of their results.
_ARMS = {
    # Production (`trade2026 run orders`): per-record rules; the batch suites of
    # order_events and fills run in the store flow, off the order path.
    "on": (", quality=True, batch_suites=False", ""),
    "with_batch_suites": (", quality=True, batch_suites=True", "with_batch_suites"),
    "off": (", quality=False", "without_quality"),
}


def _nats_phases(
    tmp: Path,
    *,
    quality: str,
    workers: int,
    rates: tuple[int, ...],
    seconds: float,
    max_orders: int,
    fills: bool,
    startup_s: float,
) -> dict[str, Any]:
    """One arm: a fresh nats-server, the orders flow (quality arm ``quality``) and the venue."""
    from trade2026.natsserver import LocalNatsServer

    arm = tmp / quality
    arm.mkdir()
    limits = arm / "risk.toml"
    limits.write_text(_BENCH_LIMITS + "".join(f"\n[accounts.{a}]\n" for a in ACCOUNTS))
    # The quality layer stores its batch results under the state dir: keep them out of
    # the checkout.
    env = {**os.environ, "TRADE2026_RISK": str(limits), "TRADE2026_STATE_DIR": str(arm)}
    server = LocalNatsServer().start()
    procs: list[tuple[str, Any, Path]] = []
    try:
        for name, w, kwargs in (
            ("orders", workers, _ARMS[quality][0]),
            ("venue", 1, ""),
        ):
            log = arm / f"{name}.log"
            procs.append((name, _start_flow(name, server.url, w, env, log, kwargs), log))
        try:
            return asyncio.run(_drive(server.url, rates, seconds, max_orders, fills, startup_s))
        except BenchSetupError:
            for name, _, log in procs:
                print(f"--- {name} flow log (tail) ---\n{log.read_text()[-3000:]}")
            raise
    finally:
        for _, proc, _ in procs:
            _stop(proc)
        server.stop(kill=True)


def main(
    seconds: float = 4.0,
    rates: tuple[int, ...] = (1000, 5000),
    max_orders: int = 60_000,
    workers: int = 1,
    fills: bool = True,
    risk: bool = True,
    startup_s: float = 60.0,
    write: bool = True,
    compare_quality: bool = True,
    cpu: bool = True,
) -> dict[str, Any]:
    """Run every phase and write benchmarks/results/orders.json (~2-4 min with the defaults).

    The top-level numbers are the production flow (per-record rules). ``compare_quality``
    runs the ack and max-rate phases again, right after, each on a fresh server: with the
    batch suites in the orders process too (``with_batch_suites``) and with no quality
    layer (``without_quality``). ``cpu`` adds :func:`per_order_cpu` (in process).
    """
    _check_flows()
    results: dict[str, Any] = {
        "targets": TARGETS,
        "setup": {
            "orders_flow_workers": workers,
            "venue_flow_workers": 1,
            "accounts": len(ACCOUNTS),
            "seconds_per_rate": seconds,
            "cpus": os.cpu_count(),
            "quality": "per-record rules, as `trade2026 run orders` (suites run in `store`)",
            # Other work on the machine moves every number here; this says how much.
            "load_average_at_start": os.getloadavg()[0],
        },
    }
    with tempfile.TemporaryDirectory(prefix="t26-bench-orders-") as tmp:
        for quality in _ARMS if compare_quality else ("on",):
            arm = _nats_phases(
                Path(tmp),
                quality=quality,
                workers=workers,
                rates=rates,
                seconds=seconds,
                max_orders=max_orders,
                fills=fills and quality == "on",
                startup_s=startup_s,
            )
            key = _ARMS[quality][1]
            if key:
                results[key] = arm
            else:
                results.update(arm)
    results["setup"]["load_average_after_nats_phases"] = os.getloadavg()[0]
    if cpu:
        results["per_order_cpu"] = per_order_cpu()
    if risk:
        from benchmarks.risk_check import measure

        results["risk_check"] = measure(orders=20_000, repeats=3)
    results["meets"] = _verdicts(results)
    _print(results)
    if write:
        print(f"wrote {write_result('orders', results)}")
    return results


def _verdicts(r: dict[str, Any]) -> dict[str, bool | None]:
    def p99(key: str) -> float | None:
        v = r.get(key, {}).get("ack_from_scheduled", {}).get("p99_ms")
        return None if v is None else float(v)

    a1, a5 = p99("ack_at_1000"), p99("ack_at_5000")
    sustained = r.get("max_sustained", {}).get("sustained_orders_per_s")
    risk = r.get("risk_check", {}).get("median_us_per_order")
    return {
        "p99_ms_at_1000": None if a1 is None else a1 <= TARGETS["p99_ms_at_1000"],
        "p99_ms_at_5000": None if a5 is None else a5 <= TARGETS["p99_ms_at_5000"],
        "sustained_orders_per_s": None
        if sustained is None
        else sustained >= TARGETS["sustained_orders_per_s"],
        "risk_check_us": None if risk is None else risk <= TARGETS["risk_check_us"],
    }


def _row(label: str, lat: dict[str, Any], note: str) -> list[object]:
    """One table row: a label, p50/p99/p99.9 of a latency summary, and a note."""
    return [label, lat.get("p50_ms", "-"), lat.get("p99_ms", "-"), lat.get("p999_ms", "-"), note]


def _sustained(m: dict[str, Any]) -> str:
    return f"{m['sustained_orders_per_s']:,} orders/s ({m['answered']}/{m['sent']})"


def _print(r: dict[str, Any]) -> None:
    rows: list[list[object]] = []
    for key, value in r.items():
        if key.startswith("ack_at_"):
            lag = value["client_send_lag"].get("p99_ms", "-")
            rows.append(
                _row(
                    f"submit->ack @ {value['offered_per_s']}/s",
                    value["ack_from_scheduled"],
                    f"{value['answered']}/{value['orders']} answered, send lag p99 {lag} ms",
                )
            )
    if "fills" in r:
        rows.append(
            _row(
                "submit->fill @ 100/s",
                r["fills"].get("fill_from_scheduled", {}),
                f"{r['fills'].get('filled', 0)}/{r['fills']['orders']} filled "
                "(incl. 5 ms simulated venue latency)",
            )
        )
    if "max_sustained" in r:
        m = r["max_sustained"]
        rows.append(
            _row(f"max sustained (window {m['window']})", m["latency_in_flight"], _sustained(m))
        )
    for arm_key in ("with_batch_suites", "without_quality"):
        label = arm_key.replace("_", " ")
        other = r.get(arm_key, {})
        for key, value in other.items():
            if key.startswith("ack_at_"):
                rows.append(
                    _row(
                        f"  {label} @ {value['offered_per_s']}/s",
                        value["ack_from_scheduled"],
                        f"{value['answered']}/{value['orders']} answered",
                    )
                )
        if "max_sustained" in other:
            m = other["max_sustained"]
            rows.append(_row(f"  {label}, max sustained", m["latency_in_flight"], _sustained(m)))
    print_table(
        "order path through NATS (latency in ms, from the scheduled send)",
        ["what", "p50", "p99", "p99.9", "notes"],
        rows,
    )
    if "per_order_cpu" in r:
        c = r["per_order_cpu"]
        print(
            f"in process, CPU per approved order (median): {c['us_per_order']} µs; "
            f"quality gate +{c['quality_gate_overhead']:.1%}"
        )
    if "risk_check" in r:
        rc = r["risk_check"]
        print(f"risk check in process: {rc['median_us_per_order']} µs/order (median)")
    print("targets met:", {k: v for k, v in r["meets"].items()})


if __name__ == "__main__":
    main()
