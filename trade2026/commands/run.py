"""``trade2026 run FLOW``: launch a dataflow against NATS."""

from __future__ import annotations

import contextlib
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from engines.quix import QUIX_FLOWS
from trade2026 import exitcodes
from trade2026.flowregistry import FLOWS
from trade2026.recovery import DEFAULT_EPOCH_INTERVAL, RecoveryError

#: Flows only the Quix engine runs (on Bytewax the quality gate sits inside each flow).
QUIX_ONLY = sorted({n.replace("_", "-") for n in QUIX_FLOWS} - set(FLOWS))


@click.command("run")
@click.argument("flow", type=click.Choice(sorted([*FLOWS, *QUIX_ONLY])))
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
@click.option(
    "--recovery-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bytewax recovery snapshots for this flow; created on first start "
    "[default: $TRADE2026_STATE_DIR/recovery/FLOW, state dir default ./var].",
)
@click.option(
    "--no-recovery",
    is_flag=True,
    default=False,
    help="Run without recovery snapshots: a restart loses the flow's state and position.",
)
@click.option(
    "--engine",
    type=click.Choice(["bytewax", "quix"]),
    default="bytewax",
    show_default=True,
    help="Run on Bytewax over NATS, or as a Quix Streams app over Kafka "
    "(features, ticks-sink, quality, quality-raw).",
)
@click.option(
    "--kafka",
    envvar="KAFKA_BROKERS",
    default=None,
    help="Kafka bootstrap servers for --engine quix (env KAFKA_BROKERS).",
)
@click.option(
    "--epoch-interval",
    default=DEFAULT_EPOCH_INTERVAL.total_seconds(),
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Seconds per epoch; with recovery a snapshot is taken at the end of each.",
)
def run_command(
    flow: str,
    workers: int,
    process_id: int | None,
    addresses: str | None,
    nats_url: str,
    metrics_port: int | None,
    report_every: float,
    recovery_dir: Path | None,
    no_recovery: bool,
    engine: str,
    kafka: str | None,
    epoch_interval: float,
) -> None:
    """Launch FLOW against NATS and run until interrupted.

    The flow reads and writes the subjects documented in docs/contract.md; for
    example `normalize` consumes md.raw.> and publishes md.ticks.<instrument>,
    md.gaps.<instrument> and dlq.normalize.

    Recovery is on by default (docs/recovery.md): state is snapshotted every
    epoch into the recovery directory and a restart resumes from the last
    snapshot. Outputs may repeat after a crash; sinks de-duplicate them.
    """
    from bytewax.run import cli_main
    from prometheus_client import REGISTRY

    if engine == "quix":
        _run_quix(flow, kafka, metrics_port)
        return
    if flow in QUIX_ONLY:
        click.echo(
            f"error: run {flow}: runs on --engine quix only; hint: on Bytewax the quality "
            "gate is inside each flow (docs/quality.md); pass --engine quix --kafka BROKERS",
            err=True,
        )
        sys.exit(exitcodes.USAGE)

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
    from trade2026.observability import FlowMetrics, MetricsServer

    metrics = FlowMetrics(REGISTRY, flow=flow, process_id=process_id)
    if metrics_port is not None:
        server = MetricsServer(metrics_port, registry=REGISTRY).start()
        click.echo(f"run {flow}: metrics at {server.url}", err=True)
    ctx = RunContext(nats=config, workers=workers, accounting=Accounting(REGISTRY), metrics=metrics)
    dataflow = FLOWS[flow](ctx)
    # Batch-size and latency histograms for every source and sink of the graph.
    metrics.meter_dataflow(dataflow)
    address_list = addresses.split(";") if addresses else None
    try:
        recovery = _recovery_kwargs(
            flow, workers, process_id, address_list, recovery_dir, no_recovery, epoch_interval
        )
    except RecoveryError as exc:
        click.echo(f"error: run {flow}: {exc}", err=True)
        sys.exit(exitcodes.USAGE)
    if report_every > 0:
        _start_reporter(ctx.accounting, report_every)
    with contextlib.suppress(KeyboardInterrupt):
        cli_main(
            dataflow,
            workers_per_process=workers,
            process_id=process_id,
            addresses=address_list,
            **recovery,
        )


def _recovery_kwargs(
    flow: str,
    workers: int,
    process_id: int | None,
    addresses: list[str] | None,
    recovery_dir: Path | None,
    no_recovery: bool,
    epoch_interval: float,
) -> dict[str, Any]:
    """Recovery on unless ``--no-recovery``; one partition per worker of the whole cluster.

    In a cluster only process 0 creates the partitions (all of them), so that a fresh
    cluster never starts with two copies of one partition on different processes.
    """
    from trade2026.recovery import RecoverySettings, default_recovery_dir, run_kwargs

    interval = timedelta(seconds=epoch_interval)
    if no_recovery:
        return run_kwargs(None, interval)
    processes = len(addresses) if addresses else 1
    settings = RecoverySettings(
        db_dir=recovery_dir or default_recovery_dir(flow),
        partitions=0 if process_id else workers * processes,
        epoch_interval=interval,
    )
    click.echo(f"run {flow}: recovery snapshots in {settings.db_dir}", err=True)
    return run_kwargs(settings)


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


def _run_quix(flow: str, kafka: str | None, metrics_port: int | None) -> None:
    """The Kafka engine: the same operators as a Quix Streams application (docs/kafka.md)."""
    from prometheus_client import REGISTRY, start_http_server

    from engines.quix import QUIX_FLOWS, quix_flow
    from trade2026.accounting import Accounting

    name = flow.replace("-", "_")
    if name not in QUIX_FLOWS:
        click.echo(
            f"error: run {flow}: no Quix Streams engine for this flow; "
            f"hint: --engine quix runs {', '.join(sorted(QUIX_FLOWS))}",
            err=True,
        )
        sys.exit(exitcodes.USAGE)
    if not kafka:
        click.echo(
            f"error: run {flow}: --engine quix needs Kafka; hint: pass --kafka HOST:PORT "
            "or set KAFKA_BROKERS",
            err=True,
        )
        sys.exit(exitcodes.USAGE)
    from trade2026.observability import FlowMetrics

    if metrics_port is not None:
        start_http_server(metrics_port)
    metrics = FlowMetrics(REGISTRY, flow=flow)
    app = quix_flow(name, kafka, accounting=Accounting(REGISTRY), metrics=metrics)
    with contextlib.suppress(KeyboardInterrupt):
        app.run()
