"""Windowed feature records: what the feature flow emits and the feature store serves.

Two layers, on purpose:

* :class:`Bar` and :class:`AccountWindow` are the flow's exact records. OHLC, volumes,
  notional, spreads, P&L and turnover are :class:`~decimal.Decimal`, computed exactly from
  the venue's decimal strings. Only statistics that need real arithmetic (VWAP, imbalance,
  realized volatility, means of mid and spread) are ``float`` -- and VWAP is the exact
  ``notional / volume`` quotient rounded once to a float at the very end.
* :class:`FeatureRow` and :class:`AccountFeatureRow` are those records flattened for the
  feature store, which has no decimal type: every value becomes ``float64`` (or ``int64``
  for counts) in exactly one conversion, at the edge.

Windows are half-open ``[start_ns, end_ns)`` in event time. A feature becomes knowable at
``end_ns``, so ``end_ns`` is the store's event timestamp: a point-in-time join at time
``t`` never sees a window that had not closed by ``t``.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from schemas.common import Nanos, Price, Quantity


class Bar(msgspec.Struct, frozen=True, tag_field="kind", tag="bar"):
    """One instrument's trades and quotes over one event-time window ``[start_ns, end_ns)``.

    Trade fields are ``None``/zero when the window saw quotes only, quote fields when it
    saw trades only; a window with neither is never emitted. ``realized_vol`` is
    ``sqrt(sum(ln(p_i / p_(i-1))^2))`` over consecutive trades in the window, ordered by
    event time then arrival: it is not annualised, and ``None`` with fewer than 2 trades.
    ``imbalance`` is ``(buy - sell) / (buy + sell)`` over trades whose aggressor is known.
    ``mid_mean`` and ``spread_mean`` are plain means over quote updates, not time-weighted.
    """

    instrument_id: str
    width_ns: int
    start_ns: Nanos
    end_ns: Nanos
    trade_count: int
    volume: Quantity
    buy_volume: Quantity
    sell_volume: Quantity
    notional: Price
    open: Price | None
    high: Price | None
    low: Price | None
    close: Price | None
    vwap: float | None
    imbalance: float | None
    realized_vol: float | None
    quote_count: int
    mid_open: Price | None
    mid_close: Price | None
    mid_mean: float | None
    spread_min: Price | None
    spread_max: Price | None
    spread_mean: float | None


class AccountWindow(msgspec.Struct, frozen=True, tag_field="kind", tag="account_window"):
    """One account's P&L and turnover at the close of an event-time window.

    P&L is rolling: ``realized_pnl``/``unrealized_pnl`` sum the latest :class:`Position`
    of every instrument the account has ever reported, as of ``end_ns``; ``pnl_change`` is
    the change of their sum since the account's previous emitted window (the full total
    for the first). ``turnover`` is ``sum(|quantity * price|)`` of fills in the window.
    """

    account_id: str
    width_ns: int
    start_ns: Nanos
    end_ns: Nanos
    fill_count: int
    turnover: Price
    fees: Price
    position_updates: int
    realized_pnl: Price
    unrealized_pnl: Price
    total_pnl: Price
    pnl_change: Price


class LateRecord(msgspec.Struct, frozen=True, tag_field="kind", tag="late"):
    """A record whose window had already been emitted when it arrived.

    It is routed here (the flow's ``late`` output) instead of being merged into a
    window that was already published, or dropped. ``record`` is the original record.
    """

    stage: str
    key: str
    width_ns: int
    ts_event: Nanos
    watermark: int
    window_start_ns: Nanos
    record: msgspec.Raw


class FeatureRow(msgspec.Struct, frozen=True):
    """A :class:`Bar` as the feature store stores it: ``float64`` features, int64 counts.

    ``event_timestamp_ns`` is the window end (when the features became knowable).
    Missing values (no trades or no quotes in the window) are ``NaN``-free ``None``.
    """

    instrument_id: str
    event_timestamp_ns: int
    window_start_ns: int
    trade_count: int
    quote_count: int
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    volume: float
    buy_volume: float
    sell_volume: float
    notional: float
    vwap: float | None
    imbalance: float | None
    realized_vol: float | None
    mid_open: float | None
    mid_close: float | None
    mid_mean: float | None
    spread_min: float | None
    spread_max: float | None
    spread_mean: float | None


class AccountFeatureRow(msgspec.Struct, frozen=True):
    account_id: str
    event_timestamp_ns: int
    window_start_ns: int
    fill_count: int
    position_updates: int
    turnover: float
    fees: float
    realized_pnl: float
    unrealized_pnl: float
    total_pnl: float
    pnl_change: float


def _f(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def feature_row(bar: Bar) -> FeatureRow:
    """Flatten an exact :class:`Bar` into the store's float row (one conversion each)."""
    return FeatureRow(
        instrument_id=bar.instrument_id,
        event_timestamp_ns=bar.end_ns,
        window_start_ns=bar.start_ns,
        trade_count=bar.trade_count,
        quote_count=bar.quote_count,
        open=_f(bar.open),
        high=_f(bar.high),
        low=_f(bar.low),
        close=_f(bar.close),
        volume=float(bar.volume),
        buy_volume=float(bar.buy_volume),
        sell_volume=float(bar.sell_volume),
        notional=float(bar.notional),
        vwap=bar.vwap,
        imbalance=bar.imbalance,
        realized_vol=bar.realized_vol,
        mid_open=_f(bar.mid_open),
        mid_close=_f(bar.mid_close),
        mid_mean=bar.mid_mean,
        spread_min=_f(bar.spread_min),
        spread_max=_f(bar.spread_max),
        spread_mean=bar.spread_mean,
    )


def account_feature_row(window: AccountWindow) -> AccountFeatureRow:
    return AccountFeatureRow(
        account_id=window.account_id,
        event_timestamp_ns=window.end_ns,
        window_start_ns=window.start_ns,
        fill_count=window.fill_count,
        position_updates=window.position_updates,
        turnover=float(window.turnover),
        fees=float(window.fees),
        realized_pnl=float(window.realized_pnl),
        unrealized_pnl=float(window.unrealized_pnl),
        total_pnl=float(window.total_pnl),
        pnl_change=float(window.pnl_change),
    )


#: Feature names per store row, in order, without keys and timestamps.
INSTRUMENT_FEATURES: tuple[str, ...] = tuple(
    f
    for f in FeatureRow.__struct_fields__
    if f not in ("instrument_id", "event_timestamp_ns", "window_start_ns")
)
ACCOUNT_FEATURES: tuple[str, ...] = tuple(
    f
    for f in AccountFeatureRow.__struct_fields__
    if f not in ("account_id", "event_timestamp_ns", "window_start_ns")
)
#: Features stored as int64 rather than float64.
INT_FEATURES = frozenset({"trade_count", "quote_count", "fill_count", "position_updates"})

__all__ = [
    "ACCOUNT_FEATURES",
    "INSTRUMENT_FEATURES",
    "INT_FEATURES",
    "AccountFeatureRow",
    "AccountWindow",
    "Bar",
    "FeatureRow",
    "LateRecord",
    "account_feature_row",
    "feature_row",
]
