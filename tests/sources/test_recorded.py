"""Reading recorded venue files: the real Binance samples plus small files made here.

Expected numbers come from outside the reader: the table in data/README.md, and counts
made in the test with Python's gzip module and plain string checks.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.transport import Message
from sources.recorded import (
    BadLine,
    BadLineLog,
    Pacer,
    ReadStats,
    RecordedLine,
    RecordedSource,
    RecordingError,
    iter_recorded,
    merge_recorded,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
BTC = DATA / "spot_btcusdt_20240808.gz"
ETH = DATA / "spot_ethusdt_20240808.gz"

# From the table in data/README.md (written when the data was added, not by this code).
README = {
    BTC: {"lines": 41_249, "trade": 9_757, "bookTicker": 28_040, "depth": 3_451},
    ETH: {"lines": 33_618, "trade": 6_106, "bookTicker": 24_077, "depth": 3_434},
}


def raw_lines(path: Path) -> list[bytes]:
    """The file's lines, decompressed by the standard library, newline stripped."""
    with gzip.open(path, "rb") as fh:
        return fh.read().splitlines()


def independent_counts(path: Path, symbol: str) -> Counter[str]:
    """Count stream kinds with substring checks only: no JSON, no code under test."""
    counts: Counter[str] = Counter()
    for line in raw_lines(path):
        text = line.decode()
        if f'"stream":"{symbol}@trade"' in text:
            counts["trade"] += 1
        elif f'"stream":"{symbol}@bookTicker"' in text:
            counts["bookTicker"] += 1
        elif f'"stream":"{symbol}@depth@100ms"' in text:
            counts["depth@100ms"] += 1
        elif '"lastUpdateId"' in text and '"stream"' not in text:
            counts["depthSnapshot"] += 1
        else:
            counts["other"] += 1
    return counts


def env(ts: int, stream: str, payload: str = '{"x":1}') -> str:
    return f'{ts} {{"stream":"{stream}","data":{payload}}}'


def write(path: Path, lines: list[str], *, gz: bool = False, newline: str = "\n") -> Path:
    body = newline.join(lines).encode() + newline.encode()
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


def summary(lines: list[RecordedLine]) -> list[tuple[int, int, str, bytes, str]]:
    return [(x.line_no, x.ts_recv, x.subject, x.data, x.kind) for x in lines]


# --------------------------------------------------------------------- sample files


@pytest.mark.parametrize(("path", "symbol"), [(BTC, "btcusdt"), (ETH, "ethusdt")])
def test_sample_counts_match_an_independent_count(path: Path, symbol: str) -> None:
    got = list(iter_recorded(path))
    expected = independent_counts(path, symbol)
    assert expected["other"] == 0
    assert Counter(x.kind for x in got) == expected
    assert {x.subject for x in got} == {f"md.raw.binance.{symbol}"}
    # ... and the table in data/README.md agrees.
    readme = README[path]
    assert len(got) == readme["lines"] == len(raw_lines(path))
    assert expected["trade"] == readme["trade"]
    assert expected["bookTicker"] == readme["bookTicker"]
    assert expected["depth@100ms"] == readme["depth"]


@pytest.mark.parametrize("path", [BTC, ETH])
def test_sample_payload_is_the_recorded_bytes_and_time(path: Path) -> None:
    got = list(iter_recorded(path))
    for n, (line, rec) in enumerate(zip(raw_lines(path), got, strict=True), start=1):
        ts, _, data = line.partition(b" ")
        assert (rec.line_no, rec.ts_recv, rec.data) == (n, int(ts), data)
        assert rec.path == str(path)


@pytest.mark.parametrize("path", [BTC, ETH])
def test_sample_snapshot_goes_to_the_symbol_of_the_next_enveloped_line(path: Path) -> None:
    lines = raw_lines(path)
    snap_idx = [i for i, ln in enumerate(lines) if b'"stream"' not in ln]
    assert len(snap_idx) == 1  # one REST snapshot per sample file
    i = snap_idx[0]
    next_stream = lines[i + 1].split(b'"stream":"')[1].split(b"@")[0].decode()
    got = {x.line_no: x for x in iter_recorded(path)}
    snap = got[i + 1]
    assert snap.kind == "depthSnapshot"
    assert snap.subject == f"md.raw.binance.{next_stream}"
    assert snap.data.startswith(b'{"lastUpdateId":')


