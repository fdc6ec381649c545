"""``trade2026 <verb>``: the command line.

Exit codes mean the same thing for every verb:

=====  ==========================================================
0      success
1      the command ran and found a problem (a check failed, a key is absent)
2      usage error (bad flags or arguments)
3      bad input (a missing, corrupt or unparseable file)
4      a service could not be reached (NATS, QuestDB, ...)
5      a run failed for another reason (see the message)
=====  ==========================================================

Every verb module keeps heavy imports inside its functions so ``--help`` is instant.
"""

from __future__ import annotations

import os

import click

from trade2026 import __version__
from trade2026.commands.bench import bench_command
from trade2026.commands.bridge import bridge
from trade2026.commands.delta import delta
from trade2026.commands.demo import demo_command
from trade2026.commands.features import features
from trade2026.commands.gateway import gateway_command
from trade2026.commands.get import get_command
from trade2026.commands.halt import halt_command, resume_command
from trade2026.commands.orders import orders_group
from trade2026.commands.quality import quality_command
from trade2026.commands.replay import replay_command
from trade2026.commands.run import run_command
from trade2026.commands.schema import schema_command
from trade2026.commands.status import status_command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="trade2026")
@click.option(
    "--log-level",
    envvar="TRADE2026_LOG_LEVEL",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log level (env TRADE2026_LOG_LEVEL).",
)
@click.option(
    "--log-json/--no-log-json",
    envvar="TRADE2026_LOG_JSON",
    default=False,
    help="Write logs as one JSON object per line (env TRADE2026_LOG_JSON).",
)
def main(log_level: str, log_json: bool) -> None:
    """Trade2026: a trading firm's real-time data path as Bytewax dataflows over NATS.

    Environment: NATS_URL (default nats://127.0.0.1:4222), NATS_USER/NATS_PASSWORD,
    NATS_TOKEN, NATS_CREDS, NATS_NKEY_SEED, NATS_TLS_CA, QUESTDB_URL, KAFKA_BROKERS,
    TRADE2026_STATE_DIR, TRADE2026_INSTRUMENTS. Secrets never appear in logs.
    """
    from trade2026.observability import configure_logging

    configure_logging(json=log_json, level=log_level.upper())
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


main.add_command(run_command)
main.add_command(demo_command)
main.add_command(replay_command)
main.add_command(bench_command)
main.add_command(schema_command)
main.add_command(status_command)
main.add_command(delta)
main.add_command(features)
main.add_command(quality_command)
main.add_command(get_command)
main.add_command(bridge)
main.add_command(gateway_command)
main.add_command(orders_group)
main.add_command(halt_command)
main.add_command(resume_command)


if __name__ == "__main__":  # pragma: no cover
    main()
