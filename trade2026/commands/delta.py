"""``trade2026 delta compact|vacuum|stats TABLE``: maintenance of the Delta tables.

TABLE is a table path or URI, e.g. ``data/delta/ticks/trades`` or
``s3://bucket/lake/alt/news``; storage options come from the ``AWS_*`` environment.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

VACUUM_HELP = """Delete data files no longer referenced by TABLE.

Without --execute this is a DRY RUN that only lists the files: deltalake's vacuum()
with default arguments is a dry run with 168 h retention. Files are only removed when
older than --retention-hours (default 168 h). WARNING: vacuuming breaks time travel to
the table versions whose files it removes.
"""


def _open(table: str) -> Any:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from sinks.delta import storage_options_from_env

    try:
        return DeltaTable(table, storage_options=storage_options_from_env(table))
    except TableNotFoundError as exc:
        raise click.ClickException(
            f"delta: no Delta table at {table!r}; hint: pass a table directory such as "
            "var/lake/ticks/trades"
        ) from exc


def table_stats(dt: Any) -> dict[str, Any]:
    """Files, rows, versions and bytes of the current snapshot."""
    import pyarrow as pa
    import pyarrow.compute as pc

    actions = pa.table(dt.get_add_actions(flatten=True))  # arro3 -> pyarrow
    rows = actions.column("num_records") if "num_records" in actions.column_names else None
    return {
        "version": dt.version(),
        "versions": len(dt.history()),
        "files": actions.num_rows,
        "rows": int(pc.sum(rows).as_py() or 0) if rows is not None else None,
        "size_bytes": int(pc.sum(actions.column("size_bytes")).as_py() or 0),
        "partition_columns": list(dt.metadata().partition_columns),
    }


@click.group("delta")
def delta() -> None:
    """Maintain the Delta tick and alternative-data tables."""


@delta.command("stats")
@click.argument("table")
def stats(table: str) -> None:
    """Print files, rows, versions and size of TABLE as JSON."""
    click.echo(json.dumps(table_stats(_open(table)), indent=2))


@delta.command("compact")
@click.argument("table")
@click.option("--target-size", type=int, default=None, help="Target file size in bytes.")
def compact(table: str, target_size: int | None) -> None:
    """Merge small files of TABLE (optimize.compact); readers keep working."""
    dt = _open(table)
    t0 = time.perf_counter()
    metrics = dt.optimize.compact(target_size=target_size)
    out = {
        "files_added": metrics.get("numFilesAdded"),
        "files_removed": metrics.get("numFilesRemoved"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    click.echo(json.dumps(out))


@delta.command("vacuum", help=VACUUM_HELP)
@click.argument("table")
@click.option("--retention-hours", type=int, default=168, show_default=True)
@click.option("--execute", is_flag=True, help="Really delete (default: dry run, list only).")
@click.option(
    "--no-enforce-retention",
    is_flag=True,
    help="Allow a retention shorter than the table's minimum (dangerous for readers).",
)
def vacuum(table: str, retention_hours: int, execute: bool, no_enforce_retention: bool) -> None:
    dt = _open(table)
    files = dt.vacuum(
        retention_hours=retention_hours,
        dry_run=not execute,
        enforce_retention_duration=not no_enforce_retention,
    )
    verb = "deleted" if execute else "would delete (dry run)"
    click.echo(json.dumps({verb: len(files), "files": files}))
