"""`trade2026 replay --from-delta`: stored ticks back onto md.ticks.> via a real nats-server."""

from __future__ import annotations

import asyncio
import socket
from decimal import Decimal
from pathlib import Path

import msgspec
import nats
from click.testing import CliRunner, Result

from schemas.canonical import BookDelta, BookLevel, Quote, Tick, TradeTick
from schemas.common import Aggressor
from sinks.delta import DeltaTicksConfig, Stamped, TickTableWriter
from trade2026.commands.replay import replay_command

DAY = 86_400 * 10**9
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
BTC, ETH = "BTCUSDT.BINANCE", "ETHUSDT.BINANCE"


def trade(inst: str, ts: int, tid: str) -> TradeTick:
    return TradeTick(inst, Decimal("87000.10"), Decimal("0.002"), Aggressor.BUY, tid, ts, ts + 7)


def quote(inst: str, ts: int, uid: int) -> Quote:
    return Quote(
        inst, Decimal("2990.5"), Decimal("1"), Decimal("2990.6"), Decimal("3"), uid, ts, ts
    )


def delta(inst: str, ts: int, uid: int) -> BookDelta:
    lv = [BookLevel(Decimal("2990.4"), Decimal("0"))]
    return BookDelta(inst, lv, [], uid, uid, False, ts, ts + 1)


def write_lake(root: Path) -> list[Tick]:
    """Ticks of two days and two instruments, committed out of event-time order, in many files."""
    commits: list[list[Tick]] = [
        # day 2 first, then day 1: replay order must not follow commit order
        [trade(BTC, T0 + DAY + 50, "b3"), quote(ETH, T0 + DAY + 10, 7)],
        [trade(BTC, T0 + 30, "b2"), trade(BTC, T0 + 10, "b1")],
        [quote(ETH, T0 + 20, 5), quote(ETH, T0 + 40, 6), delta(ETH, T0 + 35, 100)],
        [delta(ETH, T0 + DAY + 20, 101), trade(ETH, T0 + 25, "e1")],
    ]
    writer = TickTableWriter(DeltaTicksConfig(root=str(root)))
    seq = 0
    written: list[Tick] = []
    for batch in commits:
        stamped = []
        for t in batch:
            seq += 1
            stamped.append(Stamped(f"md.ticks.{t.instrument_id}", seq, t))
        writer.write(stamped)
        written += batch
    return written


def replay_and_capture(url: str, args: list[str], expect: int) -> tuple[Result, list[tuple]]:
    got: list[tuple[str, bytes, str | None]] = []

    async def main() -> Result:
        nc = await nats.connect(url)

        async def cb(msg) -> None:  # type: ignore[no-untyped-def]
            got.append((msg.subject, msg.data, (msg.headers or {}).get("T26-Recv-Ns")))

        await nc.subscribe("md.ticks.>", cb=cb)
        await nc.flush()
        result = await asyncio.to_thread(
            CliRunner().invoke, replay_command, [*args, "--nats-url", url, "--quiet"]
        )
        for _ in range(200):
            if len(got) >= expect:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # nothing more may arrive
        await nc.close()
        return result

    return asyncio.run(main()), got


def test_two_replays_publish_the_same_event_time_order(own_nats_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    written = write_lake(tmp_path)
    args = ["--from-delta", str(tmp_path)]
    first, a = replay_and_capture(own_nats_server.url, args, len(written))
    second, b = replay_and_capture(own_nats_server.url, args, len(written))
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert a == b  # subjects, payload bytes and receive-time headers, in the same order

    decode = msgspec.json.Decoder(Tick).decode
    ticks = [decode(data) for _, data, _ in a]
    # Event times are distinct here, so event-time order is the whole expected order.
    assert [t.ts_event for t in ticks] == [
        T0 + 10, T0 + 20, T0 + 25, T0 + 30, T0 + 35, T0 + 40,
        T0 + DAY + 10, T0 + DAY + 20, T0 + DAY + 50,
    ]  # fmt: skip
    assert sorted(ticks, key=lambda t: t.ts_event) == sorted(written, key=lambda t: t.ts_event)
    assert all(s == f"md.ticks.{t.instrument_id}" for (s, _, _), t in zip(a, ticks, strict=True))
    assert [h for _, _, h in a][:2] == [str(T0 + 17), str(T0 + 20)]
    assert "total" in first.output and "9" in first.output


def test_start_end_and_instruments_select_the_range(own_nats_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_lake(tmp_path)
    args = [
        "--from-delta", str(tmp_path), "--instruments", ETH,
        "--start", str(T0 + 21), "--end", str(T0 + DAY + 15),
    ]  # fmt: skip
    result, got = replay_and_capture(own_nats_server.url, args, 4)
    assert result.exit_code == 0, result.output
    ticks = [msgspec.json.decode(d, type=Tick) for _, d, _ in got]
    assert [(t.instrument_id, t.ts_event) for t in ticks] == [
        (ETH, T0 + 25), (ETH, T0 + 35), (ETH, T0 + 40), (ETH, T0 + DAY + 10),
    ]  # fmt: skip


def test_missing_tables_exit_3_and_unreachable_nats_exit_4(tmp_path: Path) -> None:
    res = CliRunner().invoke(replay_command, ["--from-delta", str(tmp_path / "nope")])
    assert res.exit_code == 3 and "hint" in res.output
    write_lake(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(
        replay_command, ["--from-delta", str(tmp_path), "--nats-url", f"nats://127.0.0.1:{port}"]
    )
    assert res.exit_code == 4 and "hint" in res.output


def test_usage_errors() -> None:
    run = CliRunner().invoke
    assert run(replay_command, ["x.gz", "--from-delta", "lake"]).exit_code == 2
    assert run(replay_command, ["--from-delta", "lake", "--symbols", "BTCUSDT"]).exit_code == 2
    assert run(replay_command, ["x.gz", "--instruments", BTC]).exit_code == 2
