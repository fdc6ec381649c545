"""Pre-trade risk limits: a versioned TOML file, reloaded while the flow runs.

The limits live apart from the instruments config because they change for a different
reason (a risk officer tightens an account intraday; an exchange changes a tick size).
Every :class:`~schemas.orders.RiskDecision` names the ``version`` it was made under, so
bump it on every edit.

Per-account tables override the ``[defaults]`` table field by field; an omitted field
(or one set to the same value as the default) inherits. A limit that is absent
everywhere is not enforced.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import msgspec

from schemas.common import NANOS_PER_SECOND

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "trade2026" / "config" / "risk.toml"


class AccountLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One account's limits. ``None`` means "not enforced" (or "inherit" in an override).

    Notionals and exposure are in the instrument's quote currency; mixing quote
    currencies in one account's gross exposure is the config author's responsibility.
    """

    max_order_qty: Decimal | None = None
    max_order_notional: Decimal | None = None
    #: Worst-case absolute position per instrument: position plus every open order on
    #: the side that grows it, plus the new order.
    max_position_qty: Decimal | None = None
    max_position_qty_by_instrument: dict[str, Decimal] | None = None
    #: Sum of |position| x mark plus the notional of every open order plus the new one.
    max_gross_exposure: Decimal | None = None
    max_open_orders: int | None = None
    #: Sliding event-time window for the rate limits.
    rate_window_ns: int | None = None
    max_orders_per_window: int | None = None
    max_cancels_per_window: int | None = None
    #: A positive amount: once the day's P&L is at or below ``-daily_loss_limit`` the
    #: account is reduce-only until the next UTC day.
    daily_loss_limit: Decimal | None = None
    #: Fat-finger band: a limit price more than this many basis points from the
    #: reference (last trade, else mid) is denied.
    price_band_bps: Decimal | None = None
    #: Market data older than this (its receive time vs the order's ts) is stale: market
    #: orders are refused and the price band is not applied.
    max_market_data_age_ns: int | None = None


_FIELDS = AccountLimits.__struct_fields__


class RiskLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: str
    #: Orders without an account land here (the gateway fills it in).
    default_account: str = "default"
    #: When true, only ``default_account`` and accounts with a table under
    #: ``[accounts]`` may trade; anything else is denied ``UNKNOWN_ACCOUNT``.
    require_declared_accounts: bool = True
    defaults: AccountLimits = AccountLimits()
    accounts: dict[str, AccountLimits] = {}

    def is_declared(self, account_id: str) -> bool:
        return account_id == self.default_account or account_id in self.accounts

    def for_account(self, account_id: str) -> AccountLimits:
        """The defaults with the account's overrides laid on top."""
        override = self.accounts.get(account_id)
        if override is None:
            return self.defaults
        changes = {
            name: getattr(override, name) for name in _FIELDS if getattr(override, name) is not None
        }
        return msgspec.structs.replace(self.defaults, **changes)


def default_limits() -> RiskLimits:
    """Conservative limits for tests and the demo when no file is given."""
    return RiskLimits(
        version="builtin",
        defaults=AccountLimits(
            max_open_orders=100,
            rate_window_ns=NANOS_PER_SECOND,
            max_orders_per_window=50,
            max_cancels_per_window=50,
            max_market_data_age_ns=5 * NANOS_PER_SECOND,
            price_band_bps=Decimal(500),
        ),
    )


def parse_limits(data: bytes, source: str = "<bytes>") -> RiskLimits:
    """Decode and validate limits; unknown fields are an error, not ignored."""
    try:
        limits = msgspec.toml.decode(data, type=RiskLimits)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(
            f"risk config {source}: {exc}; hint: compare with trade2026/config/risk.toml"
        ) from exc
    for name, acct in [("defaults", limits.defaults), *limits.accounts.items()]:
        for field in (
            "max_order_qty",
            "max_order_notional",
            "max_position_qty",
            "max_gross_exposure",
            "daily_loss_limit",
            "price_band_bps",
        ):
            value = getattr(acct, field)
            if value is not None and (not value.is_finite() or value < 0):
                raise ValueError(
                    f"risk config {source}: {name}.{field} = {value} must be a finite "
                    "non-negative number; hint: write limits as positive decimal strings"
                )
    return limits


def load_limits(path: str | Path | None = None) -> RiskLimits:
    path = Path(path or os.environ.get("TRADE2026_RISK") or DEFAULT_PATH)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"risk config not found at {path}; hint: set TRADE2026_RISK"
        ) from None
    return parse_limits(data, str(path))


class RiskConfigWatcher:
    """Reloads the limits file when its mtime changes, only when asked.

    The flow calls :meth:`poll` (for example once per batch, or on a control message);
    there is no thread and no clock: the file's own modification time is the only
    signal. A file that fails to parse keeps the previous limits in force and the
    error is kept in :attr:`last_error`, so a typo never takes risk down.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._mtime_ns = os.stat(self.path).st_mtime_ns
        self._size = os.stat(self.path).st_size
        self.limits = load_limits(self.path)
        self.last_error: str | None = None
        self.reloads = 0

    def poll(self) -> RiskLimits | None:
        """Return the new limits if the file changed and parsed, else ``None``."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self.last_error = f"risk config watcher: cannot stat {self.path}: {exc}"
            return None
        if st.st_mtime_ns == self._mtime_ns and st.st_size == self._size:
            return None
        self._mtime_ns, self._size = st.st_mtime_ns, st.st_size
        try:
            limits = load_limits(self.path)
        except (ValueError, OSError) as exc:
            self.last_error = str(exc)
            return None
        self.last_error = None
        self.limits = limits
        self.reloads += 1
        return limits
