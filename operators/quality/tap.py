"""One reusable quality gate for any stage: the per-record rule, the per-batch validator and
the accounting, behind one object a flow puts at its boundary.

Why one piece: eight stages in seven flows need the same three things (reject a bad
record with a reason code and its original bytes, hand the good ones to the background
validator, count in = out + dead-lettered). Each flow only says *where* its records
are; :mod:`flows.quality` wires a :class:`QualityTap` into a Bytewax graph.

Accounting stage names are ``quality.<stage>`` so a tap never mixes its counts with the
host flow's own stage (the orders flow already counts stage ``orders``). A tap inside a
host stage (between its input count and its output count, as in the alt sink) also
names ``host_stage``: its dead letters then count as the host's dead-lettered records
too, so the host's in = out + dead-lettered + deduplicated stays exact.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Container, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from operators.quality.rules import Rule, RulesConfig, build_rule
from schemas.canonical import DeadLetter
from trade2026.accounting import DEAD_LETTERED, IN, OUT, UNKNOWN_INSTRUMENT, Accounting

if TYPE_CHECKING:
    from operators.quality.batch import BatchValidator

log = logging.getLogger(__name__)

#: Accounting stage of a tap: ``quality.ticks`` etc.
ACCOUNTING_PREFIX = "quality."
STATE_DIR_ENV = "TRADE2026_STATE_DIR"


def dlq_subject(stage: str) -> str:
    return f"dlq.{stage}"


class QualityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Whether and how a flow checks what passes through it.

    ``store=""`` keeps the per-record rules only (no pandas, no background thread): what
    unit tests of a flow want. :meth:`production` turns the batch layer on.
    """

    rules: RulesConfig = RulesConfig()
    #: Quality store root (Delta tables and JSON results); "" disables batch validation.
    store: str = ""
    #: Stages to check; empty: every stage the flow has.
    stages: tuple[str, ...] = ()
    batch_rows: int = 50_000
    max_queue: int = 2
    max_duty: float = 0.05
    engine: str = "fast"
    min_sample_rows: int = 2_000
    suites_dir: str = ""
    #: Publish failing batches on ``quality.alerts`` (when the flow has a publisher).
    alerts: bool = True
    #: Least interval between accounting snapshots written to the store, seconds.
    accounting_interval_s: float = 10.0

    @classmethod
    def production(cls, **overrides: Any) -> QualityConfig:
        """Batch validation on, stored under ``$TRADE2026_STATE_DIR/quality``."""
        root = os.environ.get(STATE_DIR_ENV) or "var"
        return cls(**({"store": os.path.join(root, "quality")} | overrides))


def _payload(record: Any) -> tuple[bytes, str]:
    """The record's original bytes and subject: a message's own, else its JSON encoding."""
    data = getattr(record, "data", None)
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), str(getattr(record, "subject", "") or "")
    try:
        return msgspec.json.encode(record), ""
    except (TypeError, msgspec.EncodeError):
        return repr(record).encode(), ""


