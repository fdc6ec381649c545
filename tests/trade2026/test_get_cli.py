"""``trade2026 get``: reads the hot cache from a real nats-server, exit codes 0/1/4."""

from __future__ import annotations

import asyncio
import json
import socket
from decimal import Decimal

import nats
from click.testing import CliRunner

from schemas.canonical import Position, Quote
from sinks.kv import HotCache
from trade2026.commands.get import get_command
from trade2026.natsserver import LocalNatsServer


def seed(server: LocalNatsServer) -> None:
    async def main() -> None:
        nc = await nats.connect(server.url)
        cache = await HotCache.open(nc)
        await cache.put_quotes(
            [Quote("BTCUSDT.BINANCE", Decimal("65000.10"), Decimal("0.5"), Decimal("65000.20"),
                   Decimal("1.25"), 77, 1_000, 1_001)]
        )  # fmt: skip
        await cache.put_positions(
            [
                Position("ACC1", "BTCUSDT.BINANCE", Decimal("0.5"), Decimal("64000"),
                         Decimal("10.50"), Decimal("500.05"), Decimal("65000.10"),
                         Decimal("0.25"), 2_000),
                Position("ACC1", "ETHUSDT.BINANCE", Decimal("-2"), Decimal("3100"),
                         Decimal("-1.25"), Decimal("200.00"), Decimal("3000"),
                         Decimal("0.10"), 2_000),
            ]
        )  # fmt: skip
        await nc.close()

    asyncio.run(main())


def test_get_quote_and_positions(own_nats_server: LocalNatsServer) -> None:
    seed(own_nats_server)
    runner = CliRunner()
    url = ["--nats-url", own_nats_server.url]

    res = runner.invoke(get_command, ["quote", "BTCUSDT.BINANCE", *url])
    assert res.exit_code == 0, res.output
    assert "65000.10" in res.output and "65000.20" in res.output
    assert "0.10" in res.output  # the spread, exact

    res = runner.invoke(get_command, ["quote", "BTCUSDT.BINANCE", "--json", *url])
    assert res.exit_code == 0
    assert json.loads(res.output)["bid_price"] == "65000.10"

    res = runner.invoke(get_command, ["positions", "ACC1", *url])
    assert res.exit_code == 0, res.output
    assert "BTCUSDT.BINANCE" in res.output and "ETHUSDT.BINANCE" in res.output
    assert "9.25" in res.output  # realized total 10.50 - 1.25
    assert "700.05" in res.output  # unrealized total 500.05 + 200.00

    res = runner.invoke(get_command, ["positions", "ACC1", "--json", *url])
    lines = [json.loads(line) for line in res.output.splitlines()]
    assert [(d["instrument_id"], d["quantity"]) for d in lines] == [
        ("BTCUSDT.BINANCE", "0.5"),
        ("ETHUSDT.BINANCE", "-2"),
    ]


def test_absent_key_exits_1_with_a_clear_message(own_nats_server: LocalNatsServer) -> None:
    seed(own_nats_server)
    runner = CliRunner()
    res = runner.invoke(get_command, ["quote", "DOGE.NOWHERE", "--nats-url", own_nats_server.url])
    assert res.exit_code == 1
    assert "no quote cached for DOGE.NOWHERE" in res.output
    res = runner.invoke(get_command, ["positions", "GHOST", "--nats-url", own_nats_server.url])
    assert res.exit_code == 1
    assert "no positions cached for account GHOST" in res.output


def test_unreachable_nats_exits_4(tmp_path: object) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(get_command, ["quote", "X", "--nats-url", f"nats://127.0.0.1:{port}"])
    assert res.exit_code == 4
    assert "cannot reach NATS" in res.output and "hint" in res.output


def test_missing_buckets_exit_4_with_a_hint(own_nats_server: LocalNatsServer) -> None:
    res = CliRunner().invoke(get_command, ["positions", "ACC1", "--nats-url", own_nats_server.url])
    assert res.exit_code == 4
    assert "buckets not found" in res.output
