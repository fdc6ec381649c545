"""Data quality on every stage: per-record rules (hot path) and per-batch GX suites (off it).

Only light modules are imported here: ``rules`` is plain Python; ``batch``, ``suites`` and
``report`` import pandas, deltalake and great_expectations inside the functions that use them.
"""

STAGES = ("raw", "ticks", "orders", "order_events", "fills", "positions", "alt", "features")

__all__ = ["STAGES"]
