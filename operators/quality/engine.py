"""A fast evaluator of the GX suite JSON for live micro-batches, with GX-shaped results.

Why: Great Expectations costs ~0.1-0.2 s per batch whatever its size (metric resolution,
validation graph, result objects), all of it holding the GIL, so it took 25-45 % of a
stage's throughput in ``benchmarks/quality.py``. The expectations our suites use are a
handful of vectorised pandas operations; evaluated directly they cost a few milliseconds.

The suite JSON files stay the single definition: this module reads the same documents,
and a suite using an expectation type it does not know is validated by GX instead
(:class:`operators.quality.batch.SuiteValidator`). Results have the shape of GX's
``ExpectationSuiteValidationResult.to_json_dict()``, so the store, the alerts, the report
and GX's own Data Docs renderer read them unchanged. ``tests/operators/quality/
test_engine.py`` checks every supported type against real GX on the same frames.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ENGINE_NAME = "trade2026-fast"

_Evaluator = Callable[["pd.DataFrame", dict[str, Any], int], tuple[bool, dict[str, Any]]]


def _examples(values: Any, n: int) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in list(values[:n])]


def _map_result(
    total: int, missing: int, unexpected: Any, mostly: float, n: int, *, over_total: bool = False
) -> tuple[bool, dict[str, Any]]:
    """GX's column-map bookkeeping: ``mostly`` applies to the non-missing rows, except for
    ``not_be_null`` where missing rows are the unexpected ones (``over_total``)."""
    count = len(unexpected)
    base = total if over_total else total - missing
    pct = 100.0 * count / base if base else 0.0
    ok = (1.0 - count / base) >= mostly if base else True
    res: dict[str, Any] = {
        "element_count": total,
        "unexpected_count": count,
        "unexpected_percent": pct,
        "partial_unexpected_list": _examples(unexpected, n),
    }
    if not over_total:
        res |= {
            "missing_count": missing,
            "missing_percent": 100.0 * missing / total if total else None,
            "unexpected_percent_total": 100.0 * count / total if total else 0.0,
            "unexpected_percent_nonmissing": pct,
        }
    return ok, res


def _column(df: pd.DataFrame, kw: dict[str, Any]) -> pd.Series:
    col = kw["column"]
    if col not in df.columns:
        raise KeyError(f"column {col!r} is not in the batch")
    return df[col]


def _row_count(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    rows = len(df)
    lo, hi = kw.get("min_value"), kw.get("max_value")
    ok = (lo is None or rows >= lo) and (hi is None or rows <= hi)
    return ok, {"observed_value": rows}


def _not_null(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    s = _column(df, kw)
    bad = s[s.isna()]
    return _map_result(len(s), 0, bad.to_numpy(), kw.get("mostly", 1.0), n, over_total=True)


def _in_set(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    s = _column(df, kw)
    present = s.dropna()
    bad = present[~present.isin(list(kw.get("value_set") or []))]
    return _map_result(len(s), len(s) - len(present), bad.to_numpy(), kw.get("mostly", 1.0), n)


def _between(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    s = _column(df, kw)
    present = s.dropna()
    lo, hi = kw.get("min_value"), kw.get("max_value")
    good = present == present  # all True, keeps the index
    if lo is not None:
        good &= present > lo if kw.get("strict_min") else present >= lo
    if hi is not None:
        good &= present < hi if kw.get("strict_max") else present <= hi
    bad = present[~good.astype(bool)]
    return _map_result(len(s), len(s) - len(present), bad.to_numpy(), kw.get("mostly", 1.0), n)


def _unique(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    s = _column(df, kw)
    present = s.dropna()
    bad = present[present.duplicated(keep=False)]
    return _map_result(len(s), len(s) - len(present), bad.to_numpy(), kw.get("mostly", 1.0), n)


def _increasing(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    s = _column(df, kw)
    present = s.dropna()
    diff = present.diff()
    bad_mask = (diff <= 0) if kw.get("strictly") else (diff < 0)
    bad = present[bad_mask.fillna(False).astype(bool)]
    return _map_result(len(s), len(s) - len(present), bad.to_numpy(), kw.get("mostly", 1.0), n)


def _mean_between(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    s = _column(df, kw).dropna()
    mean = float(s.mean()) if len(s) else None
    lo, hi = kw.get("min_value"), kw.get("max_value")
    ok = mean is not None
    if ok and lo is not None:
        ok = mean > lo if kw.get("strict_min") else mean >= lo
    if ok and hi is not None:
        ok = mean < hi if kw.get("strict_max") else mean <= hi
    return bool(ok), {"observed_value": mean}


def _pair_greater(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    a, b = df[kw["column_A"]], df[kw["column_B"]]
    ignore = kw.get("ignore_row_if", "both_values_are_missing")
    if ignore == "either_value_is_missing":
        keep = a.notna() & b.notna()
    elif ignore == "both_values_are_missing":
        keep = a.notna() | b.notna()
    else:
        keep = a == a
    a, b = a[keep], b[keep]
    good = (a >= b) if kw.get("or_equal") else (a > b)
    bad_mask = ~good.fillna(False).astype(bool)
    bad = [[x, y] for x, y in zip(a[bad_mask][:n], b[bad_mask][:n], strict=True)]
    total, count = len(df), int(bad_mask.sum())
    base = int(keep.sum())
    mostly = kw.get("mostly", 1.0)
    ok = (1.0 - count / base) >= mostly if base else True
    return ok, {
        "element_count": total,
        "unexpected_count": count,
        "unexpected_percent": 100.0 * count / base if base else 0.0,
        "partial_unexpected_list": [
            [v.item() if hasattr(v, "item") else v for v in pair] for pair in bad
        ],
        "missing_count": total - base,
        "missing_percent": 100.0 * (total - base) / total if total else None,
    }


def _compound_unique(df: pd.DataFrame, kw: dict[str, Any], n: int) -> tuple[bool, dict[str, Any]]:
    cols = list(kw["column_list"])
    sub = df[cols]
    ignore = kw.get("ignore_row_if", "all_values_are_missing")
    if ignore == "any_value_is_missing":
        keep = sub.notna().all(axis=1)
    elif ignore == "all_values_are_missing":
        keep = sub.notna().any(axis=1)
    else:
        keep = sub.index == sub.index
    kept = sub[keep]
    dup = kept.duplicated(keep=False)
    bad = kept[dup]
    count, total, base = int(dup.sum()), len(df), int(keep.sum())
    mostly = kw.get("mostly", 1.0)
    ok = (1.0 - count / base) >= mostly if base else True
    return ok, {
        "element_count": total,
        "unexpected_count": count,
        "unexpected_percent": 100.0 * count / base if base else 0.0,
        "partial_unexpected_list": bad.head(n).to_dict("records"),
        "missing_count": total - base,
        "missing_percent": 100.0 * (total - base) / total if total else None,
    }


EVALUATORS: dict[str, _Evaluator] = {
    "expect_table_row_count_to_be_between": _row_count,
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_between": _between,
    "expect_column_values_to_be_unique": _unique,
    "expect_column_values_to_be_increasing": _increasing,
    "expect_column_mean_to_be_between": _mean_between,
    "expect_column_pair_values_a_to_be_greater_than_b": _pair_greater,
    "expect_compound_columns_to_be_unique": _compound_unique,
}
#: Keyword arguments that only shape GX's output or are handled above.
_KNOWN_KWARGS = frozenset(
    {
        "column", "column_A", "column_B", "column_list", "value_set", "min_value", "max_value",
        "strict_min", "strict_max", "mostly", "strictly", "or_equal", "ignore_row_if",
        "row_condition", "condition_parser", "result_format",
    }
)  # fmt: skip
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def supports(doc: dict[str, Any]) -> bool:
    """True when every expectation of the suite document can be evaluated here."""
    for e in doc.get("expectations") or []:
        kw = e.get("kwargs") or {}
        if e.get("type") not in EVALUATORS or not set(kw) <= _KNOWN_KWARGS:
            return False
        if "row_condition" in kw and kw.get("condition_parser") != "pandas":
            return False
    return True


def referenced_columns(doc: dict[str, Any]) -> set[str]:
    """Every column the suite reads, row conditions included (a superset is harmless)."""
    cols: set[str] = set()
    for e in doc.get("expectations") or []:
        kw = e.get("kwargs") or {}
        for k in ("column", "column_A", "column_B"):
            if k in kw:
                cols.add(str(kw[k]))
        cols.update(str(c) for c in kw.get("column_list") or [])
        if kw.get("row_condition"):
            cols.update(_IDENT.findall(re.sub(r"([\"']).*?\1", "", str(kw["row_condition"]))))
    return cols


class FastSuite:
    """One suite document bound for repeated validation of pandas frames."""

    def __init__(self, doc: dict[str, Any], examples: int = 5) -> None:
        if not supports(doc):
            raise ValueError(
                f"quality engine: suite {doc.get('name')!r} uses an expectation the fast engine "
                "does not evaluate; hint: validate it with GX (engine='gx')"
            )
        self.doc = doc
        self.name = str(doc["name"])
        self.examples = examples

    @classmethod
    def load(cls, name: str, path: str | Path | None = None, examples: int = 5) -> FastSuite:
        from operators.quality.suites import load_suite_json

        return cls(load_suite_json(name, path), examples)

    def validate(self, df: pd.DataFrame) -> dict[str, Any]:
        results = []
        for e in self.doc["expectations"]:
            kw = dict(e.get("kwargs") or {})
            frame = df
            try:
                if kw.get("row_condition"):
                    frame = df.query(str(kw["row_condition"]), engine="python")
                ok, res = EVALUATORS[e["type"]](frame, kw, self.examples)
                exc: dict[str, Any] = {
                    "raised_exception": False,
                    "exception_traceback": None,
                    "exception_message": None,
                }
            except Exception as err:  # a missing column or a bad kwarg: GX reports, not raises
                ok, res = False, {}
                exc = {
                    "raised_exception": True,
                    "exception_traceback": None,
                    "exception_message": f"{type(err).__name__}: {err}",
                }
            results.append(
                {
                    "success": bool(ok),
                    "expectation_config": {
                        "type": e["type"],
                        "kwargs": kw,
                        "meta": e.get("meta") or {},
                    },
                    "result": res,
                    "meta": {},
                    "exception_info": exc,
                }
            )
        passed = sum(1 for r in results if r["success"])
        return {
            "success": passed == len(results),
            "suite_name": self.name,
            "suite_parameters": {},
            "results": results,
            "statistics": {
                "evaluated_expectations": len(results),
                "successful_expectations": passed,
                "unsuccessful_expectations": len(results) - passed,
                "success_percent": 100.0 * passed / len(results) if results else None,
            },
            "meta": {"engine": ENGINE_NAME},
            "id": None,
        }


__all__ = ["ENGINE_NAME", "EVALUATORS", "FastSuite", "referenced_columns", "supports"]
