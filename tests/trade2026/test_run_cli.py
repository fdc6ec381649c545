"""``trade2026 run normalize`` as a process, fed by ``trade2026 replay``, watched by ``status``.

This is the production path end to end: JetStream streams created on start, recovery
snapshots on by default, metrics served, and the counts read back over HTTP.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
CLI = [sys.executable, "-m", "trade2026.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_run_normalize_processes_a_replay_and_status_reports_it(
    own_nats_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    path = DATA / "spot_ethusdt_20240808.gz"
    with gzip.open(path) as f:
        lines = sum(1 for _ in f)
    port = _free_port()
    env = dict(os.environ, NATS_URL=own_nats_server.url, TRADE2026_STATE_DIR=str(tmp_path))
    flow = subprocess.Popen(
        [*CLI, "run", "normalize", "--metrics-port", str(port), "--report-every", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        endpoint = f"http://127.0.0.1:{port}/metrics"
        status = [*CLI, "status", "--once", "--json", "--endpoint", endpoint]
        deadline = time.monotonic() + 60
        while subprocess.run(status, env=env, capture_output=True).returncode != 0:
            assert flow.poll() is None, flow.stdout.read() if flow.stdout else ""
            assert time.monotonic() < deadline, "the flow never served metrics"
            time.sleep(0.2)
        replay = subprocess.run([*CLI, "replay", str(path), "--speed", "max", "--quiet"],
                                env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        seen = -1
        while time.monotonic() < deadline + 60:
            out = subprocess.run(status, env=env, capture_output=True, text=True)
            doc = json.loads(out.stdout)
            text = json.dumps(doc)
            stages = {s["stage"]: s for s in doc.get("stages", [])} if "stages" in doc else {}
            seen = int(stages.get("normalize", {}).get("in", -1)) if stages else -1
            if seen == lines:
                break
            time.sleep(0.5)
        assert seen == lines, text
        normalize = stages["normalize"]
        assert normalize["unaccounted"] == 0
        assert (
            normalize["in"]
            == normalize["out"] + normalize["dead_lettered"] + normalize["duplicates"]
        )
    finally:
        flow.send_signal(signal.SIGINT)
        try:
            flow.wait(timeout=20)
        except subprocess.TimeoutExpired:
            flow.kill()
    # recovery was on by default: snapshots exist under the state dir
    assert any((tmp_path / "recovery" / "normalize").iterdir())