def test_gzip_and_plain_give_identical_results_whatever_the_file_is_called(
    tmp_path: Path,
) -> None:
    # Detection is by magic bytes: plain text named .gz and gzip named .txt both work.
    plain = tmp_path / "looks_compressed.gz"
    plain.write_bytes(gzip.decompress(BTC.read_bytes()))
    zipped = tmp_path / "looks_plain.txt"
    shutil.copy(BTC, zipped)
    a = summary(list(iter_recorded(plain)))
    b = summary(list(iter_recorded(zipped)))
    assert len(a) == README[BTC]["lines"]
    assert a == b


def test_crlf_line_endings_read_like_lf(tmp_path: Path) -> None:
    lines = [env(1, "btcusdt@trade"), env(2, "btcusdt@bookTicker")]
    lf = summary(list(iter_recorded(write(tmp_path / "lf", lines))))
    crlf = summary(list(iter_recorded(write(tmp_path / "crlf", lines, newline="\r\n"))))
    assert lf == crlf
    assert [d for *_, d, _k in lf] == [
        b'{"stream":"btcusdt@trade","data":{"x":1}}',
        b'{"stream":"btcusdt@bookTicker","data":{"x":1}}',
    ]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(f"{env(1, 'btcusdt@trade')}\n{env(2, 'btcusdt@trade')}".encode())
    assert [x.ts_recv for x in iter_recorded(path)] == [1, 2]


def test_lines_spanning_read_chunks_are_whole(tmp_path: Path) -> None:
    # Lines longer than the reader's 1 MiB chunk must come out whole and numbered right.
    big = "[" + ",".join(['["1.0","2.0"]'] * 120_000) + "]"
    lines = [env(1, "btcusdt@trade"), f'2 {{"lastUpdateId":7,"bids":{big}}}', env(3, "x@trade")]
    got = list(iter_recorded(write(tmp_path / "big.gz", lines, gz=True)))
    assert [(x.line_no, x.subject) for x in got] == [
        (1, "md.raw.binance.btcusdt"),
        (2, "md.raw.binance.x"),
        (3, "md.raw.binance.x"),
    ]
    assert len(got[1].data) == len(lines[1]) - 2


# --------------------------------------------------------------------- attribution


def test_snapshot_attribution_rules(tmp_path: Path) -> None:
    snap = '{"lastUpdateId":1,"bids":[],"asks":[]}'
    path = write(
        tmp_path / "f",
        [
            f"10 {snap}",  # first line: belongs to the next enveloped line's symbol
            env(11, "ethusdt@depth@100ms"),
            env(12, "ethusdt@trade"),
            f"13 {snap}",  # mid-file: next enveloped line is btcusdt
            env(14, "btcusdt@depth@100ms"),
            f"15 {snap}",  # last line: nothing follows, so the previous symbol
        ],
    )
    got = [(x.line_no, x.subject, x.kind) for x in iter_recorded(path)]
    assert got == [
        (1, "md.raw.binance.ethusdt", "depthSnapshot"),
        (2, "md.raw.binance.ethusdt", "depth@100ms"),
        (3, "md.raw.binance.ethusdt", "trade"),
        (4, "md.raw.binance.btcusdt", "depthSnapshot"),
        (5, "md.raw.binance.btcusdt", "depth@100ms"),
        (6, "md.raw.binance.btcusdt", "depthSnapshot"),
    ]


def test_a_file_that_never_names_a_symbol_has_only_bad_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "f", ['1 {"lastUpdateId":1,"bids":[],"asks":[]}'])
    log = BadLineLog()
    assert list(iter_recorded(path, on_bad_line=log)) == []
    assert log.count == 1
    assert "names a symbol" in log.examples[0].reason
    with pytest.raises(RecordingError) as err:
        list(iter_recorded(path, strict=True))
    assert err.value.line_no == 1


