"""``trade2026 replay`` end to end: real files, a real nats-server, a real subscriber.

Each test that publishes gets a private server (``own_nats_server``): replay publishes on
the production subjects ``md.raw.binance.*``, which other tests on the shared server may
be listening to.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from click.testing import CliRunner, Result

from schemas.transport import RECV_NS_HEADER
from sources.recorded import FEEDS
from trade2026.commands.replay import VENUES, parse_time_ns, replay_command
from trade2026.natsserver import LocalNatsServer

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
BTC = DATA / "spot_btcusdt_20240808.gz"
ETH = DATA / "spot_ethusdt_20240808.gz"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(replay_command, list(args), catch_exceptions=False)


def records(path: Path, symbol: str) -> Counter[tuple[str, int, bytes]]:
    """(subject, receive ns, payload) for every line, split by hand from the gzip text."""
    out: Counter[tuple[str, int, bytes]] = Counter()
    with gzip.open(path, "rb") as fh:
        for line in fh.read().splitlines():
            ts, _, data = line.partition(b" ")
            out[(f"md.raw.binance.{symbol}", int(ts), data)] += 1
    return out


class Subscriber:
    """Collects everything on ``md.raw.>`` from a thread with its own event loop."""

    def __init__(self, url: str, subject: str = "md.raw.>") -> None:
        self.got: list[tuple[str, dict[str, str] | None, bytes]] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(url, subject),))

    async def _run(self, url: str, subject: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await nats.connect(url)

        async def on_msg(msg: nats.aio.msg.Msg) -> None:
            self.got.append((msg.subject, msg.headers, msg.data))

        await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()  # the server knows the interest before anyone publishes
        self._ready.set()
        await self._stop.wait()
        await nc.drain()

    def __enter__(self) -> Subscriber:
        self._thread.start()
        assert self._ready.wait(10), "subscriber did not connect"
        return self

    def wait_for(self, n: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # anything beyond n would be a bug: give it a moment to show up

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def server(own_nats_server: LocalNatsServer) -> Iterator[LocalNatsServer]:
    yield own_nats_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------- replay to NATS


def test_replay_publishes_every_line_with_subject_and_receive_time(
    server: LocalNatsServer,
) -> None:
    expected = records(BTC, "btcusdt") + records(ETH, "ethusdt")
    with Subscriber(server.url) as sub:
        result = invoke(str(BTC), str(ETH), "--nats-url", server.url, "--quiet")
        assert result.exit_code == 0, result.output + result.stderr
        sub.wait_for(expected.total())
    got = Counter(
        (subject, int(headers[RECV_NS_HEADER]), data)
        for subject, headers, data in sub.got
        if headers is not None
    )
    assert len(sub.got) == expected.total() == 41_249 + 33_618
    assert got == expected
    # Published in receive-time order across both files.
    stamps = [int(h[RECV_NS_HEADER]) for _, h, _ in sub.got if h is not None]
    assert stamps == sorted(stamps)
    # The summary names both symbols, the stream kinds and the total.
    out = result.output
    for token in ("btcusdt", "ethusdt", "bookTicker", "depth@100ms", "depthSnapshot"):
        assert token in out
    assert "74,867" in out
    assert "skipped lines: 0" in out
    assert "msg/s" in out


def test_replay_filters_by_time_and_symbol(server: LocalNatsServer, tmp_path: Path) -> None:
    stamps = sorted(ts for _, ts, _ in records(ETH, "ethusdt"))
    start, end = stamps[100], stamps[2100]
    expected = sum(1 for ts in stamps if start <= ts < end)
    with Subscriber(server.url) as sub:
        result = invoke(
            str(BTC),
            str(ETH),
            "--symbols",
            "ETHUSDT",
            "--start",
            str(start),
            "--end",
            str(end),
            "--nats-url",
            server.url,
        )
        assert result.exit_code == 0, result.stderr
        sub.wait_for(expected)
    assert len(sub.got) == expected
    assert {s for s, _, _ in sub.got} == {"md.raw.binance.ethusdt"}


def test_replay_skips_bad_lines_and_reports_them(server: LocalNatsServer, tmp_path: Path) -> None:
    path = tmp_path / "rec.txt"
    path.write_text(
        '1 {"stream":"btcusdt@trade","data":{}}\n'
        "oops\n"
        '3 {"stream":"btcusdt@trade","data":{"broken\n'
        '4 {"stream":"btcusdt@trade","data":{}}\n'
    )
    with Subscriber(server.url) as sub:
        result = invoke(str(path), "--nats-url", server.url, "--venue", "binance-usdm")
        assert result.exit_code == 0, result.stderr
        sub.wait_for(3)
    # The broken JSON on line 3 is venue data: published for the normaliser to dead-letter.
    assert [(s, h[RECV_NS_HEADER] if h else None) for s, h, _ in sub.got] == [
        ("md.raw.binance-usdm.btcusdt", "1"),
        ("md.raw.binance-usdm.btcusdt", "3"),
        ("md.raw.binance-usdm.btcusdt", "4"),
    ]
    assert sub.got[1][2] == b'{"stream":"btcusdt@trade","data":{"broken'
    assert f"warning: {path}:2:" in result.stderr
    assert "skipped lines: 1" in result.output


def test_replay_at_speed_keeps_the_recorded_gaps(server: LocalNatsServer, tmp_path: Path) -> None:
    # Five messages 100 ms apart at speed 2: they cannot all arrive within 200 ms.
    path = tmp_path / "paced.txt"
    base = 1_723_161_254_000_000_000
    path.write_text(
        "".join(
            f'{base + i * 100_000_000} {{"stream":"btcusdt@trade","data":{{"i":{i}}}}}\n'
            for i in range(5)
        )
    )
    with Subscriber(server.url) as sub:
        began = time.monotonic()
        result = invoke(str(path), "--speed", "2", "--nats-url", server.url)
        took = time.monotonic() - began
        assert result.exit_code == 0, result.stderr
        sub.wait_for(5)
    assert took >= 0.19
    assert [d for _, _, d in sub.got] == [
        f'{{"stream":"btcusdt@trade","data":{{"i":{i}}}}}'.encode() for i in range(5)
    ]


# --------------------------------------------------------------------- exit codes


def test_missing_file_exits_3_without_needing_nats(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gz"
    result = invoke(str(BTC), str(missing), "--nats-url", f"nats://127.0.0.1:{free_port()}")
    assert result.exit_code == 3
    assert f"error: {missing}:0: no such file" in result.stderr
    assert "hint:" in result.stderr


def test_corrupt_gzip_exits_3(server: LocalNatsServer, tmp_path: Path) -> None:
    blob = BTC.read_bytes()
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(blob[: len(blob) // 2])  # truncated half way
    result = invoke(str(corrupt), "--nats-url", server.url, "--quiet")
    assert result.exit_code == 3
    assert f"error: {corrupt}:" in result.stderr
    assert "corrupt gzip" in result.stderr
    wrecked = tmp_path / "wrecked.gz"
    wrecked.write_bytes(blob[:2] + bytes(64) + blob[66:])
    result = invoke(str(wrecked), "--nats-url", f"nats://127.0.0.1:{free_port()}")
    assert result.exit_code == 3  # found before connecting
    assert f"error: {wrecked}:1: corrupt gzip" in result.stderr


def test_bad_line_with_strict_exits_3_naming_the_line(
    server: LocalNatsServer, tmp_path: Path
) -> None:
    path = tmp_path / "rec.txt"
    path.write_text(
        '1 {"stream":"btcusdt@trade","data":{}}\n'
        '2 {"stream":"btcusdt@trade","data":{}}\n'
        'x2 {"stream":"btcusdt@trade","data":{}}\n'
    )
    result = invoke(str(path), "--strict", "--nats-url", server.url)
    assert result.exit_code == 3
    assert f"error: {path}:3: receive time b'x2' is not a non-negative integer" in result.stderr
    result = invoke(str(path), "--nats-url", server.url)
    assert result.exit_code == 0


def test_unreachable_nats_exits_4_with_a_hint() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = invoke(str(BTC), "--nats-url", url)
    assert result.exit_code == 4
    assert "cannot reach NATS" in result.stderr
    assert url in result.stderr
    assert "NATS_URL" in result.stderr and "trade2026 demo" in result.stderr


def test_nats_url_comes_from_the_environment(server: LocalNatsServer, tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text('5 {"stream":"btcusdt@trade","data":{}}\n')
    result = CliRunner(env={"NATS_URL": server.url}).invoke(replay_command, [str(path)])
    assert result.exit_code == 0, result.stderr
    down = CliRunner(env={"NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    assert down.invoke(replay_command, [str(path)]).exit_code == 4


@pytest.mark.parametrize(
    "args",
    [
        ["--speed", "0"],
        ["--speed", "fast"],
        ["--start", "yesterday"],
        ["--venue", "kraken"],
        ["--symbols", ","],
        ["--start", "2024-08-09T00:00:00Z", "--end", "2024-08-08T00:00:00Z"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = invoke(str(BTC), *args)
    assert result.exit_code == 2


def test_no_paths_is_a_usage_error() -> None:
    assert invoke().exit_code == 2


# --------------------------------------------------------------------- helpers


def test_venue_choices_match_the_reader() -> None:
    assert VENUES == FEEDS


def test_parse_time_ns() -> None:
    assert parse_time_ns("1723161254937085768") == 1_723_161_254_937_085_768
    assert parse_time_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    assert parse_time_ns("2024-08-08T23:55:00") == 1_723_161_300_000_000_000
    assert parse_time_ns("2024-08-09T01:55:00.000001+02:00") == 1_723_161_300_000_001_000
    with pytest.raises(ValueError, match="hint"):
        parse_time_ns("soon")
