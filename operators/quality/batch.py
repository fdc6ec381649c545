"""Per-micro-batch validation against the stage's GX suite, off the hot path.

A stage hands its records to :class:`BatchValidator` (``offer``: an append to a list, no
copy, no conversion). Every ``batch_rows`` records the list goes, non-blocking, into a
bounded queue that a background thread drains: it builds a pandas frame column by column
from the records (only the columns the suite reads), validates it against
``quality/suites/<stage>.json`` (the fast engine in :mod:`operators.quality.engine` for
the expectation types it covers, Great Expectations otherwise), stores the outcome in
Delta tables and a JSON file under the quality store, and publishes a failing batch to
``quality.alerts``. When the queue is full the batch is *not* validated and *not* waited
for: it is counted as skipped (``stats().skipped_batches``/``skipped_rows``, also stored with
every validation), so the hot path never blocks and nothing is skipped silently.

Validation holds the GIL, so the worker keeps a duty budget from the moment the suite is
ready: it may spend ``max_duty`` of the wall time since then. A batch the budget cannot
pay for in full is validated on an evenly spaced sample (at least ``min_sample_rows``,
recorded as ``validated_rows``); when not even that is paid for, the worker rests. The
first batch is a calibration sample, so a short run is bounded too. At high rates the
sample shrinks and, past that, batches are skipped (visibly) rather than the stage
slowing down.

Store layout under ``root`` (see :class:`QualityStore`)::

    validations/   Delta: one row per validated batch
    expectations/  Delta: one row per expectation result of each batch
    accounting/    Delta: Accounting snapshots (record_accounting)
    dead_letters/  Delta: dead-letter counts by stage and reason (record_accounting)
    json/<stage>/<batch_id>.json   the full GX validation result
"""

from __future__ import annotations

import enum
import json
import logging
import operator
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from trade2026.accounting import Accounting

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

log = logging.getLogger(__name__)

ALERTS_SUBJECT = "quality.alerts"

#: The columns each stage's suite sees, in order. Missing ones are added as nulls so an
#: all-trades ticks batch still has ``bid_price`` (and passes its quote-only checks).
STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "raw": ("subject", "size_bytes", "ts_recv", "seq"),
    "ticks": (
        "kind", "instrument_id", "price", "size", "aggressor", "trade_id", "bid_price",
        "bid_size", "ask_price", "ask_size", "update_id", "first_update_id", "last_update_id",
        "is_snapshot", "ts_event", "ts_recv",
    ),
    "orders": (
        "client_order_id", "account_id", "instrument_id", "side", "order_type", "quantity",
        "price", "time_in_force", "expire_time", "ts_submit",
    ),
    "order_events": (
        "event", "status", "order_id", "client_order_id", "account_id", "instrument_id",
        "side", "quantity", "cum_qty", "leaves_qty", "avg_px", "ts_event", "last_qty",
        "last_px", "reason", "seq",
    ),
    "fills": (
        "exec_id", "order_id", "client_order_id", "account_id", "instrument_id", "side",
        "quantity", "price", "fee", "fee_currency", "liquidity", "ts_event",
    ),
    "positions": (
        "account_id", "instrument_id", "quantity", "avg_open_price", "realized_pnl",
        "unrealized_pnl", "mark_price", "fees", "ts_event",
    ),
    "alt": ("source", "instrument_id", "value", "ts_event", "ts_recv"),
    "features": (
        "kind", "instrument_id", "account_id", "width_ns", "start_ns", "end_ns", "trade_count",
        "volume", "buy_volume", "sell_volume", "notional", "open", "high", "low", "close",
        "vwap", "imbalance", "realized_vol", "quote_count", "spread_min", "spread_max",
        "turnover", "fees", "fill_count",
    ),
}  # fmt: skip

