"""Load the per-stage Great Expectations suites kept as JSON in ``quality/suites``.

The JSON files are the single source of truth for the statistical expectations. GX's own
``ExpectationSuite`` constructor logs and *drops* an expectation it cannot build; here a
suite that does not load completely is an error, so a typo never silently weakens a check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite

#: ``quality/suites`` at the repository root; ``TRADE2026_QUALITY_SUITES`` overrides it.
DEFAULT_SUITES_DIR = Path(__file__).resolve().parents[2] / "quality" / "suites"


def suites_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get("TRADE2026_QUALITY_SUITES") or DEFAULT_SUITES_DIR)


def suite_names(path: str | Path | None = None) -> list[str]:
    return sorted(p.stem for p in suites_dir(path).glob("*.json"))


def load_suite_json(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """The suite's JSON document, checked for the shape GX 1.x expects."""
    file = suites_dir(path) / f"{name}.json"
    if not file.is_file():
        known = ", ".join(suite_names(path)) or "none"
        raise FileNotFoundError(
            f"quality suites: no suite {name!r} at {file}; hint: one of {known}"
        )
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"quality suites: {file} is not JSON ({exc}); hint: fix the file") from exc
    if not isinstance(doc, dict) or doc.get("name") != name:
        raise ValueError(
            f"quality suites: {file} must be an object whose name is {name!r}; "
            "hint: the file name and the suite name must agree"
        )
    exps = doc.get("expectations")
    if not isinstance(exps, list) or not all(
        isinstance(e, dict) and isinstance(e.get("type"), str) for e in exps
    ):
        raise ValueError(
            f"quality suites: {file}: expectations must be a list of {{type, kwargs}} objects; "
            "hint: see the GX 1.x ExpectationSuite JSON format"
        )
    return doc


def load_suite(name: str, path: str | Path | None = None) -> ExpectationSuite:
    """A GX ``ExpectationSuite`` built from the JSON file (imports great_expectations)."""
    from great_expectations.core import ExpectationSuite

    doc = load_suite_json(name, path)
    suite = ExpectationSuite(
        name=doc["name"],
        expectations=[
            {"type": e["type"], "kwargs": e.get("kwargs", {}), "meta": e.get("meta", {})}
            for e in doc["expectations"]
        ],
        meta=doc.get("meta") or None,
        notes=doc.get("notes"),
    )
    if len(suite.expectations) != len(doc["expectations"]):
        built = {e.expectation_type for e in suite.expectations}
        lost = [e["type"] for e in doc["expectations"] if e["type"] not in built]
        raise ValueError(
            f"quality suites: {name}: GX could not build {lost or 'some expectations'}; "
            "hint: check the expectation types and kwargs against GX 1.x"
        )
    return suite


__all__ = ["DEFAULT_SUITES_DIR", "load_suite", "load_suite_json", "suite_names", "suites_dir"]
