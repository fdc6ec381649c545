"""The order path's wire contract: commands in, decisions, reports and alerts out.

Commands are imperative (:class:`SubmitOrder`, :class:`CancelOrder`, :class:`ReplaceOrder`,
:class:`ControlCommand`); what happened in response is past tense (:class:`RiskDecision`,
:class:`~schemas.canonical.OrderEvent`, :class:`AlertRaised`). Every struct is tagged on
``kind`` so one flow can merge the order path's inputs into a single tagged union.

Subjects:

=================================  =====================================================
``orders.submit``                   :class:`SubmitOrder` (request/reply: the reply is the
                                    :class:`RiskDecision`)
``orders.cancel``                   :class:`CancelOrder`
``orders.replace``                  :class:`ReplaceOrder`
``orders.control``                  :class:`ControlCommand` (kill switches)
``orders.events.<account>``         :class:`~schemas.canonical.OrderEvent`
``risk.decisions.<account>``      :class:`RiskDecision`, one per decision, for audit
``orders.alerts``         :class:`AlertRaised`
``exec.reports.<venue>``            :class:`ExecutionReport`
=================================  =====================================================

Client order ids are unique per account for the life of the account: a replace keeps
the order's ``client_order_id`` (the request itself is named by ``request_id``), which
keeps matching simple and makes a duplicate id a plain risk denial.
"""

from __future__ import annotations

import enum

import msgspec

from schemas.canonical import Order
from schemas.common import Liquidity, Nanos, Price, Quantity, Side


class SubmitOrder(Order, frozen=True, tag="submit_order", forbid_unknown_fields=True):
    """Place a new order. The fields are :class:`~schemas.canonical.Order`'s.

    It subclasses ``Order`` so risk and the order state machine accept either; the
    distinct tag lets a merged input stream tell a command from a stored order record.
    """


class CancelOrder(
    msgspec.Struct, frozen=True, tag_field="kind", tag="cancel_order", forbid_unknown_fields=True
):
    """Cancel the open balance of ``client_order_id``."""

    account_id: str
    client_order_id: str
    request_id: str = ""
    ts_submit: Nanos = 0


class ReplaceOrder(
    msgspec.Struct, frozen=True, tag_field="kind", tag="replace_order", forbid_unknown_fields=True
):
    """Change an open order's quantity and/or limit price (FIX Order Cancel/Replace).

    ``quantity`` is the new *total* order quantity, as in FIX OrderQty: a value at or
    below what has already filled amends the order to its filled quantity and leaves
    it FILLED (FIX 4.4 Appendix D, C.3.b and C.3.c).
    """

    account_id: str
    client_order_id: str
    quantity: Quantity | None = None
    price: Price | None = None
    request_id: str = ""
    ts_submit: Nanos = 0


class ControlAction(enum.StrEnum):
    HALT = "HALT"
    RESUME = "RESUME"


class ControlScope(enum.StrEnum):
    ACCOUNT = "ACCOUNT"
    GLOBAL = "GLOBAL"


class ControlCommand(
    msgspec.Struct, frozen=True, tag_field="kind", tag="control", forbid_unknown_fields=True
):
    """A kill switch: halt or resume one account (``scope=ACCOUNT``) or everything.

    A halt denies new orders and replaces; cancels still pass so a halted book can be
    flattened. A global halt and an account halt are independent: resuming one does
    not lift the other.
    """

    action: ControlAction
    scope: ControlScope
    account_id: str | None = None
    reason: str = ""
    issued_by: str = ""
    ts_event: Nanos = 0


class RiskAction(enum.StrEnum):
    SUBMIT = "SUBMIT"
    CANCEL = "CANCEL"
    REPLACE = "REPLACE"


#: The reason code of an approval.
APPROVED = "APPROVED"


class RiskDecision(msgspec.Struct, frozen=True, tag_field="kind", tag="risk_decision"):
    """One pre-trade risk decision, recorded for every command, approved or not.

    ``limits_version`` and ``instruments_version`` name the exact rules applied, so
    an audit can replay the decision. ``reason`` is ``APPROVED`` or a stable upper-case
    denial code (``NOTIONAL_EXCEEDS_MAX_PER_ORDER`` ...); ``detail`` is for people.
    """

    account_id: str
    client_order_id: str
    action: RiskAction
    approved: bool
    reason: str
    detail: str
    limits_version: str
    instruments_version: str
    ts_event: Nanos
    request_id: str = ""


