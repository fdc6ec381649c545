"""``trade2026 delta`` against a real local tick table."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner

from schemas.canonical import TradeTick
from schemas.common import Aggressor
from sinks.delta import DeltaTicksConfig, Stamped, TickTableWriter, table_uri
from trade2026.commands.delta import delta

T0 = 1_700_000_000 * 10**9


def make_table(root: Path) -> str:
    w = TickTableWriter(DeltaTicksConfig(root=str(root)), kinds=["trade"])
    for b in range(5):
        w.write(
            [
                Stamped(
                    "o",
                    b * 10 + k + 1,
                    TradeTick(
                        "X", Decimal("1.5"), Decimal(1), Aggressor.BUY, str(k), T0 + k, T0 + k
                    ),
                )
                for k in range(10)
            ]
        )
    return table_uri(str(root), "trade")


def test_stats_compact_vacuum(tmp_path: Path) -> None:
    uri = make_table(tmp_path)
    run = CliRunner()
    res = run.invoke(delta, ["stats", uri])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert (s["files"], s["rows"], s["versions"], s["partition_columns"]) == (5, 50, 6, ["date"])
    assert s["size_bytes"] > 0

    res = run.invoke(delta, ["compact", uri])
    assert res.exit_code == 0 and json.loads(res.output)["files_removed"] == 5
    s = json.loads(run.invoke(delta, ["stats", uri]).output)
    assert (s["files"], s["rows"]) == (1, 50)

    res = run.invoke(delta, ["vacuum", uri])  # dry run, 168 h: nothing is old enough
    assert res.exit_code == 0 and json.loads(res.output)["would delete (dry run)"] == 0
    res = run.invoke(delta, ["vacuum", uri, "--retention-hours", "0", "--no-enforce-retention"])
    assert json.loads(res.output)["would delete (dry run)"] == 5
    assert len(list(Path(uri).rglob("*.parquet"))) == 6  # dry run deleted nothing
    res = run.invoke(
        delta, ["vacuum", uri, "--retention-hours", "0", "--no-enforce-retention", "--execute"]
    )
    assert json.loads(res.output)["deleted"] == 5
    assert len(list(Path(uri).rglob("*.parquet"))) == 1


def test_help_warns_about_dry_run_and_time_travel() -> None:
    out = CliRunner().invoke(delta, ["vacuum", "--help"]).output
    assert "DRY RUN" in out and "168 h" in out and "time travel" in out


def test_missing_table_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(delta, ["stats", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "hint:" in res.output
