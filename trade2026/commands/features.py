"""``trade2026 features``: apply the Feast repo, materialize, read online, build training sets.

``import feast`` takes seconds, so this module imports it only inside the commands that
need it: ``trade2026 --help`` and every other verb start without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

REPO_ENV = "TRADE2026_FEATURE_REPO"
_DEFAULT_REPO = Path(__file__).resolve().parent.parent.parent / "feature_repo"
DEFAULT_INSTRUMENT_VIEW = "instrument_bars_1m"


class _Ctx:
    def __init__(self, repo: Path, config: str | None) -> None:
        self.repo = repo
        self.config = config
        self._store: FeatureStore | None = None

    @property
    def yaml_file(self) -> Path:
        path = Path(self.config) if self.config else Path("feature_store.yaml")
        return path if path.is_absolute() else self.repo / path

    def store(self) -> FeatureStore:
        if self._store is None:
            from feast import FeatureStore

            if not self.yaml_file.exists():
                raise click.ClickException(
                    f"features: no {self.yaml_file}; "
                    "hint: pass --repo DIR holding feature_store.yaml"
                )
            self._store = FeatureStore(repo_path=str(self.repo), fs_yaml_file=self.yaml_file)
        return self._store


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def load_definitions(repo: Path) -> list[Any]:
    """The Feast objects in ``<repo>/definitions.py``, loaded fresh under a unique name.

    Unlike ``feast apply`` this neither changes directory nor caches the module as
    ``definitions``, so several repos (tests, staging) can be applied from one process.
    """
    from feast import Entity, FeatureService, FeatureView

    path = repo / "definitions.py"
    name = f"_t26_feature_defs_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"features apply: cannot load {path}; hint: is --repo right?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return [
        o for o in vars(module).values() if isinstance(o, Entity | FeatureView | FeatureService)
    ]


@click.group("features")
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get(REPO_ENV, str(_DEFAULT_REPO)),
    show_default=f"${REPO_ENV} or the bundled feature_repo/",
    help="The Feast feature repo folder.",
)
@click.option(
    "--config",
    default=None,
    help="Store config file in the repo, e.g. feature_store.production.yaml (Redis online).",
)
@click.pass_context
def features(ctx: click.Context, repo: Path, config: str | None) -> None:
    """Windowed market and account features in Feast (offline DuckDB, online SQLite/Redis)."""
    ctx.obj = _Ctx(repo.resolve(), config)


@features.command("apply")
@click.pass_obj
def apply(obj: _Ctx) -> None:
    """Register entities and feature views; create empty offline folders if needed."""
    from sinks.features import data_dir, ensure_offline

    ensure_offline(data_dir(obj.repo))
    objects = load_definitions(obj.repo)
    obj.store().apply(objects)
    names = sorted(getattr(o, "name", "?") for o in objects)
    click.echo(f"applied {len(objects)} objects to {obj.repo}: {', '.join(names)}")


@features.command("materialize")
@click.option("--start", type=click.DateTime(), default=None, help="UTC; omit for incremental.")
@click.option("--end", type=click.DateTime(), default=None, help="UTC; default now.")
@click.option("--view", "views", multiple=True, help="Only these feature views.")
@click.pass_obj
def materialize(
    obj: _Ctx, start: datetime | None, end: datetime | None, views: tuple[str, ...]
) -> None:
    """Load offline features into the online store.

    Without --start it is incremental: from where the last run ended (or now - TTL).
    Re-running over the same interval writes the same values: it is idempotent.
    """
    end_utc = _utc(end) or datetime.now(UTC)
    store = obj.store()
    view_list = list(views) or None
    if start is None:
        store.materialize_incremental(end_date=end_utc, feature_views=view_list)
        click.echo(f"materialized incrementally up to {end_utc.isoformat()}")
    else:
        start_utc = _utc(start)
        assert start_utc is not None
        store.materialize(start_date=start_utc, end_date=end_utc, feature_views=view_list)
        click.echo(f"materialized {start_utc.isoformat()} .. {end_utc.isoformat()}")


def _feature_refs(store: FeatureStore, view: str, names: tuple[str, ...]) -> list[str]:
    fv = store.get_feature_view(view)
    wanted = list(names) or [f.name for f in fv.features]
    return [f"{view}:{n}" for n in wanted]


@features.command("get")
@click.argument("entities", nargs=-1, required=True)
@click.option("--view", default=DEFAULT_INSTRUMENT_VIEW, show_default=True)
@click.option("--feature", "names", multiple=True, help="Only these features (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def get(
    obj: _Ctx, entities: tuple[str, ...], view: str, names: tuple[str, ...], as_json: bool
) -> None:
    """Latest online features for INSTRUMENT (or account) ids."""
    store = obj.store()
    fv = store.get_feature_view(view)
    key = fv.entity_columns[0].name
    refs = _feature_refs(store, view, names)
    result = store.get_online_features(
        features=refs, entity_rows=[{key: e} for e in entities]
    ).to_dict()
    rows = [{c: result[c][i] for c in result} for i in range(len(entities))]
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{view} (online)")
    for col in result:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    Console().print(table)


def read_entities(path: Path) -> pd.DataFrame:
    """An entity frame from Parquet or CSV: a key column and ``event_timestamp`` (UTC)."""
    import pandas as pd

    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if "event_timestamp" not in df.columns:
        raise click.ClickException(
            f"features history: {path} has no event_timestamp column; "
            "hint: columns are instrument_id (or account_id) and event_timestamp"
        )
    ts = df["event_timestamp"]
    if pd.api.types.is_integer_dtype(ts):
        df["event_timestamp"] = pd.to_datetime(ts, unit="ns", utc=True)
    else:
        df["event_timestamp"] = pd.to_datetime(ts, utc=True)
    return df


@features.command("history")
@click.option(
    "--entities",
    "entities_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Parquet/CSV with instrument_id (or account_id) and event_timestamp.",
)
@click.option("--view", "views", multiple=True, help="Feature views (default: instrument_bars_1m).")
@click.option("--feature", "names", multiple=True, help="Only these features of each view.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.pass_obj
def history(
    obj: _Ctx, entities_file: Path, views: tuple[str, ...], names: tuple[str, ...], out: Path | None
) -> None:
    """A point-in-time-correct training frame: per entity row, the latest window that had
    closed by its timestamp (and within the view's TTL), never a later one."""
    entity_df = read_entities(entities_file)
    store = obj.store()
    refs: list[str] = []
    for view in views or (DEFAULT_INSTRUMENT_VIEW,):
        refs += _feature_refs(store, view, names)
    frame = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    if len(frame) != len(entity_df):
        raise click.ClickException(
            f"features history: {len(entity_df)} entity rows in, {len(frame)} out; "
            "hint: the offline store dropped rows -- use the duckdb offline store"
        )
    frame = frame.sort_values([c for c in entity_df.columns]).reset_index(drop=True)
    if out is None:
        click.echo(frame.to_csv(index=False), nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            frame.to_csv(out, index=False)
        else:
            frame.to_parquet(out, index=False)
        click.echo(f"wrote {len(frame)} rows to {out}")


__all__ = ["features", "load_definitions", "read_entities"]
