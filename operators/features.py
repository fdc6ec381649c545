"""Event-time tumbling windows per key: instrument bars and account P&L/turnover.

Why windowing lives here rather than in bytewax's ``EventClock`` windows: bytewax 0.21.1
has two bugs reproduced on this project. Its ``EventClock`` default ``to_system_utc``
makes the worker busy-loop (issue #578: ~50k-160k items/s on a 1 s window, ~1k/s with
batch size 1, and items mis-marked late), and once all of a key's windows have closed the
key's watermark is forgotten, so a late item reopens -- and re-emits -- a window that was
already published. Here the watermark is plain per-key state that is never forgotten and
no wall clock is involved, so both problems cannot happen:

* watermark ``W = max(event time seen) - allowed_lateness``, per key, only ever rises;
* a window ``[s, e)`` is emitted when ``W >= e``, or at end of stream (:meth:`flush`);
* an item whose window has already been emitted is *late*: it is counted and returned
  as a :class:`~schemas.features.LateRecord` for the flow's ``late`` output, never merged
  into a published window and never dropped. Each window is therefore emitted exactly
  once, including after all of a key's windows have closed.

A window closes only when its key sees newer data (or at end of stream): a quiet
instrument's last window waits for its next tick. Windows with no records are not emitted.

Exactness: OHLC, volumes, notional, mid and spread extremes are ``Decimal``; VWAP is the
exact ``notional / volume`` rounded once to float; realized volatility (``sqrt`` of the sum
of squared log returns of consecutive trade prices, ordered by event time then arrival),
imbalance and the means are float statistics. Equal event times keep arrival order.

Clocks: Binance spot ``bookTicker`` carries no venue time, so a quote's ``ts_event`` is
our receive time, while a trade's is the venue's. In the recorded sample our clock runs
about 1.3 s behind Binance's, which is why the default allowed lateness is 2 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Generic, TypeVar

import msgspec

from schemas.canonical import Fill, Position, Quote, TradeTick
from schemas.common import NANOS_PER_SECOND, Aggressor
from schemas.features import AccountWindow, Bar, LateRecord

ZERO = Decimal(0)
TWO = Decimal(2)

#: Widths of the standard windows.
SECOND_NS = NANOS_PER_SECOND
MINUTE_NS = 60 * NANOS_PER_SECOND


class FeatureConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the feature flow windows its input.

    ``widths_ns``: the tumbling window widths, each windowed independently (a record can
    be on time for 1 min and late for 1 s). ``allowed_lateness_ns``: how far behind the
    newest event time of its key a record may be and still join its window.
    ``account_width_ns``: the window for account P&L and turnover.
    """

    widths_ns: tuple[int, ...] = (SECOND_NS, MINUTE_NS)
    allowed_lateness_ns: int = 2 * SECOND_NS
    account_width_ns: int = MINUTE_NS

    def __post_init__(self) -> None:
        if not self.widths_ns or any(w <= 0 for w in self.widths_ns):
            raise ValueError(
                f"features config: widths_ns={self.widths_ns!r} must be positive; "
                "hint: use e.g. (1_000_000_000, 60_000_000_000)"
            )
        if len(set(self.widths_ns)) != len(self.widths_ns):
            raise ValueError("features config: widths_ns has duplicates; hint: list each once")
        if self.allowed_lateness_ns < 0 or self.account_width_ns <= 0:
            raise ValueError(
                "features config: allowed_lateness_ns must be >= 0 and account_width_ns > 0; "
                "hint: lateness 0 closes a window at the first newer event"
            )


def width_label(width_ns: int) -> str:
    """``1s``, ``1m``, ``250ms``: the suffix of feature view names and step ids."""
    if width_ns % MINUTE_NS == 0:
        return f"{width_ns // MINUTE_NS}m"
    if width_ns % SECOND_NS == 0:
        return f"{width_ns // SECOND_NS}s"
    if width_ns % 1_000_000 == 0:
        return f"{width_ns // 1_000_000}ms"
    return f"{width_ns}ns"


A = TypeVar("A")
R = TypeVar("R")
O_co = TypeVar("O_co")


