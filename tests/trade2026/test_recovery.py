"""Recovery: recovery-directory management, and kill -9 at random points with exact results.

The kill tests run the real flows in child processes (``python -m flows.pipeline``)
against a private nats-server, SIGKILL them at seeded random points several times,
restart them on the same recovery directory, and compare what ended up in JetStream and
in Delta with an uninterrupted run of the same flow: nothing missing, nothing twice.
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.normalize import build_flow
from schemas.canonical import Tick
from schemas.transport import Outgoing
from tests.faults import (
    ROOT,
    Runner,
    add_streams,
    js_publish,
    read_stream,
    recorded_messages,
    stream_count,
)
from trade2026.natsserver import LocalNatsServer
from trade2026.recovery import (
    RecoveryError,
    RecoverySettings,
    default_recovery_dir,
    init_recovery_dir,
    partition_indexes,
    run_kwargs,
)

SEED = 20240808
KILLS = 3


# -- the recovery directory ----------------------------------------------------------------
def test_recovery_dir_defaults_under_the_state_dir() -> None:
    assert default_recovery_dir("normalize", env={}) == Path("var/recovery/normalize")
    env = {"TRADE2026_STATE_DIR": "/srv/t26"}
    assert default_recovery_dir("normalize", env=env) == Path("/srv/t26/recovery/normalize")


def test_init_creates_partitions_once_and_keeps_them(tmp_path: Path) -> None:
    db = tmp_path / "rec" / "normalize"
    assert init_recovery_dir(db, 2) == 2
    assert sorted(p.name for p in db.iterdir()) == ["part-0.sqlite3", "part-1.sqlite3"]
    before = {p.name: p.stat().st_mtime_ns for p in db.iterdir()}
    # A restart (even with more workers) must not re-create or add partitions.
    assert init_recovery_dir(db, 4) == 2
    assert {p.name: p.stat().st_mtime_ns for p in db.iterdir()} == before


def test_bad_recovery_dirs_are_refused_with_a_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecoveryError, match=r"not a directory.*hint"):
        init_recovery_dir(blocker, 1)
    holes = tmp_path / "holes"
    init_recovery_dir(holes, 3)
    (holes / "part-1.sqlite3").unlink()
    with pytest.raises(RecoveryError, match=r"\[0, 2\].*hint"):
        init_recovery_dir(holes, 3)
    with pytest.raises(RecoveryError, match="positive"):
        RecoverySettings(tmp_path / "x", epoch_interval=timedelta(0))


def test_a_second_run_resumes_where_the_first_snapshot_left(tmp_path: Path) -> None:
    msgs = [m for _, m in recorded_messages()[:300]]
    settings = RecoverySettings(tmp_path / "rec", epoch_interval=timedelta(milliseconds=50))
    first: list[Outgoing] = []
    run_main(build_flow(TestingSource(msgs[:200]), TestingSink(first)), **run_kwargs(settings))
    second: list[Outgoing] = []
    run_main(build_flow(TestingSource(msgs), TestingSink(second)), **run_kwargs(settings))
    whole: list[Outgoing] = []
    run_main(build_flow(TestingSource(msgs), TestingSink(whole)))
    assert len(first) == 200
    assert [o.data for o in second] == [o.data for o in whole[200:]]
    assert partition_indexes(tmp_path / "rec") == [0]


# -- kill -9 ----------------------------------------------------------------------------
def _reference() -> list[tuple[str, bytes]]:
    """The uninterrupted run: the same normalize flow in-process, no crash, no NATS."""
    out: list[Outgoing] = []
    run_main(
        build_flow(
            TestingSource([m for _, m in recorded_messages()], batch_size=1000), TestingSink(out)
        )
    )
    return [(o.subject, o.data) for o in out]


def _wait_until(pred: Callable[[], bool], runner: Runner, what: str, timeout_s: float = 30) -> None:
    runner.wait_until(pred, what, timeout_s)


def _resumes(log: Path) -> list[int | None]:
    if not log.exists():
        return []
    found = re.findall(r"^resume \S+ (\S+)$", log.read_text(), flags=re.M)
    return [None if s == "None" else int(s) for s in found]


def _committed_epoch(rec_dir: Path | None) -> int:
    """The highest epoch every partition of the recovery store has committed (0 if none).

    Read straight from Bytewax's SQLite files, so a kill can be timed to land after a
    snapshot this run made, whatever the flow's speed relative to its epoch interval.
    """
    if rec_dir is None or not rec_dir.is_dir():
        return 0
    best = 0
    for part in sorted(rec_dir.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            row = db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
        best = max(best, row[0] or 0)
    return best


def _kill_and_resume(
    runner: Runner,
    progress: Callable[[], int],
    targets: list[int],
    rec_dir: Path | None = None,
) -> list[int]:
    """Start, kill -9 once progress passes each target, then run to completion.

    With ``rec_dir``, each kill also waits until the run has committed a snapshot of its
    own, so every restart has something to resume from: a fast flow can otherwise reach
    its target inside one epoch and make the test prove nothing about resuming.
    """
    at_kill: list[int] = []
    for target in targets:
        before = _committed_epoch(rec_dir)
        runner.start()
        _wait_until(lambda t=target: progress() >= t, runner, f"progress {target}")  # type: ignore[misc]
        if rec_dir is not None:
            _wait_until(lambda b=before: _committed_epoch(rec_dir) > b, runner, "a snapshot")  # type: ignore[misc]
        runner.kill9()
        at_kill.append(progress())
    runner.start()
    rc = runner.wait(60)
    assert rc == 0, runner.log.read_text()[-3000:]
    return at_kill


@pytest.fixture
def raw_stream(own_nats_server: LocalNatsServer) -> tuple[str, int]:
    url = own_nats_server.url
    add_streams(url, {"MD_RAW": ["md.raw.>"]})
    msgs = recorded_messages()
    assert js_publish(url, msgs) == len(msgs)
    return url, len(msgs)


def test_normalize_killed_at_random_points_publishes_exactly_the_uninterrupted_output(
    raw_stream: tuple[str, int], tmp_path: Path
) -> None:
    url, n_raw = raw_stream
    expected = _reference()
    # Independent sanity: the sample is clean, one tick per raw line.
    assert len(expected) == n_raw
    rng = random.Random(SEED)
    targets = sorted(rng.sample(range(n_raw // 10, n_raw * 9 // 10), KILLS))
    runner = Runner(
        [
            "normalize",
            "--nats-url", url,
            "--recovery-dir", str(tmp_path / "rec"),
            "--epoch-interval", "0.2",
            "--idle-timeout", "1.5",
        ],
        tmp_path / "normalize.log",
    )  # fmt: skip
    try:
        at_kill = _kill_and_resume(
            runner, lambda: stream_count(url, "MD"), targets, rec_dir=tmp_path / "rec"
        )
    finally:
        runner.stop()

    got = read_stream(url, "MD") + read_stream(url, "DLQ")
    missing = Counter(expected) - Counter(got)
    extra = Counter(got) - Counter(expected)
    assert not missing and not extra, (
        f"{sum(missing.values())} missing, {sum(extra.values())} extra; kills at {at_kill}"
    )
    resumes = _resumes(runner.log)
    assert len(resumes) == KILLS + 1 and resumes[0] is None
    # Every restart resumed from a snapshot, behind where output had got to: the
    # replayed stretch was published again and JetStream dropped it by Nats-Msg-Id.
    assert all(r is not None and r > 0 for r in resumes[1:]), resumes
    assert any(r < k for r, k in zip(resumes[1:], at_kill, strict=True) if r is not None), (
        resumes,
        at_kill,
    )


_KIND = {"TradeTick": "trade", "Quote": "quote", "BookDelta": "book_delta"}


def _commits(root: Path) -> int:
    """Data commits in the tick tables so far, read from the Delta logs independently.

    Version 0 of each table is its creation, not data, so it is not counted.
    """
    from sinks.delta import KINDS

    logs = (root / "ticks" / table / "_delta_log" for table in KINDS.values())
    return sum(max(0, len(list(d.glob("*.json"))) - 1) for d in logs if d.is_dir())


def _delta_rows(root: Path, kind: str) -> list[dict[str, object]]:
    from deltalake import DeltaTable

    from sinks.delta import table_uri

    return DeltaTable(table_uri(str(root), kind)).to_pyarrow_table().to_pylist()


def test_tick_sink_killed_at_random_points_writes_every_tick_to_delta_once(
    own_nats_server: LocalNatsServer, tmp_path: Path
) -> None:
    url = own_nats_server.url
    expected = _reference()
    add_streams(url, {"MD": ["md.ticks.>", "md.gaps.>"], "DLQ": ["dlq.>"]})
    ticks = [(s, d) for s, d in expected if s.startswith("md.ticks.")]
    from schemas.transport import Message

    assert js_publish(url, [(f"t{i}", Message(s, d, 0)) for i, (s, d) in enumerate(ticks)]) == len(
        ticks
    )
    root = tmp_path / "delta"
    rng = random.Random(SEED + 1)
    runner = Runner(
        [
            "ticks-sink",
            "--nats-url", url,
            "--recovery-dir", str(tmp_path / "rec"),
            "--epoch-interval", "0.2",
            "--idle-timeout", "1.5",
            "--delta-root", str(root),
        ],
        tmp_path / "ticks.log",
    )  # fmt: skip
    commits_at_kill: list[int] = []
    try:
        for _ in range(KILLS):
            before = _commits(root)
            runner.start()
            # Kill at a random moment after this run committed something of its own.
            _wait_until(lambda b=before: _commits(root) > b, runner, "a Delta commit")  # type: ignore[misc]
            time.sleep(rng.uniform(0.0, 0.4))
            runner.kill9()
            commits_at_kill.append(_commits(root))
        runner.start()
        assert runner.wait(60) == 0, runner.log.read_text()[-3000:]
    finally:
        runner.stop()

    decode = msgspec.json.Decoder(Tick).decode
    want: Counter[tuple[str, object]] = Counter()
    for _, data in ticks:
        t = decode(data)
        ident = getattr(t, "trade_id", None) or getattr(t, "update_id", None)
        if ident is None:
            ident = (t.first_update_id, t.last_update_id)
        want[(_KIND[type(t).__name__], ident)] += 1
    have: Counter[tuple[str, object]] = Counter()
    prices: set[Decimal] = set()
    for kind, field in (("trade", "trade_id"), ("quote", "update_id"), ("book_delta", None)):
        for row in _delta_rows(root, kind):
            ident = row[field] if field else (row["first_update_id"], row["last_update_id"])
            have[(kind, ident)] += 1
            if kind == "trade":
                prices.add(row["price"])  # type: ignore[arg-type]
    assert have == want, (
        f"missing {sum((want - have).values())}, extra {sum((have - want).values())}"
    )
    want_prices = {decode(d).price for _, d in ticks if b'"kind":"trade"' in d}
    assert prices == want_prices
    resumes = _resumes(runner.log)
    assert len(resumes) == KILLS + 1
    # At least one restart resumed from a snapshot (a kill can land before a run's first
    # snapshot; that restart then starts over and relies on Delta's transaction ids).
    assert any(r for r in resumes[1:]), f"no restart resumed from a snapshot: {resumes}"


# -- the CLI ------------------------------------------------------------------------------
def test_run_is_recovery_on_by_default_and_can_be_turned_off(
    nats_server: LocalNatsServer, tmp_path: Path
) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "trade2026.cli", "run", "--help"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    for flag in ("--recovery-dir", "--no-recovery", "--epoch-interval"):
        assert flag in help_text

    def launch(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "trade2026.cli", "run", "normalize", "--report-every", "0",
             "--nats-url", nats_server.url, *extra],
            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "TRADE2026_STATE_DIR": str(tmp_path / "st"),
                               "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    default_dir = tmp_path / "st" / "recovery" / "normalize"
    proc = launch("-w", "2")
    try:
        deadline = time.monotonic() + 30
        while len(partition_indexes(default_dir)) < 2:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no recovery partitions appeared"
            time.sleep(0.05)
    finally:
        proc.kill()
        out = proc.communicate()[0]
    assert partition_indexes(default_dir) == [0, 1]
    assert str(default_dir.relative_to(tmp_path)) in out or str(default_dir) in out

    off = launch("--no-recovery")
    try:
        time.sleep(3)
        assert off.poll() is None, off.communicate()[0]
    finally:
        off.kill()
        off.communicate()
    assert partition_indexes(default_dir) == [0, 1]  # untouched, and no other dir made
    assert sorted(p.name for p in (tmp_path / "st" / "recovery").iterdir()) == ["normalize"]