def test_bad_json_with_a_good_prefix_is_published_not_skipped(tmp_path: Path) -> None:
    # The normaliser dead-letters these; the reader must pass the venue bytes through.
    truncated = '{"stream":"btcusdt@trade","data":{"e":"tra'
    path = write(
        tmp_path / "f",
        [f"1 {truncated}", "2 not json at all", env(3, "solusdt@trade"), "4 [1,2,3]"],
    )
    log = BadLineLog()
    got = list(iter_recorded(path, on_bad_line=log, strict=True))
    assert log.count == 0
    assert [(x.subject, x.kind, x.data) for x in got] == [
        ("md.raw.binance.btcusdt", "trade", truncated.encode()),
        ("md.raw.binance.solusdt", "undecodable", b"not json at all"),
        ("md.raw.binance.solusdt", "trade", env(3, "solusdt@trade")[2:].encode()),
        ("md.raw.binance.solusdt", "undecodable", b"[1,2,3]"),
    ]


def test_envelope_with_other_key_order_or_spacing_falls_back_to_decoding(tmp_path: Path) -> None:
    path = write(
        tmp_path / "f",
        ['1 {"data":{"s":"BTCUSDT"},"stream":"btcusdt@trade"}', '2 { "stream": "ETHUSDT@trade" }'],
    )
    got = [(x.subject, x.kind) for x in iter_recorded(path)]
    assert got == [("md.raw.binance.btcusdt", "trade"), ("md.raw.binance.ethusdt", "trade")]


def test_usdm_and_coinbase_subjects(tmp_path: Path) -> None:
    usdm = write(tmp_path / "usdm", [env(1, "btcusdt@trade", '{"X":"MARKET"}')])
    assert [x.subject for x in iter_recorded(usdm, feed="binance-usdm")] == [
        "md.raw.binance-usdm.btcusdt"
    ]
    cb = write(
        tmp_path / "cb",
        [
            '1 {"type":"match","trade_id":1,"product_id":"BTC-USD","price":"1"}',
            '2 {"type":"ticker","sequence":2,"product_id":"ETH-USD","price":"2"}',
            '3 {"product_id": "BTC-USD", "type": "ticker"}',
            '4 {"type":"subscriptions","channels":[]}',
        ],
    )
    got = [(x.subject, x.kind) for x in iter_recorded(cb, feed="coinbase", symbols=["btc-usd"])]
    assert got == [
        ("md.raw.coinbase.btc-usd", "match"),
        ("md.raw.coinbase.btc-usd", "ticker"),
        # no product_id: attributed to the previous product at the end of the file
        ("md.raw.coinbase.btc-usd", "subscriptions"),
    ]
    with pytest.raises(ValueError, match="unknown feed"):
        list(iter_recorded(cb, feed="kraken"))


def test_wrong_feed_fails_fast_instead_of_buffering_the_file(tmp_path: Path) -> None:
    # Binance lines read as Coinbase name no product_id: the reader must not hold the
    # whole file waiting for a symbol.
    with pytest.raises(RecordingError) as err:
        list(iter_recorded(BTC, feed="coinbase"))
    assert err.value.line_no == 1
    assert "name no symbol" in err.value.reason
    assert "coinbase recording" in err.value.hint


# --------------------------------------------------------------------- filters, merge


@pytest.mark.parametrize("path", [BTC, ETH])
def test_time_filter_is_start_inclusive_end_exclusive(path: Path) -> None:
    stamps = [int(ln.split(b" ", 1)[0]) for ln in raw_lines(path)]
    start, end = stamps[1000], stamps[5000]
    expected = [n for n, ts in enumerate(stamps, start=1) if start <= ts < end]
    got = [x.line_no for x in iter_recorded(path, start_ns=start, end_ns=end)]
    assert got == expected
    assert got[0] == 1001
    assert next(x.line_no for x in iter_recorded(path, start_ns=stamps[-1])) == len(stamps)
    assert list(iter_recorded(path, end_ns=stamps[0])) == []