class TumblingWindows(Generic[R, A, O_co]):
    """Event-time tumbling windows for one key; engine-agnostic and wall-clock free.

    ``new_acc`` makes an empty accumulator, ``add(acc, record, seq)`` folds a record in
    (``seq`` is the arrival number, for stable ordering), ``close(start, end, acc)`` turns
    an accumulator into the emitted record.
    """

    def __init__(
        self,
        stage: str,
        key: str,
        width_ns: int,
        allowed_lateness_ns: int,
        new_acc: Callable[[], A],
        add: Callable[[A, R, int], None],
        close: Callable[[int, int, A], O_co],
    ) -> None:
        self.stage = stage
        self.key = key
        self.width_ns = width_ns
        self.allowed_lateness_ns = allowed_lateness_ns
        self._new_acc = new_acc
        self._add = add
        self._close = close
        self._open: dict[int, A] = {}
        self._max_ts: int | None = None
        #: Every window ending at or before this has been emitted (or could no longer be).
        self.closed_through: int | None = None
        self._seq = 0
        self.records_in = 0
        self.accepted = 0
        self.late = 0
        self.emitted = 0

    @property
    def watermark(self) -> int | None:
        if self._max_ts is None:
            return None
        return self._max_ts - self.allowed_lateness_ns

    def on_item(self, record: R, ts_event: int) -> list[O_co | LateRecord]:
        """Fold one record in; returns late records and any windows it closed, in order."""
        self.records_in += 1
        width = self.width_ns
        start = ts_event - ts_event % width
        closed = self.closed_through
        if closed is not None and start + width <= closed:
            self.late += 1
            return [
                LateRecord(
                    stage=self.stage,
                    key=self.key,
                    width_ns=width,
                    ts_event=ts_event,
                    watermark=closed,
                    window_start_ns=start,
                    record=msgspec.Raw(msgspec.json.encode(record)),
                )
            ]
        acc = self._open.get(start)
        if acc is None:
            acc = self._open[start] = self._new_acc()
        self._seq += 1
        self._add(acc, record, self._seq)
        self.accepted += 1
        if self._max_ts is None or ts_event > self._max_ts:
            self._max_ts = ts_event
            wm = ts_event - self.allowed_lateness_ns
            if closed is None or wm > closed:
                self.closed_through = wm
                return self._emit_through(wm)
        return []

    def _emit_through(self, watermark: int) -> list[O_co | LateRecord]:
        width = self.width_ns
        ready = [s for s in self._open if s + width <= watermark]
        if not ready:
            return []
        ready.sort()
        out: list[O_co | LateRecord] = []
        for start in ready:
            out.append(self._close(start, start + width, self._open.pop(start)))
        self.emitted += len(out)
        return out

    def flush(self) -> list[O_co]:
        """End of stream: emit every open window; later items for them count as late."""
        starts = sorted(self._open)
        out = [self._close(s, s + self.width_ns, self._open.pop(s)) for s in starts]
        if starts:
            end = starts[-1] + self.width_ns
            if self.closed_through is None or end > self.closed_through:
                self.closed_through = end
        self.emitted += len(out)
        return out

    @property
    def open_windows(self) -> int:
        return len(self._open)


# ---------------------------------------------------------------- instrument bars


class _BarAcc:
    __slots__ = (
        "buy",
        "mid_sum",
        "notional",
        "quotes",
        "sell",
        "spread_bps",
        "spread_sum",
        "trades",
        "volume",
    )

    def __init__(self) -> None:
        #: (ts_event, seq, price)
        self.trades: list[tuple[int, int, Decimal]] = []
        self.volume = ZERO
        self.buy = ZERO
        self.sell = ZERO
        self.notional = ZERO
        #: (ts_event, seq, mid, spread)
        self.quotes: list[tuple[int, int, Decimal, Decimal]] = []
        self.mid_sum = ZERO
        self.spread_sum = ZERO
        self.spread_bps = 0.0


def _add_market(acc: _BarAcc, record: TradeTick | Quote, seq: int) -> None:
    if type(record) is TradeTick:
        size = record.size
        acc.trades.append((record.ts_event, seq, record.price))
        acc.volume += size
        acc.notional += record.price * size
        if record.aggressor is Aggressor.BUY:
            acc.buy += size
        elif record.aggressor is Aggressor.SELL:
            acc.sell += size
    else:
        assert type(record) is Quote
        mid = (record.bid_price + record.ask_price) / TWO
        spread = record.ask_price - record.bid_price
        acc.quotes.append((record.ts_event, seq, mid, spread))
        acc.mid_sum += mid
        acc.spread_sum += spread


def _realized_vol(prices: list[Decimal]) -> float | None:
    if len(prices) < 2:
        return None
    total = 0.0
    prev = float(prices[0])
    for p in prices[1:]:
        cur = float(p)
        r = math.log(cur / prev)
        total += r * r
        prev = cur
    return math.sqrt(total)


