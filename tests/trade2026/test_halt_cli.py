"""``trade2026 halt|resume`` and ``orders submit`` against a real nats-server and orders flow."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal

import msgspec
from click.testing import CliRunner

from schemas.orders import ControlCommand
from tests.flows.test_orders import FlowRun, _ensure_stream
from trade2026.commands.halt import halt_command, resume_command
from trade2026.commands.orders import orders_group
from trade2026.natsconf import NatsConfig
from trade2026.natsloop import connect

SUBMIT = ["submit", "--symbol", "BTCUSDT.BINANCE", "--side", "buy", "--qty", "0.001"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_halt_all_denies_orders_until_resume(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    _ensure_stream(url)
    runner = CliRunner()
    order = [*SUBMIT, "--price", "45000", "--account", "alice", "--nats-url", url]
    with FlowRun(url):
        ok = runner.invoke(orders_group, [*order, "--client-order-id", "h1"])
        halted = runner.invoke(halt_command, ["--all", "--reason", "drill", "--nats-url", url])
        denied = runner.invoke(orders_group, [*order, "--client-order-id", "h2"])
        resumed = runner.invoke(resume_command, ["--all", "--reason", "over", "--nats-url", url])
        again = runner.invoke(orders_group, [*order, "--client-order-id", "h3", "--json"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("APPROVED alice:h1")
    assert halted.exit_code == 0, halted.output
    assert "HALT all accounts: drill" in halted.output
    assert denied.exit_code == 1
    assert "DENIED alice:h2 GLOBAL_KILL_SWITCH" in denied.output
    assert "drill" in denied.output
    assert resumed.exit_code == 0, resumed.output
    assert again.exit_code == 0
    assert msgspec.json.decode(again.output)["approved"] is True


def test_halt_without_a_flow_is_stored_and_exits_1(own_nats_server) -> None:  # type: ignore[no-untyped-def]
    url = own_nats_server.url
    result = CliRunner().invoke(
        halt_command,
        ["--account", "bob", "--reason", "limits", "--timeout", "0.2", "--nats-url", url],
    )
    assert result.exit_code == 1
    assert "stored in stream ORDERS" in result.output

    async def last() -> ControlCommand:
        nc = await connect(NatsConfig(servers=(url,)))
        msg = await nc.jetstream().get_last_msg("ORDERS", "orders.control")
        await nc.close()
        assert msg.data is not None
        return msgspec.json.decode(msg.data, type=ControlCommand)

    cmd = asyncio.run(last())
    assert (cmd.action, cmd.scope, cmd.account_id, cmd.reason) == (
        "HALT",
        "ACCOUNT",
        "bob",
        "limits",
    )


def test_unreachable_nats_exits_4_and_usage_errors_exit_2() -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    runner = CliRunner()
    down = runner.invoke(halt_command, ["--all", "--reason", "x", "--nats-url", url])
    assert down.exit_code == 4
    assert "no NATS server answers" in down.output and "hint" in down.output
    both = runner.invoke(halt_command, ["--all", "--account", "a", "--reason", "x"])
    assert both.exit_code == 2 and "exactly one of" in both.output
    neither = runner.invoke(resume_command, ["--reason", "x"])
    assert neither.exit_code == 2
    submit = runner.invoke(orders_group, [*SUBMIT, "--price", "1", "--nats-url", url])
    assert submit.exit_code == 4
    bad = runner.invoke(orders_group, [*SUBMIT[:-1], "abc", "--nats-url", url])
    assert bad.exit_code == 2 and "decimal" in bad.output
    assert Decimal("0.001")  # quantities go through Decimal, never float
