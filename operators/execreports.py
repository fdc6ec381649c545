"""Matching a real venue's execution reports to our orders, before the order state machine.

Reports arrive per venue on ``exec.reports.<venue>`` and carry the venue's order id,
often our client order id, rarely our account. The matcher learns which account owns
which order from the ``orders.events.<account>`` stream (:meth:`ExecReportMatcher.on_order_event`)
and stamps ``account_id`` and ``client_order_id`` on each report, so the flow can re-key
it by account and hand it to :class:`~operators.orders.OrderManager`.

Stage ``execreports`` accounting: every message in is exactly one of out (matched),
dead-lettered (undecodable, oversized, unmatched, ambiguous) or duplicate (an
``exec_id`` already passed for that venue). Unmatched reports also raise an
``UNMATCHED_EXECUTION_REPORT`` alert. Their exec id is *not* remembered, so a redelivery
after the order becomes known still matches.
"""

from __future__ import annotations

from collections import Counter

import msgspec

from schemas.canonical import DeadLetter, OrderEvent
from schemas.orders import AlertRaised, ExecutionReport
from trade2026.accounting import DEAD_LETTERED, DUPLICATE, IN, OUT, UNKNOWN_INSTRUMENT, Accounting

STAGE = "execreports"
UNMATCHED = "UNMATCHED_EXECUTION_REPORT"
INVALID = "INVALID_EXECUTION_REPORT"
AMBIGUOUS = "AMBIGUOUS_CLIENT_ORDER_ID"
OVERSIZED = "OVERSIZED_MESSAGE"
DEFAULT_MAX_BYTES = 64 * 1024

MatchOutput = ExecutionReport | DeadLetter | AlertRaised

_decoder = msgspec.json.Decoder(ExecutionReport)
_encoder = msgspec.json.Encoder()


