"""Where the bundled sample recordings live (``data/`` at the repository root)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = ROOT / "data" / "binance"


def sample_files() -> list[Path]:
    files = sorted(SAMPLE_DIR.glob("*.gz"))
    if not files:
        raise FileNotFoundError(
            f"no sample recordings under {SAMPLE_DIR}; hint: run from a clone of the repository"
        )
    return files
