"""Run several production flows in threads of this process, for the demo and the tests.

A flow is "up" once its NATS subscriptions exist; until then a publish is simply lost
on core NATS. :class:`LocalStack` starts the order-path flows over NATS and waits until
each one listens, so callers can publish right after :meth:`LocalStack.start` returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from decimal import Decimal

from bytewax.dataflow import Dataflow

from trade2026.flowregistry import RunContext


def wait_until(cond: Callable[[], object], timeout_s: float = 20.0, poll_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(poll_s)
    return bool(cond())


def _subscribed(group: object) -> bool:
    """Every source of a :class:`~trade2026.orderclient.SourceGroup` has subscribed."""
    sources = getattr(group, "sources", ())
    return bool(sources) and all(dict(s.stats) for s in sources)


class LocalStack:
    """normalize (core NATS), orders, venue, portfolio (and store) flows in daemon threads."""

    def __init__(
        self, ctx: RunContext, *, order_path: bool = True, store_root: str | None = None
    ) -> None:
        self.ctx = ctx
        self.order_path = order_path
        #: Persist the order path (orders, fills, positions, P&L) under this Delta root.
        self.store_root = store_root
        self.failures: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self.normalize_source: object = None

    def _run(self, name: str, flow: Dataflow) -> None:
        from bytewax.testing import run_main

        def target() -> None:
            try:
                run_main(flow)
            except BaseException as exc:  # surfaced by check(), never swallowed
                self.failures.append(exc)

        thread = threading.Thread(target=target, name=f"flow-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self, timeout_s: float = 30.0) -> LocalStack:
        from trade2026.flowregistry import build_normalize

        flow, norm_src = build_normalize(self.ctx)
        self.normalize_source = norm_src
        self._run("normalize", flow)
        listening: list[Callable[[], object]] = [lambda: norm_src.stats]
        if self.order_path:
            from flows import orders, portfolio, venue

            venue_flow, venue_src = venue.build_production(self.ctx)
            pf_flow, pf_src = portfolio.build_production(self.ctx)
            self._run("orders", orders.production_flow(self.ctx))
            self._run("venue", venue_flow)
            self._run("portfolio", pf_flow)
            # Each source of a group listens once one partition of it subscribed. The
            # venue's one source (VENUE_IN, commands and ticks in one stream) shows two
            # stats entries (``carries``) for its one partition, so counting entries
            # against a number of "partitions" would say nothing more.
            listening += [lambda: _subscribed(venue_src), lambda: _subscribed(pf_src)]
            if self.store_root is not None:
                from flows.store import SUBJECTS, build_store

                store_flow, store_src = build_store(self.ctx, self.store_root)
                self._run("store", store_flow)
                listening.append(lambda: len(store_src.stats) == len(SUBJECTS))
        if not wait_until(lambda: all(c() for c in listening) or self.failures, timeout_s):
            raise RuntimeError("local stack: flows did not subscribe in time; hint: see logs")
        self.check()
        if self.order_path:
            self._wait_for_orders_flow(timeout_s)
        return self

    def _wait_for_orders_flow(self, timeout_s: float) -> None:
        """The orders flow hides its sources: wait until its market-data input took a probe.

        The probe is lost if it beats the subscription, so it is re-sent until counted.
        """
        import msgspec

        from schemas.canonical import Quote
        from trade2026.natsloop import NatsLoop

        probe = Quote("BNBUSDT.BINANCE", Decimal(1), Decimal(1), Decimal(2), Decimal(1), 0, 1, 1)
        data = msgspec.json.encode(probe)
        acct = self.ctx.accounting
        loop = NatsLoop.acquire()
        try:
            nc = loop.connect(self.ctx.nats)
            deadline = time.monotonic() + timeout_s
            while acct.stage("orders_md").records_in < 1 and time.monotonic() < deadline:
                self.check()
                loop.run(nc.publish("md.ticks.BNBUSDT.BINANCE", data))
                loop.run(nc.flush())
                time.sleep(0.1)
            loop.run(nc.close())
        finally:
            NatsLoop.release(loop)
        if acct.stage("orders_md").records_in < 1:
            raise RuntimeError("local stack: the orders flow never took market data")

    def check(self) -> None:
        if self.failures:
            raise RuntimeError(f"local stack: a flow failed: {self.failures[0]!r}")

    def join(self, timeout_s: float = 60.0) -> bool:
        """Wait for every flow to end (they stop after ``ctx.idle_timeout_s`` idle)."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
