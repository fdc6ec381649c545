"""The orders dataflow: pre-trade risk, the order state machine and fill matching, per account.

Shape::

    ORDERS stream (orders.submit|cancel|replace|control) -+
    EXEC stream (exec.reports.>) -------------------------+-> route (one key) -+-> denials, dlq
    PORTFOLIO stream (positions.>) -----------------------+                    |
                                                               key by account <+
                                              risk -> OrderManager -> outputs
    md.ticks.> (core NATS) -> market view (shared per process, no keyed state)

Outputs (docs/order-path-subjects.md): the answer to ``T26-Reply-To``,
``risk.decisions.<account>``, ``orders.events.<account>``, ``orders.alerts``,
``venue.commands.<venue>`` (header ``T26-Order-Id``), ``fills.<account>`` and
``dlq.orders``. All go through one core NATS sink, so every batch is one flush, and
every output a stream captures carries a deterministic ``Nats-Msg-Id`` (order events
``oe:<order id>:<seq>``, fills ``fl:<venue>:<exec id>``, decisions ``rd:<account>:<client
order id>:<action>:<request id>:<request digest>``, venue commands ``<order id>:<tag>``,
dead letters ``dl:<stage>:<input subject>:<input stream seq>:<reason>``, alerts a digest
of their bytes), so a replayed epoch is stored once (docs/recovery.md). With the
quality layer on (``trade2026 run orders``), each order event, fill and new venue order
is judged by its stage's rule as it is made (:class:`_Judges`); one that fails is
replaced by its dead letter on ``dlq.order_events``, ``dlq.fills`` or ``dlq.orders``.

Why a routing step with a single key before the per-account step:

* A GLOBAL kill switch must reach every account's state, in stream order with the
  orders around it. Bytewax cannot broadcast to "all keys", so the router remembers the
  accounts it has seen (plus every account declared in the risk limits) and sends each
  a copy; an account first seen later gets the last global command before its first
  order. The router's memory is Bytewax state, so a restart keeps it.
* Execution reports from real venues may lack our account; the
  :class:`~operators.execreports.ExecReportMatcher` that stamps it learns orders as they
  are submitted, which the router sees first.

The router is cheap (decode, look-ups) but it is one key, so it runs on one worker: the
flow's ceiling is that worker. Per-account risk and the order state machine spread over
the workers by account.

Market data never enters keyed state: quotes and trades update one
:class:`~operators.risk.MarketView` shared by every account of the process
(``RiskEngine``'s design: one market view per worker, one ``AccountRisk`` per account).
Book deltas are skipped unparsed (only the top of book and prints matter to the band and
staleness checks). Multi-worker semantics: the view is per *process*, so all workers of
one process see every tick; in a multi-process cluster only the process that owns the
``md.ticks.>`` partition has references (its accounts' market orders elsewhere are
refused as stale), so run the orders flow as one process with N workers. The view is not
in recovery state: after a restart it refills from live ticks within a tick interval, and
until then market orders are refused and the band is not applied (risk's documented
behaviour for missing references).

Durability: an acknowledged order is in the ``ORDERS`` stream. The JetStream source's
resume state is the stream sequence, snapshotted together with every account's risk and
order state at each epoch, so a flow restarted with its recovery store continues exactly
after the last committed epoch. Requests are also de-duplicated by content: a
byte-identical request (a client retry, or a redelivery the source did not drop) is
answered with the decision already made and sends nothing to the venue. A different
request reusing a client order id is denied ``DUPLICATE_CLIENT_ORDER_ID``. After a hard
crash, what happened after the last committed epoch is decided again from the restored
state and re-emitted (Bytewax output is at-least-once): venue commands carry the order id
in ``T26-Order-Id`` and a ``Nats-Msg-Id``, so the venue (the simulated venue rejects a
known order id) or a JetStream stream over ``venue.commands.>`` drops the copy. A short
``epoch_interval`` keeps that window small.

Accounting, stage ``orders``: every order-path message in (commands, execution reports,
positions) is exactly one of out (decided / applied), dead-lettered (``dlq.orders``) or
duplicate (a repeated request or execution id). Market data is counted under stage
``orders_md`` (out = applied or skipped by kind, dead-lettered = undecodable).
EventClock windows are kept out of this flow on purpose (bytewax issue #578).
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeGuard

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.execreports import ExecReportMatcher
from operators.orders import BoundedLog, OrderManager
from operators.risk import AccountRisk, MarketView, RiskContext
from operators.risk_config import DEFAULT_PATH, RiskConfigWatcher, RiskLimits
from schemas.canonical import DeadLetter, Fill, OrderEvent, Position, Quote, Tick, TradeTick
from schemas.common import Liquidity
from schemas.instruments import InstrumentRegistry, load_instruments
from schemas.orders import (
    AlertRaised,
    CancelOrder,
    ControlAction,
    ControlCommand,
    ControlScope,
    ExecutionReport,
    ReplaceOrder,
    RiskAction,
    RiskDecision,
    SubmitOrder,
)
from schemas.transport import MSG_ID_HEADER, Message, Outgoing
from trade2026.accounting import DEAD_LETTERED, DUPLICATE, IN, OUT, Accounting
from trade2026.orderclient import (
    CANCEL_SUBJECT,
    CONTROL_SUBJECT,
    ORDER_ID_HEADER,
    ORDERS_STREAM,
    REPLACE_SUBJECT,
    REPLY_TO_HEADER,
    SUBMIT_SUBJECT,
    content_msg_id,
    dead_letter_out,
)

if TYPE_CHECKING:
    from operators.quality.tap import Quality, QualityConfig, QualityTap
    from trade2026.flowregistry import RunContext

__all__ = [
    "DLQ_SUBJECT",
    "MD_STAGE",
    "STAGE",
    "OrdersConfig",
    "build_flow",
    "production_flow",
]

STAGE = "orders"
MD_STAGE = "orders_md"
DLQ_SUBJECT = "dlq.orders"
ALERTS_SUBJECT = "orders.alerts"
EVENTS_PREFIX = "orders.events."
DECISIONS_PREFIX = "risk.decisions."
FILLS_PREFIX = "fills."
VENUE_PREFIX = "venue.commands."
EXEC_PREFIX = "exec.reports."
POSITIONS_PREFIX = "positions."

#: Denial/dead-letter codes the flow adds to risk's own.
INVALID_REQUEST = "INVALID_REQUEST"
INVALID_ACCOUNT_ID = "INVALID_ACCOUNT_ID"
OVERSIZED_MESSAGE = "OVERSIZED_MESSAGE"
UNKNOWN_SUBJECT = "UNKNOWN_SUBJECT"
INVALID_POSITION = "INVALID_POSITION"
INVALID_TICK = "INVALID_TICK"
UNKNOWN_ORDER = "UNKNOWN_ORDER"

#: The JetStream consumer filter: every subject of the ORDERS stream, one partition.
ORDERS_FILTER = "orders.>"
_ROUTER_KEY = "router"
_ZERO = Decimal(0)
# An account id becomes a subject token: letters, digits, '_' and '-' only.
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A reply subject: tokens without whitespace or wildcards.
_SUBJECT_RE = re.compile(r"[^\s*>.]+(\.[^\s*>.]+)*")
_SKIP_KINDS = (b'{"kind":"book_delta"', b'{"kind":"data_gap"')

_encode = msgspec.json.Encoder().encode
_COMMAND_DECODERS: dict[str, msgspec.json.Decoder[object]] = {
    SUBMIT_SUBJECT: msgspec.json.Decoder(SubmitOrder),
    CANCEL_SUBJECT: msgspec.json.Decoder(CancelOrder),
    REPLACE_SUBJECT: msgspec.json.Decoder(ReplaceOrder),
    CONTROL_SUBJECT: msgspec.json.Decoder(ControlCommand),
}
_ACTIONS = {
    SUBMIT_SUBJECT: RiskAction.SUBMIT,
    CANCEL_SUBJECT: RiskAction.CANCEL,
    REPLACE_SUBJECT: RiskAction.REPLACE,
}
_position = msgspec.json.Decoder(Position)
_tick = msgspec.json.Decoder(Tick)


# ---------------------------------------------------------------------------------------
# Nats-Msg-Id of every output (the streams over these subjects drop a replayed copy)
# ---------------------------------------------------------------------------------------
def _with_id(subject: str, data: bytes, msg_id: str) -> Outgoing:
    return Outgoing(subject, data, {MSG_ID_HEADER: msg_id})


def _alert_out(alert: AlertRaised) -> Outgoing:
    data = _encode(alert)
    return _with_id(ALERTS_SUBJECT, data, content_msg_id(ALERTS_SUBJECT, data))


class OrdersConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the orders flow runs; the limits and instruments come from their own files."""

    #: Risk limits file (reloaded when it changes); None: TRADE2026_RISK or the bundled one.
    risk_path: str | None = None
    #: Instruments file; None: TRADE2026_INSTRUMENTS or the bundled one.
    instruments_path: str | None = None
    #: Requests and reports larger than this are dead-lettered unparsed.
    max_message_bytes: int = 64 * 1024
    #: Answers remembered per account for de-duplicating byte-identical retries (the
    #: newest ones; an older retry is decided again, and risk refuses a reused id).
    #: Every answer is in each epoch's snapshot (~350 bytes each), hence the bound.
    reply_cache_size: int = 20_000
    #: Submits (account, client order id) and venue order ids the router remembers for
    #: matching execution reports without an account (the newest ones). A report for
    #: an older order needs its account id, or it is dead-lettered unmatched.
    router_memory: int = 262_144