class ExecReportMatcher:
    """Per-venue (or per-worker) matcher state: the order index and the seen exec ids."""

    def __init__(
        self,
        accounting: Accounting | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.accounting = accounting
        self.max_bytes = max_bytes
        self._by_venue_id: dict[tuple[str, str], tuple[str, str]] = {}
        # client order id -> account; None once two accounts used the same id
        self._by_client_id: dict[str, str | None] = {}
        self._known: set[tuple[str, str]] = set()
        self._seen: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ learning
    def register(
        self,
        account_id: str,
        client_order_id: str,
        venue: str | None = None,
        venue_order_id: str | None = None,
    ) -> None:
        key = (account_id, client_order_id)
        if key not in self._known:
            self._known.add(key)
            owner = self._by_client_id.get(client_order_id, account_id)
            self._by_client_id[client_order_id] = owner if owner == account_id else None
        if venue is not None and venue_order_id is not None:
            self._by_venue_id[(venue, venue_order_id)] = key

    def forget(
        self,
        account_id: str,
        client_order_id: str,
        venue: str | None = None,
        venue_order_id: str | None = None,
    ) -> None:
        """Drop what :meth:`register` learned, so an owner of a bounded memory can bound this.

        A report for a forgotten order is matched as if never registered: by its own
        account id if it has one, else dead-lettered as unmatched.
        """
        if venue is not None and venue_order_id is not None:
            self._by_venue_id.pop((venue, venue_order_id), None)
            return
        key = (account_id, client_order_id)
        if key in self._known:
            self._known.discard(key)
            if self._by_client_id.get(client_order_id) == account_id:
                del self._by_client_id[client_order_id]

    def on_order_event(self, ev: OrderEvent, venue: str | None = None) -> None:
        """Learn an order's owner from its events (any event will do; the first suffices)."""
        self.register(ev.account_id, ev.client_order_id, venue, ev.venue_order_id)

    # ------------------------------------------------------------------ matching
    def on_message(self, data: bytes, subject: str = "", ts_recv: int = 0) -> list[MatchOutput]:
        """Decode and match one message off ``exec.reports.<venue>``."""
        if len(data) > self.max_bytes:
            return [
                self._dead(
                    OVERSIZED,
                    f"execreports: {len(data)} bytes > {self.max_bytes}; "
                    "hint: reports are small, check the publisher",
                    data,
                    subject,
                    ts_recv,
                    None,
                )
            ]
        try:
            rep = _decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return [
                self._dead(
                    INVALID,
                    f"execreports: {exc}; hint: see schemas/orders.py ExecutionReport",
                    data,
                    subject,
                    ts_recv,
                    None,
                )
            ]
        return self.on_report(rep, data, subject, ts_recv)

    def on_report(
        self,
        rep: ExecutionReport,
        raw: bytes | None = None,
        subject: str = "",
        ts_recv: int = 0,
    ) -> list[MatchOutput]:
        """Match a decoded report; the result is the stamped report, or a dead letter."""
        inst = rep.instrument_id or UNKNOWN_INSTRUMENT
        seen_key = (rep.venue, rep.exec_id)
        if seen_key in self._seen:
            self._count(inst, DUPLICATE)
            return []
        owner: tuple[str, str] | None = None
        if rep.venue_order_id is not None:
            owner = self._by_venue_id.get((rep.venue, rep.venue_order_id))
        if owner is None and rep.client_order_id is not None:
            cid = rep.client_order_id
            if rep.account_id is not None:
                if (rep.account_id, cid) in self._known:
                    owner = (rep.account_id, cid)
            elif cid in self._by_client_id:
                acct = self._by_client_id[cid]
                if acct is None:
                    return [
                        self._dead(
                            AMBIGUOUS,
                            f"client_order_id {cid!r} is used by several "
                            "accounts and the report names none; hint: have the "
                            "venue echo the account or match by venue_order_id",
                            raw,
                            subject,
                            ts_recv,
                            rep,
                        )
                    ]
                owner = (acct, cid)
        if owner is None:
            dead = self._dead(
                UNMATCHED,
                f"no order for venue={rep.venue} venue_order_id="
                f"{rep.venue_order_id!r} client_order_id={rep.client_order_id!r} "
                f"account={rep.account_id!r}; hint: was the order placed outside "
                "trade2026 or before its events reached this flow?",
                raw,
                subject,
                ts_recv,
                rep,
            )
            alert = AlertRaised(
                alert=UNMATCHED,
                detail=dead.detail,
                account_id=rep.account_id,
                client_order_id=rep.client_order_id,
                ts_event=rep.ts_event,
                exec_id=rep.exec_id,
            )
            return [dead, alert]
        self._seen.add(seen_key)
        account_id, cid = owner
        if rep.venue_order_id is not None:
            self._by_venue_id.setdefault((rep.venue, rep.venue_order_id), owner)
        self._count(inst, OUT)
        if rep.account_id == account_id and rep.client_order_id == cid:
            return [rep]
        return [msgspec.structs.replace(rep, account_id=account_id, client_order_id=cid)]

    def _dead(
        self,
        reason: str,
        detail: str,
        raw: bytes | None,
        subject: str,
        ts_recv: int,
        rep: ExecutionReport | None,
    ) -> DeadLetter:
        inst = rep.instrument_id if rep is not None and rep.instrument_id else None
        self._count(inst or UNKNOWN_INSTRUMENT, DEAD_LETTERED, reason)
        payload = raw if raw is not None else (_encoder.encode(rep) if rep is not None else b"")
        return DeadLetter(
            stage=STAGE,
            reason=reason,
            detail=detail,
            payload=payload,
            subject=subject,
            instrument_id=inst,
            ts_recv=ts_recv,
        )

    def _count(self, instrument: str, outcome: str, reason: str | None = None) -> None:
        if self.accounting is None:
            return
        self.accounting.add(STAGE, Counter({(instrument, IN): 1, (instrument, outcome): 1}))
        if reason is not None:
            self.accounting.add_reasons(STAGE, [reason])
