"""The published JSON Schema must be exactly what the Structs export today."""

from __future__ import annotations

import json
from pathlib import Path

from trade2026.commands.schema import export

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "contract.schema.json"


def test_committed_schema_matches_the_structs() -> None:
    committed = json.loads(SCHEMA.read_text())
    assert committed == json.loads(json.dumps(export())), (
        "docs/contract.schema.json drifted from schemas/; "
        "hint: trade2026 schema > docs/contract.schema.json"
    )


def test_every_canonical_record_is_documented() -> None:
    text = (SCHEMA.parent / "contract.md").read_text()
    for name in ("TradeTick", "Quote", "BookDelta", "DataGap", "DeadLetter"):
        assert f"### {name}" in text