# ---------------------------------------------------------------------------------------
# what every worker of a process shares
# ---------------------------------------------------------------------------------------
class _Shared:
    """Limits (reloaded), instruments and the market view, shared by one process's workers.

    The watcher is polled from the workers' own batches (no thread): a stat call under a
    lock that a busy worker skips rather than waits for, at most every ``poll_s`` of
    the monotonic clock (scheduling, not data). A stat per batch was 3.6 % of the worker's
    time under load (the router and every account ask per batch); a file change now
    applies to the first batch at least ``poll_s`` after it, instead of the next one.
    """

    def __init__(
        self,
        limits: RiskLimits,
        instruments: InstrumentRegistry,
        watcher: RiskConfigWatcher | None,
        poll_s: float = 0.05,
    ) -> None:
        self.limits = limits
        self.instruments = instruments
        self.market = MarketView()
        self._watcher = watcher
        self._poll_s = poll_s
        self._next_poll = 0.0
        self._lock = threading.Lock()

    def current_limits(self) -> RiskLimits:
        if self._watcher is None:
            return self.limits
        now = time.monotonic()
        if now >= self._next_poll and self._lock.acquire(blocking=False):
            try:
                self._next_poll = now + self._poll_s
                new = self._watcher.poll()
                if new is not None:
                    self.limits = new
            finally:
                self._lock.release()
        return self.limits


class Routed(NamedTuple):
    """One item for an account's logic, with what is needed to answer it."""

    account: str
    item: SubmitOrder | CancelOrder | ReplaceOrder | ControlCommand | ExecutionReport | Position
    reply_to: str | None = None
    digest: bytes | None = None


class _ToAccount(NamedTuple):
    """Everything one router batch sends one account, in stream order.

    Bytewax pays its per-item cost (a Python call in every ``map``/``key_on``/``branch``)
    once per item between steps; sending one item per account per batch, and one list of
    outputs per batch, instead of one per order keeps that cost off the per-order path.
    """

    account: str
    items: list[Routed]


#: What the router emits: a list of direct outputs, or one account's items.
_RouterOut = list[Outgoing] | _ToAccount


# ---------------------------------------------------------------------------------------
# router: decode, validate, broadcast GLOBAL controls, match execution reports
# ---------------------------------------------------------------------------------------
class _RouterState(msgspec.Struct):
    accounts: list[str]
    global_control: ControlCommand | None
    #: (account, client order id) of the newest submits, for the matcher: BoundedLog
    #: chunks (``list[list[tuple[str, str]]]``), cached so a snapshot re-encodes little.
    orders: list[msgspec.Raw]
    #: (venue, venue order id, account, client order id) learned from reports, likewise.
    venue_ids: list[msgspec.Raw]


