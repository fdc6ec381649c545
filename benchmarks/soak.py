"""Soak: the whole platform for M minutes at a steady mixed load; does anything grow?

What runs: a local nats-server and the flows ``normalize-core``, ``orders``, ``venue``
and ``portfolio``, each as its own ``python -m trade2026.cli run FLOW`` process (recovery
on, as in production; state in a temporary directory), so each has its own resident
memory to watch. The load, open-loop (sent on schedule whether or not answers come):

* ticks: the bundled Binance sample replayed in a loop at ``--tick-rate`` (20,000/s)
  onto ``md.raw.*``. Each pass shifts trade ids, update ids and event times past the
  previous pass (the update-id shift keeps depth updates contiguous), so the
  normalizer sees new, gap-free data and never a duplicate;
* orders: ``--order-rate`` (2,000/s) IOC limit orders on ``orders.submit`` for one
  account, alternating buy and sell on BTC and ETH at prices through the whole sample's
  range, so they reach the simulated venue, fill, and the position stays flat. Each
  carries ``T26-Reply-To``; submit -> answer latency is measured per 10 s window.

Reported: achieved rates (published, normalized, answered), latency percentiles per
window, resident memory of every process every 5 s with a least-squares slope over the
second half (the target is no growth after warm-up), dead letters per stage and reason
(scraped from each flow's Prometheus endpoint). The risk limits are the bundled ones
plus an account ``soak`` with rate and position limits wide enough for this load (the
bundled accounts allow 100 orders/s each).

Writes ``benchmarks/results/soak.json`` and ``soak.png`` (matplotlib). The ORDERS
stream is file-backed and keeps every order (~2,000/s x ~300 B, ~36 MB a minute) in
the temporary store, removed at the end. Run: ``python -m benchmarks.soak --minutes 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ("normalize-core", "orders", "venue", "portfolio")
WINDOW_S = 10.0
SAMPLE_EVERY_S = 5.0
ACCOUNT = "soak"
_ID_RE = re.compile(rb'"(t|U|u|E|T|lastUpdateId)":(\d+)')


# -- the looped sample ---------------------------------------------------------------------
@dataclass
class _Template:
    subject: str
    parts: list[bytes]  # len(fields) + 1 chunks around the numbers
    fields: list[tuple[bytes, int]]  # (key, value in the recording)


class SampleLoop:
    """The sample recordings as an endless, duplicate-free raw stream (see module doc)."""

    def __init__(self, files: list[Path] | None = None) -> None:
        from sources.recorded import merge_recorded
        from trade2026.sample import sample_files

        paths = [str(p) for p in (files or sample_files())]
        self.templates: list[_Template] = []
        lo: dict[tuple[str, bytes], int] = {}
        hi: dict[tuple[str, bytes], int] = {}
        first_ns = last_ns = None
        self.trade_prices: dict[str, list[Decimal]] = {}
        for line in merge_recorded(paths):
            first_ns = line.ts_recv if first_ns is None else first_ns
            last_ns = line.ts_recv
            parts: list[bytes] = []
            fields: list[tuple[bytes, int]] = []
            pos = 0
            for m in _ID_RE.finditer(line.data):
                parts.append(line.data[pos : m.start(2)])
                key, value = m.group(1), int(m.group(2))
                fields.append((key, value))
                pos = m.end(2)
                group = b"u" if key in (b"U", b"lastUpdateId") else key
                k = (line.subject, group)
                lo[k] = min(lo.get(k, value), value)
                hi[k] = max(hi.get(k, value), value)
                if group == b"u" and b"depthUpdate" in line.data:
                    # Depth updates must stay contiguous across passes; best-bid/offer
                    # updates share their id space and just move with them.
                    dk = (line.subject, b"depth")
                    lo[dk] = min(lo.get(dk, value), value)
                    hi[dk] = max(hi.get(dk, value), value)
            parts.append(line.data[pos:])
            self.templates.append(_Template(line.subject, parts, fields))
            if b'"e":"trade"' in line.data:
                price = re.search(rb'"p":"([0-9.]+)"', line.data)
                if price:
                    sym = line.subject.rsplit(".", 1)[1].upper()
                    self.trade_prices.setdefault(sym, []).append(Decimal(price.group(1).decode()))
        assert first_ns is not None and last_ns is not None
        span_ms = (last_ns - first_ns) // 1_000_000 + 1_000
        # Per subject and id family: one pass's width, so pass k+1 starts right after pass k.
        self._width = {k: hi[k] - lo[k] + 1 for k in lo}
        for (subject, group), width in list(self._width.items()):
            if group == b"depth":
                self._width[(subject, b"u")] = width
        self._span_ms = span_ms

    def __len__(self) -> int:
        return len(self.templates)

    def messages(self) -> Iterator[tuple[str, bytes]]:
        n = 0
        while True:
            for t in self.templates:
                if not t.fields:
                    yield t.subject, t.parts[0]
                    continue
                out = [t.parts[0]]
                for (key, value), rest in zip(t.fields, t.parts[1:], strict=True):
                    if key in (b"E", b"T"):
                        value += n * self._span_ms
                    else:
                        group = b"u" if key in (b"U", b"lastUpdateId") else key
                        value += n * self._width[(t.subject, group)]
                    out.append(str(value).encode())
                    out.append(rest)
                yield t.subject, b"".join(out)
            n += 1


# -- load generators (own processes) --------------------------------------------------------
def _tick_publisher(url: str, rate: float, seconds: float, go: Any, out: Any) -> None:
    import nats

    loop = SampleLoop()
    src = loop.messages()

    async def main() -> None:
        nc = await nats.connect(url, pending_size=32 * 1024 * 1024)
        go.wait()
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while sent < due:
                subject, data = next(src)
                await nc.publish(subject, data)
                sent += 1
            await asyncio.sleep(0.005)
        await nc.flush()
        out.put(("ticks", sent, time.monotonic() - start))
        await nc.close()

    asyncio.run(main())


def _order_publisher(
    url: str, rate: float, seconds: float, prices: dict[str, tuple[str, str]], go: Any, out: Any
) -> None:
    import msgspec
    import nats

    from schemas.common import OrderType, Side, TimeInForce
    from schemas.orders import SubmitOrder

    encode = msgspec.json.Encoder().encode
    sent_at: dict[int, float] = {}
    acks: list[tuple[float, float]] = []  # (send time since start, latency s)
    run = os.getpid()

    async def main() -> None:
        nc = await nats.connect(url, pending_size=16 * 1024 * 1024)

        async def on_ack(msg: Any) -> None:
            now = time.monotonic()
            n = int(msg.subject.rsplit(".", 1)[1])
            t = sent_at.pop(n, None)
            if t is not None:
                acks.append((t - start, now - t))

        await nc.subscribe(
            f"soak.ack.{run}.*", cb=on_ack, pending_msgs_limit=1_000_000, pending_bytes_limit=0
        )
        await nc.flush()
        go.wait()
        start = time.monotonic()
        sent = 0
        insts = sorted(prices)
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            while sent < due:
                inst = insts[(sent // 2) % len(insts)]
                buy = sent % 2 == 0
                order = SubmitOrder(
                    f"soak-{run}-{sent}",
                    ACCOUNT,
                    inst,
                    Side.BUY if buy else Side.SELL,
                    OrderType.LIMIT,
                    Decimal("0.001") if inst.startswith("BTC") else Decimal("0.01"),
                    Decimal(prices[inst][0 if buy else 1]),
                    TimeInForce.IOC,
                    ts_submit=time.time_ns(),
                )
                sent_at[sent] = time.monotonic()
                await nc.publish(
                    "orders.submit",
                    encode(order),
                    headers={"T26-Reply-To": f"soak.ack.{run}.{sent}"},
                )
                sent += 1
            await asyncio.sleep(0.002)
        wall = time.monotonic() - start
        await nc.flush()
        deadline = time.monotonic() + 5.0
        while sent_at and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        out.put(("orders", sent, wall, acks, len(sent_at)))
        await nc.close()

    asyncio.run(main())


# -- observation ---------------------------------------------------------------------------
def _rss_mb(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 1e6
    except ImportError:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1000
        except OSError:
            return None
    except Exception:
        return None
    return None


def _scrape(port: int) -> dict[tuple[str, ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out: dict[tuple[str, ...], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "trade2026_stage_records_total":
                key = ("records", s.labels["stage"], s.labels["outcome"])
            elif s.name == "trade2026_dead_letters_total":
                key = ("dead", s.labels["stage"], s.labels["reason"])
            else:
                continue
            out[key] = out.get(key, 0.0) + s.value
    return out


def _slope_mb_per_min(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope over the second half of (seconds, MB) samples."""
    half = [p for p in series if p[0] >= series[-1][0] / 2] if series else []
    if len(half) < 3:
        return None
    xs, ys = [p[0] / 60 for p in half], [p[1] for p in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def _pct(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def _risk_file(dir_: Path) -> Path:
    from operators.risk_config import DEFAULT_PATH

    text = Path(DEFAULT_PATH).read_text()
    text += (
        f"\n[accounts.{ACCOUNT}]\nmax_orders_per_window = 1000000\n"
        "max_cancels_per_window = 1000000\nmax_open_orders = 100000\n"
        'max_order_notional = "1000000"\ndaily_loss_limit = "1000000000"\n'
        'max_gross_exposure = "1000000000"\n'
    )
    path = dir_ / "risk.toml"
    path.write_text(text)
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _order_prices(loop: SampleLoop) -> dict[str, tuple[str, str]]:
    """(buy, sell) limit prices through the whole sample's traded range: IOCs that fill."""
    out = {}
    for sym, prices in loop.trade_prices.items():
        buy = (max(prices) * Decimal("1.003")).quantize(Decimal("0.01"))
        sell = (min(prices) * Decimal("0.997")).quantize(Decimal("0.01"))
        out[f"{sym}.BINANCE"] = (str(buy), str(sell))
    return out


def main(
    minutes: float = 10.0,
    *,
    tick_rate: float = 20_000.0,
    order_rate: float = 2_000.0,
    write: bool = True,
) -> dict[str, Any]:
    """Run the soak and return its results (also written as JSON and PNG when ``write``)."""
    from benchmarks.common import RESULTS, print_table, write_result
    from trade2026.natsserver import LocalNatsServer

    seconds = minutes * 60
    loop = SampleLoop()
    prices = _order_prices(loop)
    work = Path(tempfile.mkdtemp(prefix="t26-soak-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TRADE2026_STATE_DIR": str(work / "state"),
        "TRADE2026_RISK": str(_risk_file(work)),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    ctx = mp.get_context("spawn")
    with LocalNatsServer(store_dir=work / "nats") as server:
        try:
            for flow in FLOWS:
                ports[flow] = _free_port()
                log = (work / f"{flow}.log").open("wb")
                procs[flow] = subprocess.Popen(
                    [sys.executable, "-m", "trade2026.cli", "run", flow, "--nats-url",
                     server.url, "--metrics-port", str(ports[flow]), "--report-every", "0"],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            deadline = time.monotonic() + 60
            for flow, port in ports.items():
                while True:
                    try:
                        _scrape(port)
                        break
                    except OSError:
                        if procs[flow].poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(
                                f"soak: flow {flow} did not start; hint: see {work}/{flow}.log"
                            ) from None
                        time.sleep(0.2)
            time.sleep(3.0)  # the flows subscribe after their metrics endpoint is up
            go, out = ctx.Event(), ctx.Queue()
            gens = [
                ctx.Process(target=_tick_publisher, args=(server.url, tick_rate, seconds, go, out)),
                ctx.Process(
                    target=_order_publisher,
                    args=(server.url, order_rate, seconds, prices, go, out),
                ),
            ]
            for g in gens:
                g.start()
            time.sleep(2.0)  # the generators load the sample and connect
            pids = {**{f: p.pid for f, p in procs.items()}, "nats-server": server.pid}
            rss: dict[str, list[tuple[float, float]]] = {k: [] for k in pids}
            metrics: list[tuple[float, dict[str, dict[tuple[str, ...], float]]]] = []
            go.set()
            start = time.monotonic()
            next_window = 0.0
            while (t := time.monotonic() - start) < seconds + 1:
                for name, pid in pids.items():
                    if pid is not None and (mb := _rss_mb(pid)) is not None:
                        rss[name].append((round(t, 1), round(mb, 1)))
                if t >= next_window:
                    metrics.append((t, {f: _scrape(p) for f, p in ports.items()}))
                    next_window += WINDOW_S
                for flow, p in procs.items():
                    if p.poll() is not None:
                        raise RuntimeError(f"soak: flow {flow} died; hint: see {work}/{flow}.log")
                time.sleep(SAMPLE_EVERY_S)
            results: dict[str, Any] = {}
            for _ in gens:
                item = out.get(timeout=60)
                results[item[0]] = item[1:]
            for g in gens:
                g.join(30)
            time.sleep(1.0)
            final = {f: _scrape(p) for f, p in ports.items()}
            metrics.append((time.monotonic() - start, final))
        finally:
            for p in procs.values():
                p.terminate()
            for p in procs.values():
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    ticks_sent, ticks_wall = results["ticks"]
    orders_sent, orders_wall, acks, unanswered = results["orders"]
    windows = []
    for w in range(int(seconds // WINDOW_S) + (1 if seconds % WINDOW_S else 0)):
        lat = sorted(
            latency * 1000 for sent, latency in acks if w * WINDOW_S <= sent < (w + 1) * WINDOW_S
        )
        row: dict[str, Any] = {"t_s": w * WINDOW_S, "answered": len(lat)}
        if lat:
            row |= {
                "p50_ms": round(_pct(lat, 0.5), 2),
                "p90_ms": round(_pct(lat, 0.9), 2),
                "p99_ms": round(_pct(lat, 0.99), 2),
                "max_ms": round(lat[-1], 2),
            }
        windows.append(row)
    norm_rate = []
    for (t0, m0), (t1, m1) in itertools.pairwise(metrics):
        key = ("records", "normalize", "in")
        a, b = m0["normalize-core"].get(key, 0.0), m1["normalize-core"].get(key, 0.0)
        norm_rate.append({"t_s": round(t0, 1), "normalize_in_per_s": round((b - a) / (t1 - t0))})
    stages: dict[str, dict[str, float]] = {}
    dead: dict[str, float] = {}
    for flow_metrics in final.values():
        for (kind, stage, label), v in flow_metrics.items():
            if kind == "records":
                stages.setdefault(stage, {})[label] = v
            else:
                dead[f"{stage}/{label}"] = v
    all_lat = sorted(latency * 1000 for _, latency in acks)
    doc: dict[str, Any] = {
        "minutes": minutes,
        "flows": list(FLOWS),
        "target": {"ticks_per_s": tick_rate, "orders_per_s": order_rate},
        "ticks": {"published": ticks_sent, "published_per_s": round(ticks_sent / ticks_wall)},
        "orders": {
            "sent": orders_sent,
            "sent_per_s": round(orders_sent / orders_wall),
            "answered": len(acks),
            "unanswered": unanswered,
            "latency_ms": {
                q: round(_pct(all_lat, v), 2)
                for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
            }
            if all_lat
            else {},
            "windows": windows,
        },
        "normalize_rate": norm_rate,
        "stages": stages,
        "dead_letters": dead,
        "rss_mb": rss,
        "rss_slope_second_half_mb_per_min": {k: _slope_mb_per_min(v) for k, v in rss.items()},
    }
    rows = [
        [k, v[0][1] if v else "-", v[-1][1] if v else "-", _fmt(s)]
        for k, v in rss.items()
        for s in [doc["rss_slope_second_half_mb_per_min"][k]]
    ]
    if write:
        path = write_result("soak", doc)
        png = RESULTS / "soak.png"
        _plot(doc, png)
        doc["png"] = str(png)
        print(f"  wrote {path} and {png}")
    print_table(
        f"Soak {minutes:g} min: ticks {doc['ticks']['published_per_s']:,}/s published, "
        f"orders {doc['orders']['sent_per_s']:,}/s sent, {len(acks):,} answered "
        f"({unanswered:,} unanswered)",
        ["window s", "answered", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            [
                w["t_s"],
                w["answered"],
                w.get("p50_ms", "-"),
                w.get("p90_ms", "-"),
                w.get("p99_ms", "-"),
                w.get("max_ms", "-"),
            ]
            for w in windows
        ],
    )
    print_table(
        "Resident memory", ["process", "first MB", "last MB", "slope 2nd half MB/min"], rows
    )
    print_table(
        "Stages (final counts)",
        ["stage", "in", "out", "dead_lettered", "duplicate"],
        [
            [s, *(f"{c.get(k, 0):,.0f}" for k in ("in", "out", "dead_lettered", "duplicate"))]
            for s, c in sorted(stages.items())
        ],
    )
    print("  dead letters:", dead or "none")
    return doc


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def _plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    nr = doc["normalize_rate"]
    ax1.plot([r["t_s"] for r in nr], [r["normalize_in_per_s"] for r in nr], label="normalize in/s")
    w = doc["orders"]["windows"]
    ax1.plot(
        [r["t_s"] for r in w], [r["answered"] / WINDOW_S for r in w], label="orders answered/s"
    )
    ax1.set_ylabel("msg/s")
    ax1.legend()
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        pts = [(r["t_s"], r[q]) for r in w if q in r]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], label=q[:-3])
    ax2.set_ylabel("submit -> answer ms")
    ax2.set_yscale("log")
    ax2.legend()
    for name, series in doc["rss_mb"].items():
        ax3.plot([p[0] for p in series], [p[1] for p in series], label=name)
    ax3.set_ylabel("RSS MB")
    ax3.set_xlabel("seconds")
    ax3.legend()
    fig.suptitle(f"Trade2026 soak, {doc['minutes']:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--tick-rate", type=float, default=20_000.0)
    p.add_argument("--order-rate", type=float, default=2_000.0)
    args = p.parse_args(argv)
    main(args.minutes, tick_rate=args.tick_rate, order_rate=args.order_rate)


if __name__ == "__main__":
    cli()
