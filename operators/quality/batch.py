"""Per-micro-batch validation against the stage's GX suite, off the hot path.

A stage hands its records to :class:`BatchValidator` (``offer``: an append to a list, no
copy, no conversion). Every ``batch_rows`` records the list goes, non-blocking, into a
bounded queue that a background thread drains: it builds a pandas frame, validates it
against ``quality/suites/<stage>.json`` with Great Expectations, stores the outcome in Delta
tables and a JSON file under the quality store, and publishes a failing batch to
``quality.alerts``. When the queue is full the batch is *not* validated and *not* waited
for: it is counted as skipped (``stats().skipped_batches``/``skipped_rows``, also stored with
every validation), so the hot path never blocks and nothing is skipped silently.

Validation holds the GIL for most of its ~0.1-0.2 s per batch, so the worker also keeps a
duty cycle: after a batch that took ``d`` seconds it rests ``d * (1 / max_duty - 1)``. That
bounds the validator's share of the process to about ``max_duty`` whatever the stage's rate;
at high rates more batches are skipped (visibly) rather than the stage slowing down.

Store layout under ``root`` (see :class:`QualityStore`)::

    validations/   Delta: one row per validated batch
    expectations/  Delta: one row per expectation result of each batch
    accounting/    Delta: Accounting snapshots (record_accounting)
    dead_letters/  Delta: dead-letter counts by stage and reason (record_accounting)
    json/<stage>/<batch_id>.json   the full GX validation result
"""

from __future__ import annotations

import json
import logging
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
    if stage == "ticks":
        df["is_trade"] = df["kind"].map({"trade": 1.0, "quote": 0.0}).astype("float64")
        df["latency_ns"] = (df["ts_recv"] - df["ts_event"]).astype("Int64")
        df["spread"] = df["ask_price"] - df["bid_price"]
    elif stage == "features":
        df["key"] = df["instrument_id"].fillna(df["account_id"])
    return df


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
            ("json_path", s),
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
                write_deltalake(str(path), table, mode="append")
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
    #: Upper bound on the fraction of wall time the worker spends validating.
    max_duty: float = 0.05
    alert_subject: str = ALERTS_SUBJECT
    #: Unexpected values kept per failing expectation (alerts, store, report).
    examples: int = 5


class ValidatorStats(msgspec.Struct, frozen=True):
    offered_rows: int
    submitted_batches: int
    validated_batches: int
    passed_batches: int
    failed_batches: int
    errored_batches: int
    skipped_batches: int
    skipped_rows: int
    alert_errors: int
    validation_seconds: float


_STOP = object()


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
    ) -> None:
        if config.batch_rows < 1 or config.max_queue < 1 or not 0 < config.max_duty <= 1:
            raise ValueError(
                f"quality batch validator {config.stage}: batch_rows and max_queue must be >= 1 "
                "and max_duty in (0, 1]; hint: check the quality config"
            )
        self.config = config
        self._clock = clock
        self._publish = publish
        self._timer = timer
        self._store = QualityStore(config.store)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=config.max_queue)
        self._pending: list[Any] = []
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

    # -- hot path -------------------------------------------------------------------------
    def offer(self, record: Any) -> None:
        """Add one record; every ``batch_rows`` records a batch is handed off (never blocks)."""
        self._pending.append(record)
        if len(self._pending) >= self.config.batch_rows:
            self._submit()

    def offer_many(self, records: Iterable[Any]) -> None:
        self._pending.extend(records)
        while len(self._pending) >= self.config.batch_rows:
            n = self.config.batch_rows
            rest = self._pending[n:]
            self._pending = self._pending[:n]
            self._submit()
            self._pending = rest

    def flush(self) -> None:
        """Hand off the partial batch now (end of input, or a time-based cut by the flow)."""
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
            passed_batches=self._passed,
            failed_batches=self._failed,
            errored_batches=self._errored,
            skipped_batches=self._skipped_batches,
            skipped_rows=self._skipped_rows,
            alert_errors=self._alert_errors,
            validation_seconds=self._seconds,
        )

    # -- worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        cfg = self.config
        try:
            validator = SuiteValidator(
                cfg.suite or cfg.stage, cfg.suites_dir or None, examples=cfg.examples
            )
        except Exception as exc:  # the suite is broken: count every batch as errored
            log.exception("quality %s: cannot load suite", cfg.stage)
            self.startup_error = exc
            validator = None
        self._ready.set()
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            started = self._timer()
            self._validate(validator, batch)
            elapsed = self._timer() - started
            self._seconds += elapsed
            if not self._closing:
                self._wake.wait(elapsed * (1.0 / cfg.max_duty - 1.0))

    def _validate(self, validator: SuiteValidator | None, batch: list[Any]) -> None:
        import pandas as pd

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
            rows = records_to_rows(cfg.stage, batch)
            df = prepare_frame(cfg.stage, pd.DataFrame.from_records(rows))
            ts_min, ts_max = frame_span(df)
            result = validator.validate(df)
        except Exception as exc:
            log.exception("quality %s: validation of %s failed", cfg.stage, batch_id)
            error = f"{type(exc).__name__}: {exc}"
        exp_rows = expectation_rows(result, cfg.examples)
        stats = result.get("statistics") or {}
        success = bool(result.get("success")) and error is None
        self._validated += 1
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
            "rows": len(batch),
            "error": error,
            "result": result,
        }
        summary = {
            "stage": cfg.stage,
            "suite": cfg.suite or cfg.stage,
            "batch_id": batch_id,
            "ts": ts,
            "rows": len(batch),
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
    "QualityStore",
    "SuiteValidator",
    "ValidatorStats",
    "expectation_rows",
    "prepare_frame",
    "record_accounting",
    "records_to_rows",
]