_order_keys = msgspec.msgpack.Decoder(list[tuple[str, str]])
_venue_keys = msgspec.msgpack.Decoder(list[tuple[str, str, str, str]])


def _js_timestamp(reply: str | None) -> int | None:
    """The stream's own store time (ns) from a JetStream ack subject, v1 or v2 layout."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    off = 0 if len(tokens) == 9 else 2
    try:
        return int(tokens[7 + off])
    except (IndexError, ValueError):
        return None


def _reply_to(msg: Message) -> str | None:
    """The requester's inbox, if it is a publishable subject (never a wildcard)."""
    value = msg.headers.get(REPLY_TO_HEADER) if msg.headers else None
    if value is None and msg.reply and not msg.reply.startswith("$JS."):
        value = msg.reply
    if value and len(value) <= 256 and _SUBJECT_RE.fullmatch(value):
        return value
    return None


def _salvage(data: bytes) -> tuple[str, str]:
    """Best-effort account and client order id from a request that failed validation."""
    try:
        doc = msgspec.json.decode(data)
    except (msgspec.DecodeError, ValueError):
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    acct, cid = doc.get("account_id"), doc.get("client_order_id")
    return (acct if isinstance(acct, str) else ""), (cid if isinstance(cid, str) else "")


def _decision_id(decision: RiskDecision, digest: bytes | None) -> str:
    """``rd:<account>:<client order id>:<action>:<request id>:<request digest>``.

    A submit has no request id, and a second, different submit reusing a client order id
    is decided (denied) too, so the request's own bytes (their digest) tell the two
    apart; a byte-identical retry is answered from the cache and not published again.
    """
    tail = digest.hex() if digest is not None else str(decision.ts_event)
    return (
        f"rd:{decision.account_id}:{decision.client_order_id}:{decision.action}:"
        f"{decision.request_id}:{tail}"
    )


def _group(out: list[Outgoing | Routed]) -> list[_RouterOut]:
    """One list of direct outputs plus one :class:`_ToAccount` per account, order kept."""
    direct: list[Outgoing] = []
    by_account: dict[str, list[Routed]] = {}
    for item in out:
        if isinstance(item, Routed):
            items = by_account.get(item.account)
            if items is None:
                items = by_account[item.account] = []
            items.append(item)
        else:
            direct.append(item)
    grouped: list[_RouterOut] = [_ToAccount(a, items) for a, items in by_account.items()]
    if direct:
        grouped.append(direct)
    return grouped


