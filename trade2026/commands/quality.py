"""``trade2026 quality report|check``: the data-quality report, and on-demand suite checks.

``check`` is for CI pipelines: exit 0 when the file or table passes the suite, 1 when it
fails, 2 on usage errors (an unknown suite or file type), 3 when the input cannot be read.
pandas, deltalake and great_expectations are imported only when a command runs.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from trade2026 import exitcodes

DEFAULT_STORE = "var/quality"
DEFAULT_OUT = "var/quality/report"


def _store_default() -> str:
    return os.environ.get("TRADE2026_QUALITY_STORE", DEFAULT_STORE)


def parse_time(value: str | None) -> int | None:
    """Integer ns since the epoch, or ISO 8601 (naive means UTC)."""
    if value is None:
        return None
    if value.strip().isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither ns since the epoch nor ISO 8601; hint: e.g. 2024-08-08T23:55:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


@click.group("quality")
def quality_command() -> None:
    """Data quality: the HTML report and on-demand suite checks."""


@quality_command.command("report")
@click.option("--since", help="Start of the range: ns since the epoch or ISO 8601 (UTC).")
@click.option("--until", help="End of the range (inclusive): ns or ISO 8601 (UTC).")
@click.option("--out", "out", default=DEFAULT_OUT, show_default=True, help="Output directory.")
@click.option(
    "--store",
    default=_store_default,
    show_default=f"env TRADE2026_QUALITY_STORE or {DEFAULT_STORE}",
    help="The quality store the flows write (validations, accounting).",
)
@click.option("--no-gx-pages", is_flag=True, help="Skip the GX Data Docs pages (saves ~4 s).")
def report_command(
    since: str | None, until: str | None, out: str, store: str, no_gx_pages: bool
) -> None:
    """Write the HTML quality report to OUT/index.html and print its path."""
    from operators.quality.report import build_report

    lo, hi = parse_time(since), parse_time(until)
    if lo is not None and hi is not None and lo > hi:
        raise click.UsageError("quality report: --since is after --until; hint: swap them")
    index = build_report(store, out, lo, hi, gx_pages=not no_gx_pages)
    click.echo(str(index))


def read_input(path: str) -> Any:
    """A pandas frame from a Delta table directory, parquet, CSV or JSON lines file."""
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        if not (p / "_delta_log").is_dir():
            raise click.UsageError(
                f"quality check: {path} is a directory but not a Delta table; "
                "hint: pass a table directory (with _delta_log) or a file"
            )
        from deltalake import DeltaTable

        return DeltaTable(str(p)).to_pandas()
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    readers = {
        ".parquet": pd.read_parquet,
        ".csv": pd.read_csv,
        ".csv.gz": pd.read_csv,
        ".jsonl": lambda f: pd.read_json(f, lines=True),
        ".ndjson": lambda f: pd.read_json(f, lines=True),
        ".json": lambda f: pd.read_json(f, lines=True),
        ".jsonl.gz": lambda f: pd.read_json(f, lines=True),
    }
    if suffix not in readers:
        raise click.UsageError(
            f"quality check: cannot tell the format of {path}; "
            "hint: use .parquet, .csv, .jsonl/.ndjson or a Delta table directory"
        )
    if not p.is_file():
        raise FileNotFoundError(path)
    return readers[suffix](p)


@quality_command.command("check")
@click.argument("source", metavar="FILE|TABLE")
@click.option("--suite", required=True, help="Suite name: a file in quality/suites (a stage).")
@click.option("--suites-dir", default=None, help="Directory of suite JSON files.")
def check_command(source: str, suite: str, suites_dir: str | None) -> None:
    """Validate FILE (parquet, CSV, JSON lines) or a Delta TABLE against a suite.

    Exit 0 pass, 1 fail, 2 usage error, 3 unreadable input.
    """
    from operators.quality.suites import load_suite_json, suite_names

    try:
        meta = load_suite_json(suite, suites_dir).get("meta") or {}
    except FileNotFoundError:
        known = ", ".join(suite_names(suites_dir)) or "none"
        raise click.UsageError(f"quality check: no suite {suite!r}; hint: one of {known}") from None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        raw = read_input(source)
    except click.UsageError:
        raise
    except Exception as exc:
        click.echo(
            f"quality check: cannot read {source} ({type(exc).__name__}: {exc}); "
            "hint: is it a readable parquet/CSV/JSON-lines file or Delta table?",
            err=True,
        )
        sys.exit(exitcodes.BAD_INPUT)

    from operators.quality.batch import SuiteValidator, expectation_rows, prepare_frame

    stage = str(meta.get("stage", suite))
    validator = SuiteValidator(suite, suites_dir)
    result = validator.validate(prepare_frame(stage, raw))
    rows = expectation_rows(result)
    failed = [r for r in rows if not r["success"]]
    stats = result.get("statistics") or {}
    verdict = "PASS" if result.get("success") else "FAIL"
    click.echo(
        f"{verdict} {source} against suite {suite}: {len(raw)} rows, "
        f"{stats.get('successful_expectations', 0)}/{stats.get('evaluated_expectations', 0)} "
        "expectations met"
    )
    for r in failed:
        what = r["exception"] or (
            f"unexpected={r['unexpected_count']} observed={r['observed_value']} "
            f"examples={r['examples']}"
        )
        click.echo(f"  failed {r['expectation_type']}({r['column'] or ''}): {what}")
    sys.exit(exitcodes.OK if result.get("success") else exitcodes.PROBLEM_FOUND)


__all__ = ["check_command", "parse_time", "quality_command", "report_command"]