#: Exact decimals (JSON strings on the wire) become float64 for statistics only: the
#: suites check ranges and distributions, never money arithmetic.
DECIMAL_COLUMNS = frozenset(
    {
        "price", "size", "bid_price", "bid_size", "ask_price", "ask_size", "quantity",
        "cum_qty", "leaves_qty", "avg_px", "last_qty", "last_px", "fee", "avg_open_price",
        "realized_pnl", "unrealized_pnl", "mark_price", "fees", "volume", "buy_volume",
        "sell_volume", "notional", "open", "high", "low", "close", "spread_min", "spread_max",
        "turnover", "value", "vwap", "imbalance", "realized_vol",
    }
)  # fmt: skip
#: Integer ns and counters: nullable Int64, never float64 (which would round ns timestamps).
INT_COLUMNS = frozenset(
    {
        "ts_event", "ts_recv", "ts_submit", "expire_time", "start_ns", "end_ns", "width_ns",
        "seq", "size_bytes", "update_id", "first_update_id", "last_update_id", "trade_count",
        "quote_count", "fill_count", "latency_ns",
    }
)  # fmt: skip
#: Which column dates a batch's records (first one present wins).
TIME_COLUMNS = ("ts_recv", "ts_event", "end_ns", "ts_submit")


def records_to_rows(stage: str, records: Sequence[Any]) -> list[dict[str, Any]]:
    """Records as the stage sees them (msgspec Structs, Messages, mappings) to plain rows."""
    if stage == "raw":
        return [
            {
                "subject": getattr(r, "subject", None),
                "size_bytes": len(r.data) if getattr(r, "data", None) is not None else None,
                "ts_recv": getattr(r, "ts_recv", None),
                "seq": getattr(r, "seq", None),
            }
            for r in records
        ]
    rows = msgspec.to_builtins(list(records), builtin_types=None)
    return [r if isinstance(r, dict) else {"value": r} for r in rows]


#: Derived columns and the columns they are computed from (see :func:`prepare_frame`).
DERIVED: dict[str, dict[str, tuple[str, ...]]] = {
    "ticks": {
        "is_trade": ("kind",),
        "latency_ns": ("ts_recv", "ts_event"),
        "spread": ("ask_price", "bid_price"),
    },
    "features": {"key": ("instrument_id", "account_id")},
}


def needed_columns(stage: str, referenced: Iterable[str]) -> tuple[str, ...]:
    """The stage columns a suite needs: what it references, what derived columns are made
    of, and the time columns that date a batch. Building only these is most of the saving."""
    cols = STAGE_COLUMNS.get(stage)
    if cols is None:
        return ()
    want = set(referenced) | set(TIME_COLUMNS)
    for derived, sources in DERIVED.get(stage, {}).items():
        if derived in want:
            want.update(sources)
    return tuple(c for c in cols if c in want)


def _column_values(column: str, records: Sequence[Any], types: set[type]) -> list[Any]:
    """One column's values, by the cheapest read the record types allow (~20-40 ns a row)."""
    if column == "kind":  # the msgspec tag, not an attribute
        tags = {t: getattr(getattr(t, "__struct_config__", None), "tag", None) for t in types}
        return list(map(tags.__getitem__, map(type, records)))
    if column == "size_bytes":
        return [len(r.data) if getattr(r, "data", None) is not None else None for r in records]
    if all(column in getattr(t, "__struct_fields__", ()) for t in types):
        return list(map(operator.attrgetter(column), records))
    if all(issubclass(t, dict) for t in types):
        return [r.get(column) for r in records]
    return [r.get(column) if isinstance(r, dict) else getattr(r, column, None) for r in records]