def test_symbol_filter_is_case_insensitive() -> None:
    got = list(merge_recorded([BTC, ETH], symbols={"ETHUSDT"}))
    assert len(got) == README[ETH]["lines"]
    assert {x.subject for x in got} == {"md.raw.binance.ethusdt"}
    assert list(iter_recorded(BTC, symbols=["solusdt"])) == []


def test_merge_orders_by_receive_time_and_keeps_each_file_whole() -> None:
    merged = list(merge_recorded([BTC, ETH]))
    assert len(merged) == README[BTC]["lines"] + README[ETH]["lines"]
    stamps = [x.ts_recv for x in merged]
    assert stamps == sorted(stamps)
    for path in (BTC, ETH):
        nums = [x.line_no for x in merged if x.path == str(path)]
        assert nums == list(range(1, README[path]["lines"] + 1))


def test_merge_ties_go_to_the_earlier_file_and_file_order_is_kept(tmp_path: Path) -> None:
    a = write(tmp_path / "a", [env(5, "aaa@trade"), env(5, "aaa@bookTicker"), env(3, "aaa@x")])
    b = write(tmp_path / "b", [env(1, "bbb@trade"), env(5, "bbb@trade"), env(9, "bbb@trade")])
    got = [(x.subject[-3:], x.line_no) for x in merge_recorded([a, b])]
    # 'a' goes backwards in time (5, 5, 3): the merge never reorders inside a file.
    assert got == [("bbb", 1), ("aaa", 1), ("aaa", 2), ("aaa", 3), ("bbb", 2), ("bbb", 3)]
    again = [(x.subject[-3:], x.line_no) for x in merge_recorded([a, b])]
    assert again == got
    swapped = [(x.subject[-3:], x.line_no) for x in merge_recorded([b, a])]
    assert swapped[:3] == [("bbb", 1), ("bbb", 2), ("aaa", 1)]


# --------------------------------------------------------------------- errors


def test_missing_file_raises_with_path_and_hint(tmp_path: Path) -> None:
    path = tmp_path / "nope.gz"
    with pytest.raises(RecordingError) as err:
        list(iter_recorded(path))
    assert (err.value.path, err.value.line_no) == (str(path), 0)
    assert str(path) in str(err.value)
    assert "hint:" in str(err.value)
    with pytest.raises(RecordingError):
        list(merge_recorded([BTC, path]))


