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