def _bar_closer(instrument_id: str, width_ns: int) -> Callable[[int, int, _BarAcc], Bar]:
    def close(start: int, end: int, acc: _BarAcc) -> Bar:
        open_: Decimal | None
        close_: Decimal | None
        high: Decimal | None
        low: Decimal | None
        vwap: float | None
        imbalance: float | None
        vol: float | None
        mid_open: Decimal | None
        mid_close: Decimal | None
        spread_min: Decimal | None
        spread_max: Decimal | None
        mid_mean: float | None
        spread_mean: float | None
        trades = acc.trades
        if trades:
            trades.sort(key=lambda t: (t[0], t[1]))
            prices = [t[2] for t in trades]
            open_, close_ = prices[0], prices[-1]
            high, low = max(prices), min(prices)
            vwap = float(acc.notional / acc.volume) if acc.volume else None
            known = acc.buy + acc.sell
            imbalance = float((acc.buy - acc.sell) / known) if known else None
            vol = _realized_vol(prices)
        else:
            open_ = close_ = high = low = None
            vwap = imbalance = vol = None
        quotes = acc.quotes
        n_q = len(quotes)
        if quotes:
            quotes.sort(key=lambda q: (q[0], q[1]))
            mid_open, mid_close = quotes[0][2], quotes[-1][2]
            spreads = [q[3] for q in quotes]
            spread_min, spread_max = min(spreads), max(spreads)
            mid_mean = float(acc.mid_sum / n_q)
            spread_mean = float(acc.spread_sum / n_q)
        else:
            mid_open = mid_close = spread_min = spread_max = None
            mid_mean = spread_mean = None
        return Bar(
            instrument_id=instrument_id,
            width_ns=width_ns,
            start_ns=start,
            end_ns=end,
            trade_count=len(trades),
            volume=acc.volume,
            buy_volume=acc.buy,
            sell_volume=acc.sell,
            notional=acc.notional,
            open=open_,
            high=high,
            low=low,
            close=close_,
            vwap=vwap,
            imbalance=imbalance,
            realized_vol=vol,
            quote_count=n_q,
            mid_open=mid_open,
            mid_close=mid_close,
            mid_mean=mid_mean,
            spread_min=spread_min,
            spread_max=spread_max,
            spread_mean=spread_mean,
        )

    return close


class InstrumentBars:
    """One instrument's bars over one window width, fed :class:`TradeTick`/:class:`Quote`."""

    def __init__(self, instrument_id: str, width_ns: int, allowed_lateness_ns: int) -> None:
        self.windows: TumblingWindows[TradeTick | Quote, _BarAcc, Bar] = TumblingWindows(
            f"features.bars.{width_label(width_ns)}",
            instrument_id,
            width_ns,
            allowed_lateness_ns,
            _BarAcc,
            _add_market,
            _bar_closer(instrument_id, width_ns),
        )

    def on_tick(self, tick: TradeTick | Quote) -> list[Bar | LateRecord]:
        return self.windows.on_item(tick, tick.ts_event)

    def flush(self) -> list[Bar]:
        return self.windows.flush()


# ---------------------------------------------------------------- accounts


class _AccountAcc:
    __slots__ = ("fees", "fills", "position_updates", "positions", "turnover")

    def __init__(self) -> None:
        self.fills = 0
        self.turnover = ZERO
        self.fees = ZERO
        self.position_updates = 0
        #: instrument -> (ts_event, seq, position): the window's latest per instrument
        self.positions: dict[str, tuple[int, int, Position]] = {}


def _add_account(acc: _AccountAcc, record: Fill | Position, seq: int) -> None:
    if type(record) is Fill:
        acc.fills += 1
        acc.turnover += abs(record.quantity * record.price)
        acc.fees += record.fee
    else:
        assert type(record) is Position
        acc.position_updates += 1
        key = (record.ts_event, seq)
        prev = acc.positions.get(record.instrument_id)
        if prev is None or key > (prev[0], prev[1]):
            acc.positions[record.instrument_id] = (record.ts_event, seq, record)


class AccountFeatures:
    """One account's rolling P&L and turnover per window, fed :class:`Fill`/:class:`Position`.

    Windows close in start order, so the rolling "latest position per instrument" state
    is advanced in event-time order even when records arrive out of order within the
    allowed lateness.
    """

    def __init__(self, account_id: str, width_ns: int, allowed_lateness_ns: int) -> None:
        self.account_id = account_id
        self._latest: dict[str, Position] = {}
        self._prev_total: Decimal | None = None
        self.windows: TumblingWindows[Fill | Position, _AccountAcc, AccountWindow] = (
            TumblingWindows(
                f"features.accounts.{width_label(width_ns)}",
                account_id,
                width_ns,
                allowed_lateness_ns,
                _AccountAcc,
                _add_account,
                self._close,
            )
        )

    def _close(self, start: int, end: int, acc: _AccountAcc) -> AccountWindow:
        for instrument, (_, _, pos) in acc.positions.items():
            self._latest[instrument] = pos
        realized = sum((p.realized_pnl for p in self._latest.values()), ZERO)
        unrealized = sum((p.unrealized_pnl for p in self._latest.values()), ZERO)
        total = realized + unrealized
        change = total if self._prev_total is None else total - self._prev_total
        self._prev_total = total
        return AccountWindow(
            account_id=self.account_id,
            width_ns=self.windows.width_ns,
            start_ns=start,
            end_ns=end,
            fill_count=acc.fills,
            turnover=acc.turnover,
            fees=acc.fees,
            position_updates=acc.position_updates,
            realized_pnl=realized,
            unrealized_pnl=unrealized,
            total_pnl=total,
            pnl_change=change,
        )

    def on_record(self, record: Fill | Position) -> list[AccountWindow | LateRecord]:
        return self.windows.on_item(record, record.ts_event)

    def flush(self) -> list[AccountWindow]:
        return self.windows.flush()


__all__ = [
    "MINUTE_NS",
    "SECOND_NS",
    "AccountFeatures",
    "FeatureConfig",
    "InstrumentBars",
    "TumblingWindows",
    "width_label",
]
