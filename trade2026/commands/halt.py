"""``trade2026 halt`` and ``trade2026 resume``: the kill switches, as ControlCommands.

The command goes to ``orders.control``, which the ``ORDERS`` JetStream stream keeps (the
stream is created first if missing), so a halt issued while the orders flow is down is
still applied, in order, when it comes back. The flow confirms by echoing the command;
without that confirmation within ``--timeout`` the verb exits 1 (the halt is stored but
not yet known to be in force), and 4 when NATS cannot be reached at all.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

import click

from trade2026.exitcodes import PROBLEM_FOUND, UNREACHABLE, USAGE

__all__ = ["halt_command", "resume_command", "send_control"]


def _options(fn: Any) -> Any:
    for deco in reversed(
        [
            click.option("--account", default=None, help="Halt/resume this account only."),
            click.option("--all", "all_", is_flag=True, help="Every account (global switch)."),
            click.option("--reason", required=True, help="Why; recorded with every denial."),
            click.option(
                "--timeout",
                default=2.0,
                show_default=True,
                type=float,
                help="Seconds to wait for the orders flow to confirm.",
            ),
            click.option(
                "--nats-url",
                envvar="NATS_URL",
                default=None,
                help="NATS server(s), comma-separated (env NATS_URL).",
            ),
        ]
    ):
        fn = deco(fn)
    return fn


def send_control(
    action: str, account: str | None, reason: str, timeout_s: float, nats_url: str | None
) -> int:
    """Publish one ControlCommand and wait for the flow's echo; returns the exit code."""
    import asyncio
    import os

    from schemas.orders import ControlAction
    from trade2026.natsconf import NatsConfig
    from trade2026.natsloop import connect
    from trade2026.natsserver import nats_answers
    from trade2026.orderclient import OrderClient, OrderTimeout, ensure_order_streams

    step = action.lower()
    env = {**os.environ, "NATS_URL": nats_url} if nats_url else None
    config = NatsConfig.from_env(env, max_reconnect_attempts=0, connect_timeout_s=2.0)
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"

    async def main() -> int:
        # nats-py retries a refused first connect forever; ask the port first.
        if not any(nats_answers(u) for u in config.servers):
            click.echo(
                f"error: {step}: no NATS server answers at {', '.join(config.servers)}; "
                "hint: start one (`nats-server -js`) or set NATS_URL / --nats-url",
                err=True,
            )
            return UNREACHABLE
        try:
            nc = await asyncio.wait_for(
                connect(config, step=step, allow_reconnect=False), config.connect_timeout_s + 3
            )
        except (ConnectionError, TimeoutError) as exc:
            click.echo(f"error: {exc}", err=True)
            return UNREACHABLE
        try:
            await ensure_order_streams(nc.jetstream())
            async with OrderClient(nc=nc, timeout_s=timeout_s) as client:
                send = client.halt if action == ControlAction.HALT else client.resume
                try:
                    cmd = await send(account, reason=reason, issued_by=who)
                except OrderTimeout:
                    click.echo(
                        f"warning: {step}: stored in stream ORDERS but the orders flow did not "
                        f"confirm within {timeout_s}s; hint: it applies when `trade2026 run "
                        "orders` (re)starts; check that it is running",
                        err=True,
                    )
                    return PROBLEM_FOUND
            scope = f"account {cmd.account_id}" if cmd.account_id else "all accounts"
            click.echo(
                f"{cmd.action} {scope}: {cmd.reason} (by {cmd.issued_by}, ts {cmd.ts_event})"
            )
            return 0
        finally:
            await nc.close()

    return asyncio.run(main())


def _target(account: str | None, all_: bool, verb: str) -> str | None:
    if (account is None) == (not all_):
        click.echo(
            f"error: {verb}: give exactly one of --account A or --all; "
            f"hint: `trade2026 {verb} --all --reason 'market open'`",
            err=True,
        )
        sys.exit(USAGE)
    return account


@click.command("halt")
@_options
def halt_command(
    account: str | None, all_: bool, reason: str, timeout: float, nats_url: str | None
) -> None:
    """Halt trading for one account (--account A) or everyone (--all).

    New orders and replaces are denied (ACCOUNT_KILL_SWITCH / GLOBAL_KILL_SWITCH);
    cancels still pass so a halted book can be flattened. Exit 0 confirmed, 1 stored but
    unconfirmed, 2 usage, 4 NATS unreachable.
    """
    sys.exit(send_control("HALT", _target(account, all_, "halt"), reason, timeout, nats_url))


@click.command("resume")
@_options
def resume_command(
    account: str | None, all_: bool, reason: str, timeout: float, nats_url: str | None
) -> None:
    """Lift a halt. A global resume does not lift an account halt, nor the reverse."""
    sys.exit(send_control("RESUME", _target(account, all_, "resume"), reason, timeout, nats_url))