def test_truncated_gzip_raises_with_the_line_it_stopped_at(tmp_path: Path) -> None:
    blob = BTC.read_bytes()
    path = tmp_path / "truncated.gz"
    path.write_bytes(blob[: len(blob) // 2])
    seen: list[int] = []
    with pytest.raises(RecordingError) as err:
        seen.extend(x.line_no for x in iter_recorded(path))
    assert "corrupt gzip" in err.value.reason
    # Lines before the damage were read; the error names the next line number.
    assert len(seen) > 1000
    assert err.value.line_no > seen[-1]
    assert str(err.value).endswith("re-download or re-record it")


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[:2] + b"\x00" * 50 + blob[52:],  # header and first block wrecked
        lambda blob: blob[: len(blob) // 3] + bytes(4096) + blob[len(blob) // 3 + 4096 :],
        lambda blob: blob[:-8] + b"\x00" * 8,  # CRC/length trailer wrong
    ],
)
def test_corrupt_gzip_raises(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "corrupt.gz"
    path.write_bytes(damage(BTC.read_bytes()))  # type: ignore[operator]
    with pytest.raises(RecordingError) as err:
        list(iter_recorded(path))
    assert err.value.line_no >= 1
    assert err.value.path == str(path)


BAD_FILE = [
    env(1, "btcusdt@trade"),  # 1 ok
    "abc {}",  # 2 receive time not an integer
    "12345",  # 3 no JSON part (no space)
    "",  # 4 blank
    env(5, "btcusdt@trade"),  # 5 ok
    "-5 {}",  # 6 negative time
    "7 ",  # 7 empty JSON
    " 8 {}",  # 8 leading space
    "9    ",  # 9 whitespace-only JSON
    env(10, "btcusdt@trade"),  # 10 ok
]


def test_bad_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "bad", BAD_FILE)
    seen: list[BadLine] = []
    stats = ReadStats()
    got = list(iter_recorded(path, on_bad_line=seen.append, stats=stats))
    assert [x.line_no for x in got] == [1, 5, 10]
    assert [b.line_no for b in seen] == [2, 3, 4, 6, 7, 8, 9]
    assert stats.bad_lines == 7
    assert stats.lines == 10
    assert seen[0].raw == b"abc {}"
    assert "not a non-negative integer" in seen[0].reason
    assert seen[2].reason == "blank line"


def test_strict_raises_on_the_first_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad", BAD_FILE)
    got: list[int] = []
    with pytest.raises(RecordingError) as err:
        got.extend(x.line_no for x in iter_recorded(path, strict=True))
    assert got == [1]
    assert err.value.line_no == 2
    assert f"{path}:2:" in str(err.value)
    assert "without --strict" in str(err.value)


# --------------------------------------------------------------------- pacing


class FakeClock:
    """A clock that only moves when the pacer sleeps (plus an optional oversleep)."""

    def __init__(self, oversleep_ns: int = 0) -> None:
        self.now = 1_000_000_000
        self.oversleep_ns = oversleep_ns
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += round(seconds * 1e9) + self.oversleep_ns


def pace(stamps: list[int], speed: float | None, clock: FakeClock) -> list[int]:
    """Send times the pacer gives each recorded stamp (a send costs 50 µs of clock)."""
    pacer = Pacer(speed, clock, clock.sleep)

    async def go() -> list[int]:
        sent = []
        for ts in stamps:
            await pacer.wait(ts)
            sent.append(clock.now)
            clock.now += 50_000
        return sent

    return asyncio.run(go())


RECORDED = [0, 100_000_000, 150_000_000, 400_000_000, 1_000_000_000, 1_020_000_000]


@pytest.mark.parametrize("speed", [1.0, 10.0])
def test_pacer_keeps_scaled_gaps(speed: float) -> None:
    clock = FakeClock()
    t0 = clock.now
    sent = pace(RECORDED, speed, clock)
    assert [s - t0 for s in sent] == [round(r / speed) for r in RECORDED]


def test_pacer_max_never_sleeps() -> None:
    clock = FakeClock()
    sent = pace(RECORDED, None, clock)
    assert clock.sleeps == []
    assert sent == [sent[0] + 50_000 * i for i in range(len(RECORDED))]


def test_pacer_does_not_drift_when_sleeps_overrun() -> None:
    # Each sleep overruns by 3 ms; 200 messages 10 ms apart. Cumulative sleeping would end
    # 600 ms late; scheduling from the first message stays within one overrun.
    stamps = [i * 10_000_000 for i in range(200)]
    clock = FakeClock(oversleep_ns=3_000_000)
    t0 = clock.now
    sent = pace(stamps, 1.0, clock)
    lateness = [s - t0 - r for s, r in zip(sent, stamps, strict=True)]
    assert max(lateness) <= 3_000_000 + 50_000
    assert min(lateness) >= 0


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 2_000_000_000), min_size=1, max_size=40),
    speed=st.sampled_from([0.5, 1.0, 3.0, 10.0, 100.0]),
    oversleep=st.integers(0, 5_000_000),
)
def test_pacer_never_early_beyond_min_sleep_and_late_by_at_most_one_overrun(
    gaps: list[int], speed: float, oversleep: int
) -> None:
    stamps = [sum(gaps[:i]) for i in range(len(gaps) + 1)]
    clock = FakeClock(oversleep_ns=oversleep)
    t0 = clock.now
    sent = pace(stamps, speed, clock)
    ready = t0  # when the previous send finished (each send costs 50 µs of clock)
    for s, r in zip(sent, stamps, strict=True):
        due = t0 + round(r / speed)
        assert s >= due - 1_000_000  # gaps under 1 ms are not slept
        # Late only by the one sleep's overrun, or because earlier sends were still going.
        assert s <= max(due + oversleep, ready)
        ready = s + 50_000


