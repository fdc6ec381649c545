"""In = out + dead-lettered + deduplicated, per stage and per instrument.

Every stage reports what happened to each record it took in. Counts are kept
exactly here (thread-safe, cheap to bump once per batch) and mirrored to
Prometheus so a running flow shows them at ``/metrics``; tests and the demo read
the exact numbers back without scraping.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

IN = "in"
OUT = "out"
DEAD_LETTERED = "dead_lettered"
DUPLICATE = "duplicate"
OUTCOMES = (IN, OUT, DEAD_LETTERED, DUPLICATE)
#: The instrument label for records refused before their instrument was known.
UNKNOWN_INSTRUMENT = "-"


@dataclass(frozen=True)
class StageCount:
    records_in: int = 0
    out: int = 0
    dead_lettered: int = 0
    duplicates: int = 0

    @property
    def balanced(self) -> bool:
        return self.records_in == self.out + self.dead_lettered + self.duplicates

    @property
    def unaccounted(self) -> int:
        return self.records_in - self.out - self.dead_lettered - self.duplicates


class Accounting:
    """Exact per-(stage, instrument, outcome) counters, optionally mirrored to Prometheus."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._reasons: Counter[tuple[str, str]] = Counter()
        self._problems: Counter[tuple[str, str, str]] = Counter()
        self._prom: PromCounter | None = None
        self._prom_reasons: PromCounter | None = None
        self._prom_problems: PromCounter | None = None
        if registry is not None:
            self._prom = PromCounter(
                "trade2026_stage_records",
                "Records per stage, instrument and outcome (in/out/dead_lettered/duplicate).",
                ["stage", "instrument", "outcome"],
                registry=registry,
            )
            self._prom_reasons = PromCounter(
                "trade2026_dead_letters",
                "Dead-lettered records per stage and reason code.",
                ["stage", "reason"],
                registry=registry,
            )
            self._prom_problems = PromCounter(
                "trade2026_sequence_problems",
                "Sequence gaps and out-of-order events per stage, instrument and problem.",
                ["stage", "instrument", "problem"],
                registry=registry,
            )

    def add(self, stage: str, counts: Mapping[tuple[str, str], int]) -> None:
        """Add ``{(instrument, outcome): n}`` for one stage, typically once per batch."""
        with self._lock:
            for (instrument, outcome), n in counts.items():
                if n:
                    self._counts[(stage, instrument, outcome)] += n
        if self._prom is not None:
            for (instrument, outcome), n in counts.items():
                if n:
                    self._prom.labels(stage, instrument, outcome).inc(n)

    def add_reasons(self, stage: str, reasons: Iterable[str]) -> None:
        tally = Counter(reasons)
        with self._lock:
            for reason, n in tally.items():
                self._reasons[(stage, reason)] += n
        if self._prom_reasons is not None:
            for reason, n in tally.items():
                self._prom_reasons.labels(stage, reason).inc(n)

    def add_problems(self, stage: str, problems: Iterable[tuple[str, str]]) -> None:
        """Count ``(instrument, problem)`` pairs such as sequence gaps (not records lost)."""
        tally = Counter(problems)
        with self._lock:
            for (instrument, problem), n in tally.items():
                self._problems[(stage, instrument, problem)] += n
        if self._prom_problems is not None:
            for (instrument, problem), n in tally.items():
                self._prom_problems.labels(stage, instrument, problem).inc(n)

    def problems(self, stage: str) -> dict[str, int]:
        totals: Counter[str] = Counter()
        with self._lock:
            for (st, _inst, problem), n in self._problems.items():
                if st == stage:
                    totals[problem] += n
        return dict(sorted(totals.items()))

    def stage(self, stage: str, instrument: str | None = None) -> StageCount:
        """Totals for a stage, over all instruments or for one."""
        totals = dict.fromkeys(OUTCOMES, 0)
        with self._lock:
            for (st, inst, outcome), n in self._counts.items():
                if st == stage and (instrument is None or inst == instrument):
                    totals[outcome] += n
        return StageCount(totals[IN], totals[OUT], totals[DEAD_LETTERED], totals[DUPLICATE])

    def instruments(self, stage: str) -> list[str]:
        with self._lock:
            return sorted({inst for (st, inst, _), _n in self._counts.items() if st == stage})

    def reasons(self, stage: str) -> dict[str, int]:
        with self._lock:
            return {r: n for (st, r), n in sorted(self._reasons.items()) if st == stage}

    def stages(self) -> list[str]:
        with self._lock:
            return sorted({st for (st, _, _) in self._counts})