def records_to_frame(
    stage: str, records: Sequence[Any], columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """A suite-ready frame built column by column straight from the records.

    Why not ``msgspec.to_builtins`` + ``pd.DataFrame.from_records`` + ``prepare_frame``: that
    turns every Decimal into a string and back and builds a dict per row, ~12 us a row,
    more than the stage itself spends on the record. Here a column is one list
    comprehension of attribute reads; decimals go to float64 once (statistics only),
    integer ns to nullable Int64, str enums to their values. ``columns`` limits the
    work to what the suite reads (:func:`needed_columns`).
    """
    import numpy as np
    import pandas as pd

    cols = list(columns) if columns else list(STAGE_COLUMNS.get(stage, ()))
    data: dict[str, Any] = {}
    n = len(records)
    types = set(map(type, records))
    nan = np.nan
    for c in cols:
        values = _column_values(c, records, types)
        if c in DECIMAL_COLUMNS:
            data[c] = np.array([nan if v is None else float(v) for v in values], np.float64)
        elif c in INT_COLUMNS:
            if None in values:
                data[c] = pd.array(values, dtype="Int64")
            else:
                data[c] = pd.array(np.array(values, dtype=np.int64), dtype="Int64")
        else:
            first = next((v for v in values if v is not None), None)
            if isinstance(first, enum.Enum) and not isinstance(first, str):
                values = [v.value if isinstance(v, enum.Enum) else v for v in values]
            # str enums stay as they are: they hash and compare as their string values
            data[c] = pd.Series(values, dtype="object")
    df = pd.DataFrame(data, index=pd.RangeIndex(n))
    return _derive(stage, df)


def _derive(stage: str, df: pd.DataFrame) -> pd.DataFrame:
    if stage == "ticks":
        if "kind" in df.columns:
            df["is_trade"] = df["kind"].map({"trade": 1.0, "quote": 0.0}).astype("float64")
        if "ts_recv" in df.columns and "ts_event" in df.columns:
            df["latency_ns"] = (df["ts_recv"] - df["ts_event"]).astype("Int64")
        if "ask_price" in df.columns and "bid_price" in df.columns:
            df["spread"] = df["ask_price"] - df["bid_price"]
    elif stage == "features" and "instrument_id" in df.columns and "account_id" in df.columns:
        df["key"] = df["instrument_id"].fillna(df["account_id"])
    return df


def prepare_frame(stage: str, df: pd.DataFrame) -> pd.DataFrame:
    """Give a frame the suite's columns, types and derived columns.

    Used for live batches and for ``trade2026 quality check`` files alike, so a stored
    table is judged exactly like the stream it came from.
    """
    import pandas as pd

    cols = STAGE_COLUMNS.get(stage)
    df = df.reindex(columns=list(cols)) if cols is not None else df.copy()
    for c in df.columns:
        if c in DECIMAL_COLUMNS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
        elif c in INT_COLUMNS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return _derive(stage, df)


def frame_span(df: pd.DataFrame) -> tuple[int | None, int | None]:
    for c in TIME_COLUMNS:
        if c in df.columns:
            s = df[c].dropna()
            if len(s):
                return int(s.min()), int(s.max())
    return None, None


class SuiteValidator:
    """One stage's GX suite bound to an ephemeral context: ``validate(frame)`` -> result dict.

    Building one imports great_expectations (3-5 s); do it once, off the hot path.
    """

    def __init__(self, suite: str, suites_path: str | Path | None = None, examples: int = 5):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx

        # GX pins this logger to INFO and announces every ephemeral docs site on it: noise
        # beside a flow's logs, so it follows the root level (at least WARNING) instead.
        quiet = max(logging.WARNING, logging.getLogger().getEffectiveLevel())
        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(quiet)
        from great_expectations.data_context.types.base import ProgressBarsConfig

        from operators.quality.suites import load_suite, load_suite_json

        self.name = suite
        meta = load_suite_json(suite, suites_path).get("meta") or {}
        self.stage = str(meta.get("stage", suite))
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self._context.data_sources.add_pandas("quality").add_dataframe_asset(suite)
        self._batch_def = asset.add_batch_definition_whole_dataframe("batch")
        self._suite = self._context.suites.add(load_suite(suite, suites_path))
        self._format = {"result_format": "SUMMARY", "partial_unexpected_count": examples}

    def validate(self, df: pd.DataFrame) -> dict[str, Any]:
        batch = self._batch_def.get_batch(batch_parameters={"dataframe": df})
        result = batch.validate(self._suite, result_format=self._format)
        doc: dict[str, Any] = result.to_json_dict()
        return doc


def _column_of(kwargs: dict[str, Any]) -> str | None:
    if "column" in kwargs:
        return str(kwargs["column"])
    if "column_A" in kwargs:
        return f"{kwargs['column_A']},{kwargs.get('column_B')}"
    if "column_list" in kwargs:
        return ",".join(map(str, kwargs["column_list"]))
    return None


def expectation_rows(result: dict[str, Any], examples: int = 5) -> list[dict[str, Any]]:
    """One flat row per expectation result of a GX suite validation result."""
    rows = []
    for r in result.get("results", []):
        cfg = r.get("expectation_config") or {}
        kwargs = {k: v for k, v in (cfg.get("kwargs") or {}).items() if k != "batch_id"}
        res = r.get("result") or {}
        exc = r.get("exception_info") or {}
        observed = res.get("observed_value")
        rows.append(
            {
                "expectation_type": str(cfg.get("type")),
                "column": _column_of(kwargs),
                "success": bool(r.get("success")),
                "element_count": res.get("element_count"),
                "unexpected_count": res.get("unexpected_count"),
                "unexpected_percent": res.get("unexpected_percent"),
                "observed_value": None if observed is None else json.dumps(observed, default=str),
                "examples": json.dumps(
                    (res.get("partial_unexpected_list") or [])[:examples], default=str
                ),
                "kwargs": json.dumps(kwargs, default=str, sort_keys=True),
                "exception": exc.get("exception_message") if exc.get("raised_exception") else None,
            }
        )
    return rows


def _schema(kind: str) -> pa.Schema:
    import pyarrow as pa

    s, i, b, f = pa.string(), pa.int64(), pa.bool_(), pa.float64()
    fields = {
        "validations": [
            ("stage", s), ("suite", s), ("batch_id", s), ("ts", i), ("rows", i), ("success", b),
            ("evaluated", i), ("successful", i), ("unsuccessful", i), ("ts_min", i),
            ("ts_max", i), ("skipped_batches", i), ("skipped_rows", i), ("error", s),
            ("json_path", s), ("validated_rows", i),
        ],
        "expectations": [
            ("stage", s), ("suite", s), ("batch_id", s), ("ts", i), ("expectation_type", s),
            ("column", s), ("success", b), ("element_count", i), ("unexpected_count", i),
            ("unexpected_percent", f), ("observed_value", s), ("examples", s), ("kwargs", s),
            ("exception", s),
        ],
        "accounting": [
            ("ts", i), ("stage", s), ("instrument", s), ("records_in", i), ("out", i),
            ("dead_lettered", i), ("duplicates", i),
        ],
        "dead_letters": [("ts", i), ("stage", s), ("reason", s), ("count", i)],
    }[kind]  # fmt: skip
    return pa.schema(fields)


class QualityStore:
    """The quality results under one root: Delta tables plus one JSON file per batch."""

    TABLES = ("validations", "expectations", "accounting", "dead_letters")

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def table_path(self, kind: str) -> Path:
        return self.root / kind

    def append(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        import pyarrow as pa
        from deltalake import write_deltalake
        from deltalake.exceptions import CommitFailedError

        schema = _schema(kind)
        table = pa.Table.from_pylist(rows, schema=schema)
        path = self.table_path(kind)
        path.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):  # concurrent appends from several flows may race a commit
            try:
                # "merge": stores written before a column was added keep working
                write_deltalake(str(path), table, mode="append", schema_mode="merge")
                return
            except CommitFailedError:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def read(
        self, kind: str, since: int | None = None, until: int | None = None
    ) -> list[dict[str, Any]]:
        """Rows of one table with ``since <= ts <= until``, oldest first ([] if none yet)."""
        from deltalake import DeltaTable

        path = self.table_path(kind)
        if not (path / "_delta_log").is_dir():
            return []
        rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
        rows = [
            r
            for r in rows
            if (since is None or r["ts"] >= since) and (until is None or r["ts"] <= until)
        ]
        rows.sort(key=lambda r: r["ts"])
        return rows

    def write_json(self, stage: str, batch_id: str, doc: dict[str, Any]) -> Path:
        path = self.root / "json" / stage / f"{batch_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, default=str))
        tmp.replace(path)
        return path


def record_accounting(accounting: Accounting, path: str | Path, ts: int) -> None:
    """Snapshot an :class:`Accounting` into the quality store at ``path`` (cumulative counts
    as of ``ts``, integer ns): per stage and instrument, and dead letters per reason.

    Flows call this periodically and at shutdown; the report shows each stage's latest
    snapshot in its time range.
    """
    store = QualityStore(path)
    acc_rows = []
    dl_rows = []
    for stage in accounting.stages():
        for inst in accounting.instruments(stage):
            c = accounting.stage(stage, inst)
            acc_rows.append(
                {
                    "ts": ts,
                    "stage": stage,
                    "instrument": inst,
                    "records_in": c.records_in,
                    "out": c.out,
                    "dead_lettered": c.dead_lettered,
                    "duplicates": c.duplicates,
                }
            )
        for reason, n in accounting.reasons(stage).items():
            dl_rows.append({"ts": ts, "stage": stage, "reason": reason, "count": n})
    store.append("accounting", acc_rows)
    store.append("dead_letters", dl_rows)


class BatchValidatorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    stage: str
    #: The quality store root (Delta tables and JSON results).
    store: str
    #: The suite to validate against; defaults to the stage's name.
    suite: str = ""
    #: Directory of suite JSON files; empty: ``quality/suites`` (or TRADE2026_QUALITY_SUITES).
    suites_dir: str = ""
    #: Records per batch. GX costs ~0.1 s per batch almost regardless of size: batch big.
    batch_rows: int = 50_000
    #: Batches waiting for validation; when full, new batches are skipped (and counted).
    max_queue: int = 2
    #: Upper bound on the fraction of wall time the worker spends validating, counted from
    #: the moment the suite is ready (so short runs are bounded too, not only steady state).
    max_duty: float = 0.05
    #: "fast": the suite JSON evaluated with pandas (:mod:`operators.quality.engine`), GX
    #: only for suites it cannot evaluate; "gx": always Great Expectations.
    engine: str = "fast"
    #: When the duty budget cannot pay for a whole batch, an evenly spaced sample of at
    #: least this many rows is validated instead (recorded as ``validated_rows``).
    min_sample_rows: int = 2_000
    alert_subject: str = ALERTS_SUBJECT
    #: Unexpected values kept per failing expectation (alerts, store, report).
    examples: int = 5


class ValidatorStats(msgspec.Struct, frozen=True):
    offered_rows: int
    submitted_batches: int
    validated_batches: int
    #: Batches of which only an evenly spaced sample was validated (duty budget).
    sampled_batches: int
    validated_rows: int
    passed_batches: int
    failed_batches: int
    errored_batches: int
    skipped_batches: int
    skipped_rows: int
    alert_errors: int
    validation_seconds: float


_STOP = object()


class DutyBudget:
    """The share of wall time validation may use, shared by a process's validators.

    Why shared: each validator holding the GIL for ``max_duty`` of the time would let a
    flow with two stages lose twice that. The clock starts when the first one is ready.
    """

    def __init__(self, max_duty: float, timer: Callable[[], float] = time.perf_counter) -> None:
        self.max_duty = max_duty
        self._timer = timer
        self._lock = threading.Lock()
        self._since: float | None = None
        self.spent = 0.0

    def start(self) -> None:
        with self._lock:
            if self._since is None:
                self._since = self._timer()

    def allowance(self) -> float:
        """Seconds of validation paid for now (negative: in debt)."""
        with self._lock:
            since = self._since if self._since is not None else self._timer()
            return self.max_duty * (self._timer() - since) - self.spent

    def charge(self, seconds: float) -> None:
        with self._lock:
            self.spent += seconds


def _spaced_sample(batch: list[Any], k: int, chunks: int = 4) -> list[Any]:
    """``k`` records in ``chunks`` contiguous runs spread over the batch, in order.

    Contiguous runs, not every n-th row: a stage's output interleaves keys in blocks, so
    thinning rows would multiply the share of block boundaries (where ``ts_recv`` steps
    back) and fail "increasing, mostly" suites that the whole batch passes.
    """
    n = len(batch)
    if k >= n:
        return batch
    size = max(1, k // chunks)
    starts = [int(i * (n - size) / max(1, chunks - 1)) for i in range(chunks)]
    out: list[Any] = []
    end = 0
    for s in starts:
        s = max(s, end)
        out.extend(batch[s : s + size])
        end = s + size
    return out


class BatchValidator:
    """Collects a stage's records into batches and validates them on a background thread.

    ``publish(subject, payload)`` is called from the worker thread for failing batches;
    ``clock()`` (integer ns UTC) stamps results; ``timer()`` (seconds, monotonic) only
    measures validation time for the duty cycle.
    """

    def __init__(
        self,
        config: BatchValidatorConfig,
        clock: Callable[[], int],
        publish: Callable[[str, bytes], None] | None = None,
        timer: Callable[[], float] = time.perf_counter,
        after_batch: Callable[[], None] | None = None,
        budget: DutyBudget | None = None,
    ) -> None:
        if (
            config.batch_rows < 1
            or config.max_queue < 1
            or config.min_sample_rows < 1
            or not 0 < config.max_duty <= 1
            or config.engine not in ("fast", "gx")
        ):
            raise ValueError(
                f"quality batch validator {config.stage}: batch_rows, max_queue and "
                "min_sample_rows must be >= 1, max_duty in (0, 1] and engine 'fast' or 'gx'; "
                "hint: check the quality config"
            )
        self.config = config
        self._clock = clock
        self._publish = publish
        self._timer = timer
        self._after_batch = after_batch
        self._budget = budget if budget is not None else DutyBudget(config.max_duty, timer)
        self._store = QualityStore(config.store)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.max_queue)
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._wake = threading.Event()
        self._closing = False
        self._seq = 0
        self.startup_error: BaseException | None = None
        # producer-side counters (hot path thread)
        self._offered = 0
        self._submitted = 0
        self._skipped_batches = 0
        self._skipped_rows = 0
        # worker-side counters
        self._validated = 0
        self._passed = 0
        self._failed = 0
        self._errored = 0
        self._alert_errors = 0
        self._seconds = 0.0
        self._sampled = 0
        self._validated_rows = 0
        self.engine = ""
        self._columns: tuple[str, ...] = ()

    # -- hot path -------------------------------------------------------------------------
    def offer(self, record: Any) -> None:
        """Add one record; every ``batch_rows`` records a batch is handed off (never blocks).

        For one producer thread; several (Bytewax workers) use :meth:`offer_many`.
        """
        self._pending.append(record)
        if len(self._pending) >= self.config.batch_rows:
            self._submit()

    def offer_many(self, records: Iterable[Any]) -> None:
        """Add a stage batch: one lock per call, so workers of one process may share this."""
        with self._lock:
            self._pending.extend(records)
            while len(self._pending) >= self.config.batch_rows:
                n = self.config.batch_rows
                rest = self._pending[n:]
                self._pending = self._pending[:n]
                self._submit()
                self._pending = rest

    def flush(self) -> None:
        """Hand off the partial batch now (end of input, or a time-based cut by the flow)."""
        with self._lock:
            if self._pending:
                self._submit()

    def _submit(self, block: bool = False) -> None:
        batch, self._pending = self._pending, []
        self._offered += len(batch)
        try:
            self._queue.put(batch, block=block and self._thread is not None)
            self._submitted += 1
        except queue.Full:
            self._skipped_batches += 1
            self._skipped_rows += len(batch)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> BatchValidator:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"quality-{self.config.stage}", daemon=True
            )
            self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once GX is imported and the suite loaded (the first seconds of a run)."""
        return self._ready.wait(timeout)

    def close(self, timeout: float | None = None) -> ValidatorStats:
        """Flush, validate what is queued (ignoring the duty cycle) and stop the worker.

        Shutdown may wait: the last partial batch waits for room in the queue rather than
        being skipped.
        """
        self._closing = True
        self._wake.set()
        if self._pending:
            self._submit(block=True)
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
        return self.stats()

    def stats(self) -> ValidatorStats:
        return ValidatorStats(
            offered_rows=self._offered + len(self._pending),
            submitted_batches=self._submitted,
            validated_batches=self._validated,
            sampled_batches=self._sampled,
            validated_rows=self._validated_rows,
            passed_batches=self._passed,
            failed_batches=self._failed,
            errored_batches=self._errored,
            skipped_batches=self._skipped_batches,
            skipped_rows=self._skipped_rows,
            alert_errors=self._alert_errors,
            validation_seconds=self._seconds,
        )

    # -- worker ---------------------------------------------------------------------------
    def _load(self) -> Any:
        """The suite as a validator: the fast engine when it covers the suite, else GX."""
        cfg = self.config
        name = cfg.suite or cfg.stage
        import pandas  # noqa: F401  -- imported here, at start-up, not inside a timed batch

        if cfg.engine == "fast":
            from operators.quality.engine import FastSuite, supports
            from operators.quality.suites import load_suite_json

            doc = load_suite_json(name, cfg.suites_dir or None)
            if supports(doc):
                self.engine = "fast"
                return FastSuite(doc, cfg.examples)
            log.info("quality %s: suite %s needs GX (an expectation type the fast engine "
                     "does not evaluate)", cfg.stage, name)  # fmt: skip
        self.engine = "gx"
        return SuiteValidator(name, cfg.suites_dir or None, examples=cfg.examples)

    def _run(self) -> None:
        from operators.quality.engine import referenced_columns
        from operators.quality.suites import load_suite_json

        cfg = self.config
        validator: Any = None
        try:
            validator = self._load()
            doc = load_suite_json(cfg.suite or cfg.stage, cfg.suites_dir or None)
            self._columns = needed_columns(cfg.stage, referenced_columns(doc))
        except Exception as exc:  # the suite is broken: count every batch as errored
            log.exception("quality %s: cannot load suite", cfg.stage)
            self.startup_error = exc
            validator = None
            self._columns = ()
        self._ready.set()
        # The duty budget runs from here: validating may use max_duty of the time since.
        budget = self._budget
        budget.start()
        per_row = 0.0  # seconds per validated row, learnt from the batches so far
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            rows = batch
            if per_row == 0 and not self._closing:
                # The first batch's cost is unknown: a sample calibrates it cheaply.
                rows = _spaced_sample(batch, cfg.min_sample_rows)
            while not self._closing and per_row > 0:
                allowance = budget.allowance()
                affordable = int(allowance / per_row) if allowance > 0 else 0
                if affordable >= len(batch):
                    break
                if affordable >= cfg.min_sample_rows:
                    rows = _spaced_sample(batch, affordable)
                    break
                # Not even a sample is paid for: rest until it is (the queue may fill up
                # meanwhile; the stage then skips batches, counted, and never waits).
                need = cfg.min_sample_rows * per_row - allowance
                self._wake.wait(min(need / budget.max_duty, 60.0))
            if self._closing:
                rows = batch
            started = self._timer()
            self._validate(validator, rows, len(batch))
            elapsed = self._timer() - started
            if rows:
                per_row = max(elapsed / len(rows), 1e-9)
            if self._after_batch is not None:
                # The hook (an accounting snapshot: two Delta appends) runs on this thread
                # too, so it is paid from the same budget; not from the per-row estimate.
                try:
                    self._after_batch()
                except Exception:
                    log.exception("quality %s: after-batch hook failed", cfg.stage)
                elapsed = self._timer() - started
            self._seconds += elapsed
            budget.charge(elapsed)

    def _validate(self, validator: Any, batch: list[Any], batch_rows: int) -> None:
        cfg = self.config
        ts = self._clock()
        self._seq += 1
        batch_id = f"{cfg.stage}-{ts}-{self._seq}"
        result: dict[str, Any] = {}
        error: str | None = None
        ts_min = ts_max = None
        try:
            if validator is None:
                raise RuntimeError(f"suite did not load: {self.startup_error}")
            df = records_to_frame(cfg.stage, batch, self._columns or None)
            ts_min, ts_max = frame_span(df)
            result = validator.validate(df)
        except Exception as exc:
            log.exception("quality %s: validation of %s failed", cfg.stage, batch_id)
            error = f"{type(exc).__name__}: {exc}"
        exp_rows = expectation_rows(result, cfg.examples)
        stats = result.get("statistics") or {}
        success = bool(result.get("success")) and error is None
        self._validated += 1
        self._validated_rows += len(batch)
        if len(batch) < batch_rows:
            self._sampled += 1
        if error is not None:
            self._errored += 1
        elif success:
            self._passed += 1
        else:
            self._failed += 1
        doc = {
            "stage": cfg.stage,
            "suite": cfg.suite or cfg.stage,
            "batch_id": batch_id,
            "ts": ts,
            "rows": batch_rows,
            "validated_rows": len(batch),
            "engine": self.engine,
            "error": error,
            "result": result,
        }
        summary = {
            "stage": cfg.stage,
            "suite": cfg.suite or cfg.stage,
            "batch_id": batch_id,
            "ts": ts,
            "rows": batch_rows,
            "validated_rows": len(batch),
            "success": success,
            "evaluated": stats.get("evaluated_expectations", 0),
            "successful": stats.get("successful_expectations", 0),
            "unsuccessful": stats.get("unsuccessful_expectations", 0),
            "ts_min": ts_min,
            "ts_max": ts_max,
            "skipped_batches": self._skipped_batches,
            "skipped_rows": self._skipped_rows,
            "error": error,
            "json_path": "",
        }
        try:
            summary["json_path"] = str(self._store.write_json(cfg.stage, batch_id, doc))
            self._store.append("validations", [summary])
            self._store.append(
                "expectations",
                [
                    {"stage": cfg.stage, "suite": summary["suite"], "batch_id": batch_id, "ts": ts}
                    | r
                    for r in exp_rows
                ],
            )
        except Exception:
            log.exception("quality %s: cannot store the result of %s", cfg.stage, batch_id)
        if not success and self._publish is not None:
            alert = {
                k: summary[k] for k in ("stage", "suite", "batch_id", "ts", "rows", "error")
            } | {
                "failed": [
                    {
                        k: r[k]
                        for k in ("expectation_type", "column", "unexpected_count", "examples")
                    }
                    | {"observed_value": r["observed_value"]}
                    for r in exp_rows
                    if not r["success"]
                ]
            }
            try:
                self._publish(cfg.alert_subject, json.dumps(alert, default=str).encode())
            except Exception:
                self._alert_errors += 1
                log.exception("quality %s: cannot publish the alert for %s", cfg.stage, batch_id)


__all__ = [
    "ALERTS_SUBJECT",
    "BatchValidator",
    "BatchValidatorConfig",
    "DutyBudget",
    "QualityStore",
    "SuiteValidator",
    "ValidatorStats",
    "expectation_rows",
    "needed_columns",
    "prepare_frame",
    "record_accounting",
    "records_to_frame",
    "records_to_rows",
]
