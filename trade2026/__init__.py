"""Trade2026: a trading firm's real-time data path as stateful Bytewax dataflows."""

__version__ = "0.1.0"
