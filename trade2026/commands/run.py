"""``trade2026 run FLOW``: launch a dataflow against NATS."""

from __future__ import annotations

import contextlib
import sys

import click

from trade2026 import exitcodes
from trade2026.flowregistry import FLOWS


@click.command("run")
@click.argument("flow", type=click.Choice(sorted(FLOWS)))
@click.option(
    "-w",
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker threads in this process.",
)
@click.option(
    "--process-id",
    "-i",
    type=int,
    default=None,
    help="This process's index in a multi-process cluster.",
)
@click.option(
    "--addresses",
    "-a",
    default=None,
    help="Semicolon-separated host:port of every cluster process, in order.",
)
@click.option(
    "--nats-url",
    envvar="NATS_URL",
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="NATS server(s), comma-separated (env NATS_URL).",
)
@click.option(
    "--metrics-port",
    envvar="TRADE2026_METRICS_PORT",
    type=int,
    default=None,
    help="Serve Prometheus metrics on this port (env TRADE2026_METRICS_PORT).",
)
@click.option(
    "--report-every",
    default=10.0,
    show_default=True,
    type=float,
    help="Print the in/out/dead-letter/duplicate counts every N seconds (0: never).",
)
def run_command(
    flow: str,
    workers: int,
    process_id: int | None,
    addresses: str | None,
    nats_url: str,
    metrics_port: int | None,
    report_every: float,
) -> None:
    """Launch FLOW against NATS and run until interrupted.

    The flow reads and writes the subjects documented in docs/contract.md; for
    example `normalize` consumes md.raw.> and publishes md.ticks.<instrument>,
    md.gaps.<instrument> and dlq.normalize.
    """
    from bytewax.run import cli_main
    from prometheus_client import REGISTRY, start_http_server

    from trade2026.accounting import Accounting
    from trade2026.flowregistry import RunContext
    from trade2026.natsconf import NatsConfig
    from trade2026.natsserver import nats_answers

    config = NatsConfig.from_env(servers=tuple(u.strip() for u in nats_url.split(",")))
    if not any(nats_answers(u) for u in config.servers):
        click.echo(
            f"error: run {flow}: no NATS server answers at {nats_url}; "
            "hint: start one (docker compose up nats) or set NATS_URL",
            err=True,
        )
        sys.exit(exitcodes.UNREACHABLE)
    if metrics_port is not None:
        start_http_server(metrics_port)
    ctx = RunContext(nats=config, workers=workers, accounting=Accounting(REGISTRY))
    dataflow = FLOWS[flow](ctx)
    address_list = addresses.split(";") if addresses else None
    if report_every > 0:
        _start_reporter(ctx.accounting, report_every)
    with contextlib.suppress(KeyboardInterrupt):
        cli_main(
            dataflow, workers_per_process=workers, process_id=process_id, addresses=address_list
        )


def _start_reporter(accounting: object, every_s: float) -> None:
    """A daemon thread printing each stage's counts, so a running flow shows its accounting."""
    import threading
    import time

    from trade2026.accounting import Accounting

    assert isinstance(accounting, Accounting)

    def loop() -> None:
        last: dict[str, int] = {}
        while True:
            time.sleep(every_s)
            for stage in accounting.stages():
                c = accounting.stage(stage)
                rate = (c.records_in - last.get(stage, 0)) / every_s
                last[stage] = c.records_in
                click.echo(
                    f"{stage}: in={c.records_in:,} out={c.out:,} "
                    f"dead_lettered={c.dead_lettered:,} duplicates={c.duplicates:,} "
                    f"unaccounted={c.unaccounted:,} ({rate:,.0f} msg/s)",
                    err=True,
                )

    threading.Thread(target=loop, name="accounting-reporter", daemon=True).start()
