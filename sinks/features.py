"""Feature rows to the feature store: Parquet for the offline store, a push for online.

Each batch of :class:`~schemas.features.Bar` / :class:`~schemas.features.AccountWindow`
becomes, per feature view, one Parquet file under ``<data>/offline/<view>/`` (what the
duckdb offline store reads for point-in-time joins and materialization) and one
``FeatureStore.push(..., to=PushMode.ONLINE)`` so serving sees fresh windows at once.

Why Parquet and not Delta: Feast 0.67's duckdb offline store reads Delta through DuckDB's
``delta`` extension, which it downloads at run time; Parquet needs nothing extra. Why the
sink writes the files itself rather than ``PushMode.ONLINE_AND_OFFLINE``: Feast's offline
append rewrites one whole file per push, which cannot target a folder of files.

File names are deterministic (``<first end>-<last end>-<rows>-<digest>.parquet``), so
re-running the flow over the same input rewrites the same files instead of duplicating
rows. Writes go to a temporary name first and are renamed into place, so a reader never
sees half a file. Exact decimals become float64 here, once: the store has no decimal type.

``feast`` is imported only inside :class:`FeatureStoreSink`'s partitions and the push
helper, because importing it costs seconds.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.features import width_label
from schemas.features import (
    ACCOUNT_FEATURES,
    INSTRUMENT_FEATURES,
    INT_FEATURES,
    AccountFeatureRow,
    AccountWindow,
    Bar,
    FeatureRow,
    account_feature_row,
    feature_row,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

#: Where definitions.py and this sink put offline data unless told otherwise.
DATA_ENV = "TRADE2026_FEATURE_DATA"
DEFAULT_REPO = Path(__file__).resolve().parent.parent / "feature_repo"
#: Every feature view the repo defines: view -> (join key, features).
VIEW_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "instrument_bars_1s": ("instrument_id", INSTRUMENT_FEATURES),
    "instrument_bars_1m": ("instrument_id", INSTRUMENT_FEATURES),
    "account_pnl_1m": ("account_id", ACCOUNT_FEATURES),
}


def data_dir(repo_path: Path | str | None = None) -> Path:
    """The offline data folder: ``$TRADE2026_FEATURE_DATA`` or ``<repo>/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).resolve()
    return (Path(repo_path) if repo_path else DEFAULT_REPO).resolve() / "data"


def view_name(record: Bar | AccountWindow) -> str:
    if isinstance(record, Bar):
        return f"instrument_bars_{width_label(record.width_ns)}"
    return f"account_pnl_{width_label(record.width_ns)}"


def arrow_schema(view: str) -> pa.Schema:
    import pyarrow as pa

    key, features = VIEW_COLUMNS[view]
    ts = pa.timestamp("us", tz="UTC")
    fields = [pa.field(key, pa.string()), pa.field("event_timestamp", ts)]
    fields.append(pa.field("window_start", ts))
    fields += [pa.field(f, pa.int64() if f in INT_FEATURES else pa.float64()) for f in features]
    return pa.schema(fields)


