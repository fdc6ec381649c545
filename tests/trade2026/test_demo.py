"""``trade2026 demo`` end to end, as a user runs it: its own nats-server, every flow, a report.

The numbers it prints are checked against counts taken straight from the raw files.
"""

from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _count(needle: bytes) -> int:
    n = 0
    for path in DATA.glob("*.gz"):
        with gzip.open(path) as f:
            n += sum(1 for line in f if needle in line[:80])
    return n


@pytest.mark.slow
def test_demo_runs_everything_and_reports_honest_numbers(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        NATS_URL=f"nats://127.0.0.1:{_free_port()}",
        TRADE2026_STATE_DIR=str(tmp_path),
        COLUMNS="160",
    )
    run = subprocess.run(
        [sys.executable, "-m", "trade2026.cli", "demo", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "started a local nats-server" in out

    def row(label: str) -> int:
        m = re.search(rf"{label}\s+│\s+([\d,]+)", out)
        assert m, f"no {label!r} row in:\n{out}"
        return int(m.group(1).replace(",", ""))

    assert row("trade ticks") == _count(b"@trade")
    assert row("quotes") == _count(b"@bookTicker")
    assert row("book deltas") == _count(b"@depth") + _count(b"lastUpdateId")
    assert row("dead letters") == 5  # the demo's five deliberately broken messages
    cell = r"\s+│\s+([\d,]+)"
    total = re.search(r"│ total" + cell * 4 + r"\s+│\s+yes", out)
    assert total, out
    lines = 0
    for path in DATA.glob("*.gz"):
        with gzip.open(path) as f:
            lines += sum(1 for _ in f)
    assert int(total.group(1).replace(",", "")) == lines + 5 + 3  # + broken + re-sent
    assert total.group(4) == "3"  # the three re-sent trades were counted as duplicates
    assert "denied: UNKNOWN_ACCOUNT" in out and "P&L per account" in out
    report = tmp_path / "quality" / "report" / "index.html"
    assert f"quality report: {report}" in out.replace("\n", "")
    assert report.is_file() and "normalize" in report.read_text()