class _RouterLogic(StatefulBatchLogic[list[Message], _RouterOut, bytes]):
    def __init__(
        self, shared: _Shared, config: OrdersConfig, accounting: Accounting, state: bytes | None
    ) -> None:
        self._shared = shared
        self._config = config
        self._accounting = accounting
        self._matcher = ExecReportMatcher(max_bytes=config.max_message_bytes)
        self._orders: BoundedLog[tuple[str, str]] = BoundedLog(config.router_memory)
        self._venue_ids: BoundedLog[tuple[str, str, str, str]] = BoundedLog(config.router_memory)
        self._known_orders: set[tuple[str, str]] = set()
        self._venue_keys: set[tuple[str, str]] = set()
        if state is None:
            self._st = _RouterState([], None, [], [])
        else:
            self._st = msgspec.msgpack.decode(state, type=_RouterState)
            for chunk in self._st.orders:
                for acct, cid in _order_keys.decode(chunk):
                    self._learn_order((acct, cid))
            for chunk in self._st.venue_ids:
                for venue, void, acct, cid in _venue_keys.decode(chunk):
                    self._learn_venue_id(venue, void, acct, cid)
        self._accounts = set(self._st.accounts)
        self._counts: Counter[tuple[str, str]] = Counter()
        self._reasons: list[str] = []

    def snapshot(self) -> bytes:
        self._st.accounts = sorted(self._accounts)
        self._st.orders = self._orders.snapshot()
        self._st.venue_ids = self._venue_ids.snapshot()
        return msgspec.msgpack.encode(self._st)

    def _learn_order(self, key: tuple[str, str]) -> None:
        self._known_orders.add(key)
        self._matcher.register(*key)
        for old in self._orders.append(key):
            self._known_orders.discard(old)
            self._matcher.forget(*old)

    def _learn_venue_id(self, venue: str, void: str, account: str, cid: str) -> None:
        self._venue_keys.add((venue, void))
        self._matcher.register(account, cid, venue, void)
        for v, vid, _a, _c in self._venue_ids.append((venue, void, account, cid)):
            self._venue_keys.discard((v, vid))
            self._matcher.forget("", "", v, vid)

    # -- helpers -----------------------------------------------------------------------------
    def _count(self, outcome: str, reason: str | None = None) -> None:
        self._counts[("-", outcome)] += 1
        if reason is not None:
            self._reasons.append(reason)

    def _dead(self, msg: Message, reason: str, detail: str, out: list[Outgoing | Routed]) -> None:
        self._count(DEAD_LETTERED, reason)
        dead = DeadLetter(
            stage=STAGE,
            reason=reason,
            detail=detail,
            payload=msg.data,
            subject=msg.subject,
            ts_recv=msg.ts_recv,
        )
        out.append(dead_letter_out(STAGE, DLQ_SUBJECT, _encode(dead), reason, msg))

    def _deny(
        self,
        msg: Message,
        reason: str,
        detail: str,
        account: str,
        cid: str,
        ts: int,
        out: list[Outgoing | Routed],
        *,
        record: bool,
        request_id: str = "",
    ) -> None:
        """Answer a request the accounts never see; ``record`` publishes it for audit."""
        limits = self._shared.limits
        decision = RiskDecision(
            account_id=account,
            client_order_id=cid,
            action=_ACTIONS[msg.subject],
            approved=False,
            reason=reason,
            detail=detail,
            limits_version=limits.version,
            instruments_version=self._shared.instruments.version,
            ts_event=ts,
            request_id=request_id,
        )
        data = _encode(decision)
        reply = _reply_to(msg)
        if reply is not None:
            out.append(Outgoing(reply, data))
        if record:
            digest = hashlib.blake2b(msg.data, digest_size=16).digest()
            msg_id = _decision_id(decision, digest)
            out.append(_with_id(DECISIONS_PREFIX + account, data, msg_id))

    def _to_account(self, account: str, routed: Routed, out: list[Outgoing | Routed]) -> None:
        if account not in self._accounts:
            self._accounts.add(account)
            ctl = self._st.global_control
            if ctl is not None:
                out.append(Routed(account, ctl))
        out.append(routed)

    # -- inputs ------------------------------------------------------------------------------
    def on_batch(self, values: list[list[Message]]) -> tuple[Iterable[_RouterOut], bool]:
        limits = self._shared.current_limits()
        out: list[Outgoing | Routed] = []
        max_bytes = self._config.max_message_bytes
        n_in = 0
        for batch in values:
            n_in += len(batch)
            for msg in batch:
                self._route(msg, limits, max_bytes, out)
        self._counts[("-", IN)] += n_in
        if self._counts:
            self._accounting.add(STAGE, self._counts)
            self._counts = Counter()
        if self._reasons:
            self._accounting.add_reasons(STAGE, self._reasons)
            self._reasons = []
        return _group(out), StatefulBatchLogic.RETAIN

    def _route(
        self, msg: Message, limits: RiskLimits, max_bytes: int, out: list[Outgoing | Routed]
    ) -> None:
        subject = msg.subject
        if len(msg.data) > max_bytes:
            self._dead(
                msg,
                OVERSIZED_MESSAGE,
                f"orders route: {len(msg.data)} bytes > {self._config.max_message_bytes}; "
                "hint: order-path messages are small, check the publisher",
                out,
            )
            if subject in _ACTIONS:
                self._deny(
                    msg, OVERSIZED_MESSAGE, "request too large", "", "", 0, out, record=False
                )
        elif subject in _COMMAND_DECODERS:
            self._command(msg, limits, out)
        elif subject.startswith(EXEC_PREFIX):
            self._report(msg, out)
        elif subject.startswith(POSITIONS_PREFIX):
            self._position(msg, out)
        else:
            self._dead(
                msg,
                UNKNOWN_SUBJECT,
                f"orders route: nothing handles {subject!r}; hint: see docs/order-path-subjects.md",
                out,
            )

    def _command(self, msg: Message, limits: RiskLimits, out: list[Outgoing | Routed]) -> None:
        subject = msg.subject
        try:
            cmd = _COMMAND_DECODERS[subject].decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._dead(
                msg,
                INVALID_REQUEST,
                f"orders route: {subject}: {exc}; hint: see schemas/orders.py",
                out,
            )
            if subject in _ACTIONS:
                acct, cid = _salvage(msg.data)
                self._deny(msg, INVALID_REQUEST, str(exc), acct, cid, 0, out, record=False)
            return
        if isinstance(cmd, ControlCommand):
            self._control(msg, cmd, _js_timestamp(msg.reply) or msg.ts_recv, out)
            return
        assert isinstance(cmd, SubmitOrder | CancelOrder | ReplaceOrder)
        account = cmd.account_id
        request_id = "" if isinstance(cmd, SubmitOrder) else cmd.request_id
        if not _ACCOUNT_RE.fullmatch(account):
            self._dead(
                msg,
                INVALID_ACCOUNT_ID,
                f"orders route: account_id {account!r} must be 1-64 of [A-Za-z0-9_-]; "
                "hint: account ids become subject tokens",
                out,
            )
            self._deny(
                msg,
                INVALID_ACCOUNT_ID,
                f"account_id {account!r} is not a valid id",
                account,
                cmd.client_order_id,
                cmd.ts_submit,
                out,
                record=False,
                request_id=request_id,
            )
            return
        if cmd.ts_submit == 0:
            # Unstamped (e.g. `nats req`): the stream's store time is "now", the same on replay.
            cmd = msgspec.structs.replace(cmd, ts_submit=_js_timestamp(msg.reply) or msg.ts_recv)
        if limits.require_declared_accounts and not limits.is_declared(account):
            self._count(OUT)
            self._deny(
                msg,
                "UNKNOWN_ACCOUNT",
                f"account {account!r} is not declared in risk limits {limits.version}",
                account,
                cmd.client_order_id,
                cmd.ts_submit,
                out,
                record=True,
                request_id=request_id,
            )
            return
        if isinstance(cmd, SubmitOrder):
            key = (account, cmd.client_order_id)
            if cmd.client_order_id and key not in self._known_orders:
                self._learn_order(key)
        digest = hashlib.blake2b(msg.data, digest_size=16).digest()
        self._to_account(account, Routed(account, cmd, _reply_to(msg), digest), out)

    def _control(
        self, msg: Message, cmd: ControlCommand, ts: int, out: list[Outgoing | Routed]
    ) -> None:
        if cmd.ts_event == 0:
            cmd = msgspec.structs.replace(cmd, ts_event=ts)
        if cmd.scope is ControlScope.GLOBAL:
            self._st.global_control = cmd
            targets = self._accounts | set(self._shared.limits.accounts)
            targets.add(self._shared.limits.default_account)
            for account in sorted(targets):
                self._to_account(account, Routed(account, cmd), out)
        else:
            account = cmd.account_id or ""
            if not _ACCOUNT_RE.fullmatch(account):
                self._dead(
                    msg,
                    INVALID_ACCOUNT_ID,
                    f"orders route: ACCOUNT control needs a valid account_id, got {account!r}; "
                    "hint: use scope GLOBAL to halt everyone",
                    out,
                )
                return
            self._to_account(account, Routed(account, cmd), out)
        self._count(OUT)
        reply = _reply_to(msg)
        if reply is not None:
            out.append(Outgoing(reply, _encode(cmd)))

    def _report(self, msg: Message, out: list[Outgoing | Routed]) -> None:
        results = self._matcher.on_message(msg.data, msg.subject, msg.ts_recv)
        if not results:  # the matcher had passed this (venue, exec id) already
            self._count(DUPLICATE)
            return
        for res in results:
            if isinstance(res, DeadLetter):
                self._count(DEAD_LETTERED, res.reason)
                dead = msgspec.structs.replace(res, stage=STAGE)
                out.append(dead_letter_out(STAGE, DLQ_SUBJECT, _encode(dead), res.reason, msg))
            elif isinstance(res, AlertRaised):
                out.append(_alert_out(res))
            else:
                account, cid = res.account_id, res.client_order_id
                assert account is not None and cid is not None
                void = res.venue_order_id
                if void is not None and (res.venue, void) not in self._venue_keys:
                    self._learn_venue_id(res.venue, void, account, cid)
                self._to_account(account, Routed(account, res), out)

    def _position(self, msg: Message, out: list[Outgoing | Routed]) -> None:
        try:
            pos = _position.decode(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._dead(
                msg,
                INVALID_POSITION,
                f"orders route: {msg.subject}: {exc}; hint: positions.<account> carries "
                "schemas.canonical.Position",
                out,
            )
            return
        if not _ACCOUNT_RE.fullmatch(pos.account_id):
            self._dead(msg, INVALID_ACCOUNT_ID, f"position for account {pos.account_id!r}", out)
            return
        self._to_account(pos.account_id, Routed(pos.account_id, pos), out)


# ---------------------------------------------------------------------------------------
# per account: risk, then the order state machine
# ---------------------------------------------------------------------------------------
class _AccountState(msgspec.Struct):
    """One account's snapshot. The parts are embedded msgpack (``msgspec.Raw``), not
    nested ``bytes``, so each is copied once; risk and orders are incremental already."""

    account_id: str
    risk: msgspec.Raw
    orders: msgspec.Raw
    global_halted: bool
    global_halt_reason: str
    #: BoundedLog chunks of (request digest, answer): ``list[list[tuple[bytes, bytes]]]``.
    replies: list[msgspec.Raw]


_reply_chunk = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])