def to_arrow(view: str, rows: Sequence[FeatureRow | AccountFeatureRow]) -> pa.Table:
    """Store rows as an Arrow table: timestamps in µs UTC (windows end on whole µs)."""
    import pyarrow as pa

    key, features = VIEW_COLUMNS[view]
    cols: dict[str, list[Any]] = {
        key: [getattr(r, key) for r in rows],
        "event_timestamp": [r.event_timestamp_ns // 1000 for r in rows],
        "window_start": [r.window_start_ns // 1000 for r in rows],
    }
    for f in features:
        cols[f] = [getattr(r, f) for r in rows]
    return pa.table(cols, schema=arrow_schema(view))


def write_offline(root: Path, view: str, rows: Sequence[FeatureRow | AccountFeatureRow]) -> Path:
    """Write one Parquet file of ``rows`` for ``view``; returns its path."""
    import pyarrow.parquet as pq

    table = to_arrow(view, rows)
    folder = root / "offline" / view
    folder.mkdir(parents=True, exist_ok=True)
    ends = [r.event_timestamp_ns for r in rows]
    digest = hashlib.sha1(
        b"".join(
            f"{getattr(r, VIEW_COLUMNS[view][0])}@{r.event_timestamp_ns}".encode() for r in rows
        )
    ).hexdigest()[:12]
    path = folder / f"{min(ends)}-{max(ends)}-{len(rows)}-{digest}.parquet"
    tmp = folder / f".{path.name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def ensure_offline(root: Path) -> None:
    """Give every view's folder an empty, typed file so the offline store can read it
    before the flow has written anything (a glob matching no file is an error)."""
    import pyarrow.parquet as pq

    for view in VIEW_COLUMNS:
        folder = root / "offline" / view
        folder.mkdir(parents=True, exist_ok=True)
        empty = folder / "empty.parquet"
        if not empty.exists():
            pq.write_table(arrow_schema(view).empty_table(), empty)


def push_online(
    store: FeatureStore, view: str, rows: Sequence[FeatureRow | AccountFeatureRow]
) -> None:
    """Write rows straight into the online store through the view's push source."""
    from feast.data_source import PushMode

    df = to_arrow(view, rows).to_pandas()
    store.push(view, df, to=PushMode.ONLINE)


def store_rows(
    records: Iterable[Bar | AccountWindow],
) -> dict[str, list[FeatureRow | AccountFeatureRow]]:
    """Group flow records by feature view, flattened for the store."""
    by_view: dict[str, list[FeatureRow | AccountFeatureRow]] = defaultdict(list)
    for rec in records:
        row = feature_row(rec) if isinstance(rec, Bar) else account_feature_row(rec)
        by_view[view_name(rec)].append(row)
    return by_view


class _FeaturePartition(StatelessSinkPartition[Bar | AccountWindow]):
    def __init__(
        self, repo_path: Path, fs_yaml_file: Path | None, root: Path, online: bool
    ) -> None:
        self.root = root
        self.store: FeatureStore | None = None
        if online:
            from feast import FeatureStore

            self.store = FeatureStore(repo_path=str(repo_path), fs_yaml_file=fs_yaml_file)
        self.files_written = 0

    def write_batch(self, items: list[Bar | AccountWindow]) -> None:
        for view, rows in store_rows(items).items():
            if view not in VIEW_COLUMNS:
                raise ValueError(
                    f"features sink: no feature view {view!r} in the repo; "
                    f"hint: add it to feature_repo/definitions.py (have {sorted(VIEW_COLUMNS)})"
                )
            write_offline(self.root, view, rows)
            self.files_written += 1
            if self.store is not None:
                push_online(self.store, view, rows)


class FeatureStoreSink(DynamicSink[Bar | AccountWindow]):
    """Offline Parquet + online push for every batch of bars and account windows.

    ``online=False`` writes only the offline files (for backfills: materialize later).
    """

    def __init__(
        self,
        repo_path: Path | str = DEFAULT_REPO,
        fs_yaml_file: Path | str | None = None,
        online: bool = True,
    ) -> None:
        self.repo_path = Path(repo_path).resolve()
        self.fs_yaml_file = Path(fs_yaml_file) if fs_yaml_file else None
        if self.fs_yaml_file is not None and not self.fs_yaml_file.is_absolute():
            self.fs_yaml_file = self.repo_path / self.fs_yaml_file
        self.root = data_dir(self.repo_path)
        self.online = online

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FeaturePartition:
        return _FeaturePartition(self.repo_path, self.fs_yaml_file, self.root, self.online)


__all__ = [
    "DATA_ENV",
    "DEFAULT_REPO",
    "VIEW_COLUMNS",
    "FeatureStoreSink",
    "arrow_schema",
    "data_dir",
    "ensure_offline",
    "push_online",
    "store_rows",
    "to_arrow",
    "view_name",
    "write_offline",
]
