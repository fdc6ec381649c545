"""``trade2026 bench <what>``: benchmarks that write JSON results and print a table."""

from __future__ import annotations

import click


@click.group("bench")
def bench_command() -> None:
    """Run a benchmark; results go to benchmarks/results/<name>.json."""


@bench_command.command("normalize")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 50))
@click.option("--no-e2e", is_flag=True, help="Skip the end-to-end run through NATS.")
def bench_normalize(runs: int, no_e2e: bool) -> None:
    """Normalization in-process (1 worker) and end to end through NATS vs a bare relay."""
    from benchmarks.normalize import main

    main(runs=runs, e2e=not no_e2e)


@bench_command.command("orders")
@click.option(
    "--seconds",
    default=4.0,
    show_default=True,
    type=float,
    help="Length of each offered-rate phase.",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 8))
@click.option("--no-fills", is_flag=True, help="Skip the submit-to-fill phase.")
def bench_orders(seconds: float, workers: int, no_fills: bool) -> None:
    """Order path through real NATS: ack latency at 1k and 5k orders/s, fills, max rate."""
    from benchmarks.orders import main

    main(seconds=seconds, workers=workers, fills=not no_fills)


@bench_command.command("sinks")
@click.option("--ticks", default=200_000, show_default=True, help="Ticks for the Delta runs.")
@click.option("--rows", default=50_000, show_default=True, help="Rows for the QuestDB runs.")
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1, 20))
def bench_sinks(ticks: int, rows: int, repeat: int) -> None:
    """Ticks into Delta, replay from Delta in-process, and QuestDB row building."""
    from benchmarks import sinks_delta, sinks_questdb

    args = ["--ticks", str(ticks), "--repeat", str(repeat)]
    sinks_delta.main.main(args=args, standalone_mode=False)
    sinks_questdb.main.main(
        args=["--rows", str(rows), "--repeat", str(repeat)], standalone_mode=False
    )


@bench_command.command("soak")
@click.option("--minutes", default=10.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--tick-rate", default=20_000.0, show_default=True, help="Raw ticks/s offered.")
@click.option("--order-rate", default=2_000.0, show_default=True, help="Orders/s offered.")
def bench_soak(minutes: float, tick_rate: float, order_rate: float) -> None:
    """The whole platform at a steady mixed load: throughput, latency and memory over time."""
    from benchmarks.soak import main

    main(minutes, tick_rate=tick_rate, order_rate=order_rate)


@bench_command.command("scaleout")
def bench_scaleout() -> None:
    """Normalize throughput on 1 worker, 2 workers and 2 processes."""
    from benchmarks.scaleout import main

    main([])