class _Judges:
    """The per-record quality gate (docs/quality.md) over what the accounts publish: order
    events (stage ``order_events``), fills (``fills``) and new orders sent to a venue
    (``orders``); replies, decisions, alerts, cancels and replaces pass unjudged.

    Each record is judged as it is made, typed, just before it is encoded into its
    :class:`Outgoing`, rather than by ``flows.quality.OutgoingGate`` decoding the
    published bytes again: the same taps, dead letters (``dlq.<stage>``, reason, the
    original bytes) and ``quality.<stage>`` accounting, without a second decode. In one
    interleaved in-process run (docs/benchmarks.md) the ``OutgoingGate`` shape cost +39 %
    CPU per order and this one +27 %; the rest is the rules themselves.

    A failing record is replaced by its dead letter, so a refused venue command is not
    sent and that order then waits on the venue side: risk refuses everything the
    ``orders`` rule would (size, price, instrument) first, so the gate is the net under a
    bug, not a second risk check. Taps are shared by the process's workers (one lock each).
    """

    def __init__(self, quality: Quality) -> None:
        def tap(stage: str) -> QualityTap | None:
            return quality.tap(stage) if quality.enabled(stage) else None

        self.events = tap("order_events")
        self.fills = tap("fills")
        self.orders = tap("orders")
        self._taps = [t for t in (self.events, self.fills, self.orders) if t is not None]

    @staticmethod
    def judge(tap: QualityTap, item: Outgoing, record: object) -> Outgoing:
        """``item``, or the dead letter that replaces it when ``record`` fails the rule."""
        with tap.lock:
            letter = tap.judge(item, record)
        if letter is None:
            return item
        # Named after the record it replaces, so a replayed refusal is dropped too.
        msg_id = item.headers.get(MSG_ID_HEADER) if item.headers else None
        data = _encode(letter)
        return _with_id(
            tap.dlq_subject, data, "q:" + (msg_id or content_msg_id(tap.dlq_subject, data))
        )

    def commit(self) -> None:
        """Count a batch's judged records and hand the good ones to the batch validators."""
        for tap in self._taps:
            with tap.lock:
                tap.commit()