def test_pacer_refuses_a_non_positive_speed() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="speed must be > 0"):
        Pacer(0.0, clock, clock.sleep)


# --------------------------------------------------------------------- bytewax source


def run_source(source: RecordedSource, **kw: object) -> list[Message]:
    out: list[Message] = []
    flow = Dataflow("recorded")
    stream = op.input("in", flow, source)
    op.output("out", stream, TestingSink(out))
    run_main(flow, **kw)  # type: ignore[arg-type]
    return out


def expected_messages(path: Path, symbol: str) -> set[tuple[str, int, int, bytes]]:
    out = set()
    for n, line in enumerate(raw_lines(path), start=1):
        ts, _, data = line.partition(b" ")
        out.add((f"md.raw.binance.{symbol}", n, int(ts), data))
    return out


def test_source_yields_every_line_exactly_once_in_a_flow() -> None:
    got = run_source(RecordedSource([BTC, ETH], batch_size=777))
    keys = [(m.subject, m.seq, m.ts_recv, m.data) for m in got]
    assert len(keys) == len(set(keys)) == README[BTC]["lines"] + README[ETH]["lines"]
    assert set(keys) == expected_messages(BTC, "btcusdt") | expected_messages(ETH, "ethusdt")
    assert all(m.headers is None for m in got)


def test_source_partition_resumes_after_the_consumed_lines() -> None:
    source = RecordedSource([BTC], batch_size=1000)
    part = source.build_part("in", str(BTC), None)
    first: list[Message] = []
    for _ in range(3):
        first.extend(part.next_batch())
    state = part.snapshot()
    assert state == 3000
    part.close()
    resumed = source.build_part("in", str(BTC), state)
    rest: list[Message] = []
    with pytest.raises(StopIteration):
        while True:
            rest.extend(resumed.next_batch())
    assert rest[0].seq == 3001
    seqs = [m.seq for m in first + rest]
    assert seqs == list(range(1, README[BTC]["lines"] + 1))
    assert resumed.snapshot() == README[BTC]["lines"]


def test_source_resumes_through_bytewax_recovery(tmp_path: Path) -> None:
    # A flow that dies part-way, then restarts from the same recovery store: the second
    # run must start after what the first one committed, and together they see every line.
    from bytewax.recovery import init_db_dir

    db = tmp_path / "recovery"
    db.mkdir()
    init_db_dir(db, 1)
    cfg = RecoveryConfig(str(db))
    crash_at = 20_000

    class Boom(RuntimeError):
        pass

    def maybe_crash(m: Message) -> Message:
        if m.seq == crash_at and not crashed:
            raise Boom
        return m

    crashed = False

    def flow_into(out: list[Message]) -> Dataflow:
        flow = Dataflow("recorded-recovery")
        stream = op.input("in", flow, RecordedSource([BTC], batch_size=500))
        op.output("out", op.map("crash", stream, maybe_crash), TestingSink(out))
        return flow

    first: list[Message] = []
    with pytest.raises(Exception, match=r"recorded-recovery\.crash"):
        run_main(flow_into(first), epoch_interval=timedelta(0), recovery_config=cfg)
    crashed = True
    second: list[Message] = []
    run_main(flow_into(second), epoch_interval=timedelta(0), recovery_config=cfg)
    assert first and second
    assert second[0].seq > 1  # resumed, not re-read from the top
    assert second[0].seq <= crash_at
    seqs = {m.seq for m in first} | {m.seq for m in second}
    assert seqs == set(range(1, README[BTC]["lines"] + 1))


def test_source_reports_bad_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "bad", BAD_FILE)
    log = BadLineLog()
    got = run_source(RecordedSource([path], on_bad_line=log))
    assert [m.seq for m in got] == [1, 5, 10]
    assert log.count == 7


def test_source_refuses_a_file_listed_twice() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        RecordedSource([BTC, str(BTC)])