class QualityTap:
    """A stage's gate. ``check`` per record (one thread), ``commit`` per batch; ``split``
    does both under a lock, for a tap shared by the workers of a process.

    ``view`` turns what flows through (a message, an encoded output, a sink record) into
    what the rule and the suite judge; returning None, or raising, is ``SCHEMA_MISMATCH``.
    """

    def __init__(
        self,
        stage: str,
        rule: Rule,
        *,
        accounting: Accounting | None = None,
        validator: BatchValidator | None = None,
        view: Callable[[Any], Any] | None = None,
        host_stage: str | None = None,
    ) -> None:
        self.stage = stage
        self.rule = rule
        self.accounting_stage = ACCOUNTING_PREFIX + stage
        self.dlq_subject = dlq_subject(stage)
        self._accounting = accounting
        self._validator = validator
        self._view = view
        self._host = host_stage
        self.lock = threading.Lock()
        # Every record checked since the last commit is either in ``_good`` or has its
        # reason in ``_reasons``: the count in is their sum, with no counter per record.
        self._reasons: list[str] = []
        self._good: list[Any] = []
        self._rule_check = rule.check
        if view is None:  # the common case: skip the view indirection per record
            self.check = self._check_plain  # type: ignore[method-assign]
        #: Totals since start (also in the Accounting under ``quality.<stage>``).
        self.records_in = 0
        self.dead_lettered = 0

    def check(self, record: Any) -> DeadLetter | None:
        """None: the record passes. Otherwise the dead letter to publish instead."""
        judged = record
        if self._view is not None:
            try:
                judged = self._view(record)
            except Exception as exc:  # undecodable output: a reason code, never a crash
                return self._dead(record, "SCHEMA_MISMATCH", f"{type(exc).__name__}: {exc}")
        return self.judge(record, judged)

    def _check_plain(self, record: Any) -> DeadLetter | None:
        reason = self._rule_check(record)
        if reason is None:
            self._good.append(record)
            return None
        return self._dead(record, reason, f"quality rule {self.stage}: {reason}", record)

    def judge(self, record: Any, judged: Any) -> DeadLetter | None:
        """:meth:`check` with the view already taken (``judged`` None: it did not decode)."""
        if judged is None:
            return self._dead(record, "SCHEMA_MISMATCH", f"not a record of stage {self.stage}")
        reason = self._rule_check(judged)
        if reason is not None:
            return self._dead(record, reason, f"quality rule {self.stage}: {reason}", judged)
        self._good.append(judged)
        return None

    def _dead(self, record: Any, reason: str, detail: str, judged: Any = None) -> DeadLetter:
        self._reasons.append(reason)
        payload, subject = _payload(record)
        inst = getattr(judged, "instrument_id", None) if judged is not None else None
        if inst is None and isinstance(judged, dict):
            inst = judged.get("instrument_id")
        return DeadLetter(
            stage=self.stage,
            reason=reason,
            detail=detail,
            payload=payload,
            subject=subject,
            instrument_id=inst if isinstance(inst, str) else None,
            ts_recv=int(getattr(record, "ts_recv", 0) or 0),
        )

    def commit(self) -> None:
        """Count the records checked since the last commit; hand the good ones over."""
        good, reasons = self._good, self._reasons
        if not good and not reasons:
            return
        self._good, self._reasons = [], []
        dead = len(reasons)
        seen = len(good) + dead
        self.records_in += seen
        self.dead_lettered += dead
        if self._accounting is not None:
            self._accounting.add(
                self.accounting_stage,
                {
                    (UNKNOWN_INSTRUMENT, IN): seen,
                    (UNKNOWN_INSTRUMENT, OUT): seen - dead,
                    (UNKNOWN_INSTRUMENT, DEAD_LETTERED): dead,
                },
            )
            if reasons:
                self._accounting.add_reasons(self.accounting_stage, reasons)
                if self._host is not None:
                    self._accounting.add(self._host, {(UNKNOWN_INSTRUMENT, DEAD_LETTERED): dead})
                    self._accounting.add_reasons(self._host, reasons)
        if good and self._validator is not None:
            self._validator.offer_many(good)

    def split(self, records: Sequence[Any]) -> tuple[list[Any], list[DeadLetter]]:
        """The records that pass, in order, and the dead letters of the rest."""
        ok: list[Any] = []
        dead: list[DeadLetter] = []
        with self.lock:
            if self._view is None:
                # One loop over the rule itself: no per-record call into check().
                rule_check, keep, stage = self._rule_check, ok.append, self.stage
                for r in records:
                    reason = rule_check(r)
                    if reason is None:
                        keep(r)
                    else:
                        dead.append(self._dead(r, reason, f"quality rule {stage}: {reason}", r))
                self._good.extend(ok)
            else:
                check = self.check
                for r in records:
                    d = check(r)
                    if d is None:
                        ok.append(r)
                    else:
                        dead.append(d)
            self.commit()
        return ok, dead