class _AccountLogic(StatefulBatchLogic[_ToAccount, list[Outgoing], bytes]):
    """One account's :class:`AccountRisk` and :class:`OrderManager`.

    Bytewax's builder is not told the key, so the account comes from the first item.
    Each account has its own :class:`RiskContext` (for its copy of the global kill
    switch, which arrives by broadcast) sharing the process's limits, instruments and
    market view.
    """

    def __init__(
        self,
        shared: _Shared,
        config: OrdersConfig,
        accounting: Accounting,
        state: bytes | None,
        judges: _Judges | None = None,
    ) -> None:
        self._shared = shared
        self._config = config
        self._accounting = accounting
        self._judges = judges
        self._ctx = RiskContext(shared.limits, shared.instruments, shared.market)
        self._risk: AccountRisk | None = None
        self._oms: OrderManager | None = None
        self._replies: dict[bytes, bytes] = {}
        self._reply_log: BoundedLog[tuple[bytes, bytes]] = BoundedLog(config.reply_cache_size)
        self._now = 0
        if state is not None:
            st = msgspec.msgpack.decode(state, type=_AccountState)
            self._bind(st.account_id)
            self._risk = AccountRisk.restore(bytes(st.risk), self._ctx)
            self._oms = OrderManager.restore(bytes(st.orders))
            self._ctx.global_halted = st.global_halted
            self._ctx.global_halt_reason = st.global_halt_reason
            for chunk in st.replies:
                for digest, data in _reply_chunk.decode(chunk):
                    self._remember_reply(digest, data)

    def _bind(self, account: str) -> None:
        self.account = account
        self._risk = AccountRisk(account, self._ctx)
        self._oms = OrderManager(account)
        self._events = EVENTS_PREFIX + account
        self._decisions = DECISIONS_PREFIX + account
        self._fills = FILLS_PREFIX + account

    def snapshot(self) -> bytes:
        assert self._risk is not None and self._oms is not None
        return msgspec.msgpack.encode(
            _AccountState(
                account_id=self.account,
                risk=msgspec.Raw(self._risk.snapshot()),
                orders=msgspec.Raw(self._oms.snapshot()),
                global_halted=self._ctx.global_halted,
                global_halt_reason=self._ctx.global_halt_reason,
                replies=self._reply_log.snapshot(),
            )
        )

    def _remember_reply(self, digest: bytes, data: bytes) -> None:
        self._replies[digest] = data
        for old, _data in self._reply_log.append((digest, data)):
            self._replies.pop(old, None)

    def on_batch(self, values: list[_ToAccount]) -> tuple[Iterable[list[Outgoing]], bool]:
        if self._risk is None:
            self._bind(values[0].account)
        limits = self._shared.current_limits()
        if limits is not self._ctx.limits:
            self._ctx.set_limits(limits)
        out: list[Outgoing] = []
        outs = dups = 0
        for r in (r for batch in values for r in batch.items):
            item = r.item
            if isinstance(item, ControlCommand):
                self._control(item)
                continue  # counted once by the router
            if r.digest is not None:
                cached = self._replies.get(r.digest)
                if cached is not None:
                    dups += 1
                    if r.reply_to is not None:
                        out.append(Outgoing(r.reply_to, cached))
                    continue
            outs += 1
            if isinstance(item, SubmitOrder):
                self._submit(item, r, out)
            elif isinstance(item, CancelOrder):
                self._cancel(item, r, out)
            elif isinstance(item, ReplaceOrder):
                self._replace(item, r, out)
            elif isinstance(item, ExecutionReport):
                if not self._report(item, out):
                    outs -= 1
                    dups += 1
            else:
                self._on_position(item, out)
        self._accounting.add(STAGE, {("-", OUT): outs, ("-", DUPLICATE): dups})
        if self._judges is not None:
            self._judges.commit()
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    # -- outputs -----------------------------------------------------------------------------
    def _answer(self, decision: RiskDecision, r: Routed, out: list[Outgoing]) -> None:
        data = _encode(decision)
        if r.reply_to is not None:
            out.append(Outgoing(r.reply_to, data))
        out.append(_with_id(self._decisions, data, _decision_id(decision, r.digest)))
        if r.digest is not None:
            self._remember_reply(r.digest, data)

    def _apply(self, results: Iterable[OrderEvent | AlertRaised], out: list[Outgoing]) -> None:
        assert self._risk is not None
        for res in results:
            if isinstance(res, OrderEvent):
                self._risk.on_order_event(res)
                item = _with_id(self._events, _encode(res), f"oe:{res.order_id}:{res.seq}")
                j = self._judges
                if j is not None and j.events is not None:
                    item = j.judge(j.events, item, res)
                out.append(item)
            else:
                out.append(_alert_out(res))

    def _venue_command(
        self, instrument_id: str, order_id: str, cmd: object, tag: str, out: list[Outgoing]
    ) -> None:
        inst = self._shared.instruments.get(instrument_id)
        venue = inst.venue if inst is not None else "UNKNOWN"
        item = Outgoing(
            VENUE_PREFIX + venue,
            _encode(cmd),
            {ORDER_ID_HEADER: order_id, MSG_ID_HEADER: f"{order_id}:{tag}"},
        )
        j = self._judges
        if j is not None and j.orders is not None and isinstance(cmd, SubmitOrder):
            item = j.judge(j.orders, item, cmd)
        out.append(item)

    # -- commands ----------------------------------------------------------------------------
    def _control(self, cmd: ControlCommand) -> None:
        assert self._risk is not None
        if cmd.scope is ControlScope.GLOBAL:
            self._ctx.global_halted = cmd.action is ControlAction.HALT
            self._ctx.global_halt_reason = cmd.reason if self._ctx.global_halted else ""
        else:
            self._risk.on_control(cmd)

    def _submit(self, order: SubmitOrder, r: Routed, out: list[Outgoing]) -> None:
        assert self._risk is not None and self._oms is not None
        self._expire(order.ts_submit, out)
        decision = self._risk.check_submit(order)
        self._answer(decision, r, out)
        self._apply(self._oms.on_submit(order, decision), out)
        if decision.approved:
            rec = self._oms.get(order.client_order_id)
            assert rec is not None
            self._venue_command(order.instrument_id, rec.order_id, order, "submit", out)

    def _request_outcome(
        self, decision: RiskDecision, results: list[OrderEvent | AlertRaised], requested: str
    ) -> RiskDecision:
        """Risk approved, but the order state machine may still refuse: answer with that."""
        if not decision.approved:
            return decision
        for res in results:
            if isinstance(res, AlertRaised) and res.alert == UNKNOWN_ORDER:
                return msgspec.structs.replace(
                    decision, approved=False, reason=UNKNOWN_ORDER, detail=res.detail
                )
            if isinstance(res, OrderEvent) and res.event != requested:
                return msgspec.structs.replace(
                    decision,
                    approved=False,
                    reason=res.reason or res.event,
                    detail=res.detail or "",
                )
        return decision

    def _cancel(self, cmd: CancelOrder, r: Routed, out: list[Outgoing]) -> None:
        assert self._risk is not None and self._oms is not None
        self._expire(cmd.ts_submit, out)
        decision = self._risk.check_cancel(cmd)
        results = self._oms.on_cancel(cmd, decision)
        final = self._request_outcome(decision, results, "CANCEL_REQUESTED")
        self._answer(final, r, out)
        self._apply(results, out)
        if final.approved:
            rec = self._oms.get(cmd.client_order_id)
            assert rec is not None
            tag = f"cancel:{cmd.request_id or cmd.ts_submit}"
            self._venue_command(rec.instrument_id, rec.order_id, cmd, tag, out)

    def _replace(self, cmd: ReplaceOrder, r: Routed, out: list[Outgoing]) -> None:
        assert self._risk is not None and self._oms is not None
        self._expire(cmd.ts_submit, out)
        decision = self._risk.check_replace(cmd)
        results = self._oms.on_replace(cmd, decision)
        final = self._request_outcome(decision, results, "REPLACE_REQUESTED")
        self._answer(final, r, out)
        self._apply(results, out)
        if final.approved:
            rec = self._oms.get(cmd.client_order_id)
            assert rec is not None
            tag = f"replace:{cmd.request_id or cmd.ts_submit}"
            self._venue_command(rec.instrument_id, rec.order_id, cmd, tag, out)

    def _expire(self, now: int, out: list[Outgoing]) -> None:
        """DAY/GTD expiry runs on the account's own event time (its latest input)."""
        assert self._oms is not None
        if now > self._now:
            self._now = now
            self._apply(self._oms.on_time(now), out)

    # -- venue and portfolio -----------------------------------------------------------------
    def _report(self, rep: ExecutionReport, out: list[Outgoing]) -> bool:
        """Apply one report; False when the order state machine had seen its exec id."""
        assert self._oms is not None
        self._expire(rep.ts_event, out)
        before = self._oms.duplicates
        results = self._oms.on_execution_report(rep)
        if self._oms.duplicates != before:
            return False
        self._apply(results, out)
        for res in results:
            if isinstance(res, OrderEvent) and res.last_qty is not None and res.last_px is not None:
                fill = self._fill(rep, res)
                item = _with_id(self._fills, _encode(fill), f"fl:{rep.venue}:{rep.exec_id}")
                j = self._judges
                if j is not None and j.fills is not None:
                    item = j.judge(j.fills, item, fill)
                out.append(item)
        return True

    def _fill(self, rep: ExecutionReport, ev: OrderEvent) -> Fill:
        assert ev.last_qty is not None and ev.last_px is not None
        currency = rep.fee_currency
        if currency is None:
            inst = self._shared.instruments.get(ev.instrument_id)
            currency = inst.quote if inst is not None else ""
        return Fill(
            exec_id=rep.exec_id,
            order_id=ev.order_id,
            client_order_id=ev.client_order_id,
            account_id=ev.account_id,
            instrument_id=ev.instrument_id,
            side=ev.side,
            quantity=ev.last_qty,
            price=ev.last_px,
            fee=rep.fee if rep.fee is not None and rep.fee.is_finite() else _ZERO,
            fee_currency=currency,
            # A report without liquidity is booked as taker: the costlier, safer guess.
            liquidity=rep.liquidity or Liquidity.TAKER,
            ts_event=rep.ts_event,
        )

    def _on_position(self, pos: Position, out: list[Outgoing]) -> None:
        assert self._risk is not None
        alert = self._risk.on_position(pos)
        if alert is not None:
            out.append(_alert_out(alert))