class ExecType(enum.StrEnum):
    """What an execution report says happened at the venue (FIX ExecType, trimmed)."""

    NEW = "NEW"  # the venue accepted the order
    TRADE = "TRADE"  # (part of) the order executed: last_qty at last_px
    CANCELED = "CANCELED"  # the open balance is canceled (also IOC/FOK remainder, unsolicited)
    REPLACED = "REPLACED"  # a replace took effect: order_qty / price are the new values
    REJECTED = "REJECTED"  # the venue refused the new order
    EXPIRED = "EXPIRED"  # the venue expired the order (DAY/GTD)
    CANCEL_REJECTED = "CANCEL_REJECTED"  # FIX OrderCancelReject for a cancel
    REPLACE_REJECTED = "REPLACE_REJECTED"  # FIX OrderCancelReject for a replace


class ExecutionReport(msgspec.Struct, frozen=True, tag_field="kind", tag="execution_report"):
    """A venue's report about one of our orders, as published on ``exec.reports.<venue>``.

    It is matched to our order by ``venue_order_id`` first, then by
    ``client_order_id``; at least one must be present. ``exec_id`` is unique per venue
    and is how duplicates are dropped. For ``TRADE`` reports ``last_qty`` and
    ``last_px`` are required and ``fee``/``fee_currency``/``liquidity`` describe the
    cost; for ``REPLACED`` reports ``order_qty``/``price`` carry the new values (when
    absent, the values requested in the :class:`ReplaceOrder` apply). ``cum_qty`` is
    the venue's own running total: informational, the order state machine keeps its
    own exact total from the trades it has applied.

    Example (JSON)::

        {"kind": "execution_report", "venue": "BINANCE", "exec_id": "T-991",
         "exec_type": "TRADE", "venue_order_id": "8812", "client_order_id": "c-1",
         "account_id": "alice", "instrument_id": "BTCUSDT.BINANCE",
         "last_qty": "0.25", "last_px": "45000.10", "fee": "0.011", "fee_currency": "USDT",
         "liquidity": "TAKER", "ts_event": 1767225600000000000}
    """

    venue: str
    exec_id: str
    exec_type: ExecType
    ts_event: Nanos
    venue_order_id: str | None = None
    client_order_id: str | None = None
    account_id: str | None = None
    instrument_id: str | None = None
    side: Side | None = None
    last_qty: Quantity | None = None
    last_px: Price | None = None
    order_qty: Quantity | None = None
    price: Price | None = None
    cum_qty: Quantity | None = None
    fee: Price | None = None
    fee_currency: str | None = None
    liquidity: Liquidity | None = None
    reason: str | None = None
    ts_recv: Nanos = 0


class AlertRaised(msgspec.Struct, frozen=True, tag_field="kind", tag="alert"):
    """Something a person should look at; the order path carried on regardless.

    ``alert`` is a stable code: ``INVALID_TRANSITION``, ``OVERFILL``, ``LATE_FILL``,
    ``UNMATCHED_EXECUTION_REPORT``, ``INVALID_EXECUTION_REPORT``, ``UNKNOWN_ORDER``,
    ``CANCEL_NOT_ALLOWED``, ``REPLACE_NOT_ALLOWED``, ``REDUCE_ONLY_ENGAGED``.
    ``applied`` says whether the triggering input changed any state (a late fill is
    applied; an overfill or an invalid transition is not).
    """

    alert: str
    detail: str
    account_id: str | None
    client_order_id: str | None
    ts_event: Nanos
    applied: bool = False
    exec_id: str | None = None


__all__ = [
    "APPROVED",
    "AlertRaised",
    "CancelOrder",
    "ControlAction",
    "ControlCommand",
    "ControlScope",
    "ExecType",
    "ExecutionReport",
    "ReplaceOrder",
    "RiskAction",
    "RiskDecision",
    "SubmitOrder",
]