class Quality:
    """The quality layer of one flow process: a tap per stage and one validator per stage.

    ``clock`` (integer ns UTC) stamps stored results; ``publish(subject, payload)`` sends
    alerts from the validator threads. Validators start on the first tap of their stage.
    """

    def __init__(
        self,
        config: QualityConfig,
        instruments: Container[str],
        *,
        accounting: Accounting | None = None,
        clock: Callable[[], int],
        publish: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.instruments = instruments
        self.accounting = accounting if accounting is not None else Accounting()
        self._clock = clock
        self._publish = publish if config.alerts else None
        self._validators: dict[str, BatchValidator] = {}
        self._lock = threading.Lock()
        self._last_snapshot = 0
        self._closed = False
        self._budget: Any = None

    def enabled(self, stage: str) -> bool:
        return not self.config.stages or stage in self.config.stages

    def validator(self, stage: str) -> BatchValidator | None:
        cfg = self.config
        if not cfg.store:
            return None
        with self._lock:
            v = self._validators.get(stage)
            if v is None:
                from operators.quality.batch import BatchValidator, BatchValidatorConfig, DutyBudget

                if self._budget is None:  # one budget for all stages of the process
                    self._budget = DutyBudget(cfg.max_duty)
                v = BatchValidator(
                    BatchValidatorConfig(
                        stage=stage,
                        store=cfg.store,
                        suites_dir=cfg.suites_dir,
                        batch_rows=cfg.batch_rows,
                        max_queue=cfg.max_queue,
                        max_duty=cfg.max_duty,
                        engine=cfg.engine,
                        min_sample_rows=cfg.min_sample_rows,
                    ),
                    clock=self._clock,
                    publish=self._publish,
                    after_batch=self._after_batch,
                    budget=self._budget,
                ).start()
                self._validators[stage] = v
            return v

    def tap(
        self,
        stage: str,
        *,
        rules: RulesConfig | None = None,
        view: Callable[[Any], Any] | None = None,
        host_stage: str | None = None,
    ) -> QualityTap:
        """A new tap (its own rule state) sharing the stage's validator and the accounting."""
        rule = build_rule(stage, self.instruments, rules or self.config.rules)
        return QualityTap(
            stage,
            rule,
            accounting=self.accounting,
            validator=self.validator(stage),
            view=view,
            host_stage=host_stage,
        )

    def _after_batch(self) -> None:
        """From a validator thread: snapshot the accounting now and then (off the hot path)."""
        now = self._clock()
        if now - self._last_snapshot >= self.config.accounting_interval_s * 1e9:
            self._last_snapshot = now
            self.snapshot(now)

    def snapshot(self, ts: int | None = None) -> None:
        if not self.config.store:
            return
        from operators.quality.batch import record_accounting

        try:
            record_accounting(self.accounting, self.config.store, ts or self._clock())
        except Exception:
            log.exception("quality: cannot store the accounting snapshot")

    def close(self, timeout: float | None = 60.0) -> dict[str, Any]:
        """Validate what is pending, stop the validators and store the final accounting."""
        if self._closed:
            return {}
        self._closed = True
        stats = {stage: v.close(timeout) for stage, v in self._validators.items()}
        self.snapshot()
        return stats

    def close_at_exit(self) -> Quality:
        """For long-running flows: validate the tail and store the accounting at exit.

        pyarrow imports ``concurrent.futures.thread`` lazily, and that import registers
        its own exit hook, which fails once the interpreter is shutting down: the tail
        batch's result would then be lost. Importing it now makes the exit-time import a
        no-op.
        """
        import concurrent.futures.thread  # noqa: F401

        atexit.register(self.close, 30.0)
        return self


def build_quality(
    quality: QualityConfig | Quality | None,
    instruments: Container[str],
    accounting: Accounting | None,
    *,
    clock: Callable[[], int] | None = None,
    publish: Callable[[str, bytes], None] | None = None,
) -> Quality | None:
    """What a flow's ``build_flow(quality=...)`` takes: a config, a built layer or None.

    A config gets the wall clock: this is wiring, not operator logic.
    """
    if quality is None or isinstance(quality, Quality):
        return quality
    import time

    return Quality(
        quality,
        instruments,
        accounting=accounting,
        clock=clock or time.time_ns,
        publish=publish,
    )


__all__ = [
    "ACCOUNTING_PREFIX",
    "Quality",
    "QualityConfig",
    "QualityTap",
    "build_quality",
    "dlq_subject",
]