# ---------------------------------------------------------------------------------------
# market data
# ---------------------------------------------------------------------------------------
class _MarketData:
    """Quotes and trades into the shared market view; everything else skipped by prefix."""

    def __init__(self, market: MarketView, accounting: Accounting) -> None:
        self._market = market
        self._accounting = accounting

    def __call__(self, batch: list[Message]) -> list[list[Outgoing]]:
        on_tick = self._market.on_tick
        decode = _tick.decode
        dead: list[Outgoing] = []
        reasons: list[str] = []
        for msg in batch:
            data = msg.data
            if data.startswith(_SKIP_KINDS):
                continue
            try:
                tick = decode(data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                reasons.append(INVALID_TICK)
                dl = DeadLetter(
                    stage=MD_STAGE,
                    reason=INVALID_TICK,
                    detail=f"orders market data: {exc}; hint: md.ticks carries a canonical Tick",
                    payload=data,
                    subject=msg.subject,
                    ts_recv=msg.ts_recv,
                )
                dead.append(
                    dead_letter_out(MD_STAGE, "dlq." + MD_STAGE, _encode(dl), INVALID_TICK, msg)
                )
                continue
            if isinstance(tick, Quote | TradeTick):
                on_tick(tick)
        n = len(batch)
        self._accounting.add(
            MD_STAGE, {("-", IN): n, ("-", OUT): n - len(dead), ("-", DEAD_LETTERED): len(dead)}
        )
        if reasons:
            self._accounting.add_reasons(MD_STAGE, reasons)
        return [dead] if dead else []


# ---------------------------------------------------------------------------------------
# wiring
# ---------------------------------------------------------------------------------------
def _is_direct(item: _RouterOut) -> TypeGuard[list[Outgoing]]:
    return isinstance(item, list)


def _one_item(batch: list[Message]) -> list[tuple[str, list[Message]]]:
    """A whole input batch as one keyed item: the router gets lists, not single messages."""
    return [(_ROUTER_KEY, batch)]


def _flatten(batches: list[list[Outgoing]]) -> list[Outgoing]:
    return [o for b in batches for o in b]


def build_flow(
    orders: Source[Message],
    sink: Sink[Outgoing],
    *,
    reports: Source[Message] | None = None,
    positions: Source[Message] | None = None,
    market_data: Source[Message] | None = None,
    config: OrdersConfig | None = None,
    limits: RiskLimits | None = None,
    instruments: InstrumentRegistry | None = None,
    accounting: Accounting | None = None,
    flow_id: str = "orders",
    quality: QualityConfig | Quality | None = None,
) -> Dataflow:
    """Wire the orders flow between any Message sources and any Outgoing sink.

    ``limits`` fixes the limits (tests); otherwise they come from ``config.risk_path``
    (or ``TRADE2026_RISK``) and are reloaded while the flow runs. ``quality`` judges each
    published order event, fill and new venue order (``dlq.order_events``, ``dlq.fills``,
    ``dlq.orders``; accounting stages ``quality.<stage>``); None: no quality layer.
    """
    cfg = config or OrdersConfig()
    acct = accounting or Accounting()
    registry = instruments or load_instruments(cfg.instruments_path)
    watcher = None
    if limits is None:
        path = Path(cfg.risk_path or os.environ.get("TRADE2026_RISK") or DEFAULT_PATH)
        watcher = RiskConfigWatcher(path)
        limits = watcher.limits
    shared = _Shared(limits, registry, watcher)
    judges = None
    if quality is not None:
        from operators.quality.tap import build_quality

        layer = build_quality(quality, registry, acct)
        assert layer is not None
        judges = _Judges(layer)

    flow = Dataflow(flow_id)
    inputs = [op.input("orders_in", flow, orders)]
    if reports is not None:
        inputs.append(op.input("reports_in", flow, reports))
    if positions is not None:
        inputs.append(op.input("positions_in", flow, positions))
    merged = op.merge("merge_inputs", *inputs) if len(inputs) > 1 else inputs[0]
    # Items between steps are whole batches (see _ToAccount): one keyed item per input
    # batch, one per account per router batch, one list of outputs per account batch.
    routed = op.stateful_batch(
        "route",
        op.flat_map_batch("to_router", merged, _one_item),
        lambda state: _RouterLogic(shared, cfg, acct, state),
    )
    split = op.branch("split_routed", op.key_rm("unkey_route", routed), _is_direct)
    direct: op.Stream[list[Outgoing]] = split.trues
    to_accounts: op.Stream[_ToAccount] = split.falses  # type: ignore[assignment]
    decided = op.stateful_batch(
        "account",
        op.key_on("by_account", to_accounts, lambda b: b.account),
        lambda state: _AccountLogic(shared, cfg, acct, state, judges),
    )
    streams = [direct, op.key_rm("unkey_account", decided)]
    if market_data is not None:
        md = op.input("md_in", flow, market_data)
        streams.append(op.flat_map_batch("market_view", md, _MarketData(shared.market, acct)))
    outputs = op.flat_map_batch("flatten", op.merge("merge_outputs", *streams), _flatten)
    op.output("publish", outputs, sink)
    return flow


#: Source poll back-off when idle. The order path pays it as latency on the first
#: message after a quiet spell, so it is short for orders and reports and long for
#: the inputs that only refresh risk's view.
ORDERS_IDLE_WAIT = timedelta(microseconds=500)
BACKGROUND_IDLE_WAIT = timedelta(milliseconds=5)


def production_flow(
    ctx: RunContext, *, quality: bool = True, batch_suites: bool = False
) -> Dataflow:
    """``trade2026 run orders``: the order-path inputs from streams, outputs with ids.

    Creates the order path's streams first if needed
    (:func:`~trade2026.orderclient.ensure_order_path_streams`), so the flow can start
    before any client or peer. Inputs: ``ORDERS``, ``EXEC`` (``exec.reports.>``, from the
    first message: a report published while this flow was down is still applied) and
    ``PORTFOLIO`` (``positions.>``, likewise); with Bytewax recovery each resumes from
    the stream sequence in its snapshot. Market data (``md.ticks.>``) stays on core
    NATS: it only refreshes the market view, which is not recovered (module doc), and
    a stream would add a hop of latency and, after a restart, replay the stale ticks
    of the outage in front of the live ones. Outputs are published with
    core NATS and stored by the capture streams, each with a ``Nats-Msg-Id`` (module
    doc), so what a replayed epoch re-publishes is dropped. Without ``recovery_config`` a
    restart reads ``ORDERS`` and ``EXEC`` from their start again.

    ``quality=False`` leaves the quality layer out. The per-record rules run here; the
    batch suites (``batch_suites=True``) do not by default: their validator threads
    share this process's GIL with the order path (+5x p99 measured by ``bench orders``),
    and the store flow, which persists order events and fills anyway, runs them.
    """
    from sinks.nats import NatsSink
    from sources.nats import JetStreamSource, NatsSource
    from trade2026.orderclient import SourceGroup, ensure_order_path

    ensure_order_path(ctx.nats)

    def js(stream: str, subject: str, wait: timedelta) -> JetStreamSource:
        return JetStreamSource(stream, subject, ctx.nats, idle_wait=wait, stop_after=ctx.stop_after)

    group = SourceGroup(
        # One filter over the whole stream: one partition, so a kill switch and the
        # orders around it are decided in the order the stream stored them.
        js(ORDERS_STREAM, ORDERS_FILTER, ORDERS_IDLE_WAIT),
        js("EXEC", EXEC_PREFIX + ">", ORDERS_IDLE_WAIT),
        js("PORTFOLIO", POSITIONS_PREFIX + ">", BACKGROUND_IDLE_WAIT),
        # Market data over core NATS on purpose: it only refreshes the market view,
        # which is not recovered state, so a stream adds a hop of latency and, after a
        # restart, a backlog of stale ticks in front of the fresh ones.
        NatsSource(
            "md.ticks.>", ctx.nats, idle_wait=BACKGROUND_IDLE_WAIT, stop_after=ctx.stop_after
        ),
        idle_timeout_s=ctx.idle_timeout_s,
    )
    orders, reports, positions, market_data = group.sources
    stages = ("orders", "order_events", "fills")
    layer: Quality | QualityConfig | None = None
    if quality and batch_suites:
        from flows.quality import production_quality

        layer = production_quality(ctx, *stages)
    elif quality:
        from operators.quality.tap import QualityConfig

        layer = QualityConfig(stages=stages)
    sink = NatsSink(ctx.nats)
    if ctx.metrics is not None:
        ctx.metrics.watch_source(ORDERS_STREAM, orders)
        ctx.metrics.watch_source("EXEC", reports)
        ctx.metrics.watch_sink("nats", sink)
    flow = build_flow(
        orders,
        sink,
        reports=reports,
        positions=positions,
        market_data=market_data,
        accounting=ctx.accounting,
        quality=layer,
    )
    _freeze_startup_objects()
    return flow


def _freeze_startup_objects() -> None:
    """Move everything built so far out of the cyclic GC's view (``gc.freeze``).

    A full collection traverses every tracked object, and the modules, schemas and
    limits loaded at start-up never become garbage. Measured in process (60k orders
    through the router and account logic): without the freeze the full collections
    took up to 34 ms each, with it none ran at all and the largest pause was 0.8 ms,
    on top of the order records being untracked (``OrderRecord``, ``gc=False``).
    The process is the flow's own (``trade2026 run orders``), so this is process-wide
    on purpose; :func:`build_flow` (tests, embedding) leaves the GC alone.
    """
    gc.collect()
    gc.freeze()
