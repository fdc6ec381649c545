"""Bytewax wiring of the quality gate (:mod:`operators.quality.tap`) at a flow's boundary.

Three shapes, so a flow adds one line where its records leave (or enter):

* :func:`quality_tap` - a typed stream in, ``(ok_stream, dead_letter_stream)`` out;
* :func:`gate_outgoing` - a stream of :class:`~schemas.transport.Outgoing` whose subjects
  name the stage (``fills.*``, ``positions.*``): judged records stay, failing ones are
  replaced in place by their dead letter on ``dlq.<stage>``; other subjects pass
  untouched and uncounted;
* :func:`gated` - in front of a ``flat_map_batch`` function, with no extra step at all
  (normalize's raw messages: the hot path pays the rule and nothing else).

Taps here are shared by the workers of a process, so they check a batch under one lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream

from operators.quality.tap import Quality, QualityTap
from schemas.canonical import DeadLetter
from schemas.transport import MSG_ID_HEADER, Outgoing
from trade2026.orderclient import content_msg_id

if TYPE_CHECKING:
    from trade2026.flowregistry import RunContext
    from trade2026.natsconf import NatsConfig

X = TypeVar("X")
Y = TypeVar("Y")

_encode = msgspec.json.Encoder().encode


def dead_letter_out(dead: DeadLetter) -> Outgoing:
    """A dead letter as published on ``dlq.<stage>``."""
    return Outgoing(f"dlq.{dead.stage}", _encode(dead))


class _Dead(msgspec.Struct, frozen=True, gc=False):
    letter: DeadLetter


def _is_dead(item: Any) -> bool:
    return isinstance(item, _Dead)


def _letter(item: Any) -> DeadLetter:
    letter: DeadLetter = item.letter
    return letter


def quality_tap(
    step_id: str, stream: Stream[X], tap: QualityTap
) -> tuple[Stream[X], Stream[DeadLetter]]:
    """Split ``stream`` into what passes ``tap`` and the dead letters of the rest."""

    def judge(batch: list[X]) -> list[X | _Dead]:
        ok, dead = tap.split(batch)
        return [*ok, *(_Dead(d) for d in dead)] if dead else ok

    checked = op.flat_map_batch(step_id, stream, judge)
    split = op.branch(f"{step_id}_split", checked, _is_dead)
    dead: Stream[DeadLetter] = op.map(f"{step_id}_dead", split.trues, _letter)
    ok: Stream[X] = split.falses  # type: ignore[assignment]
    return ok, dead


def gated(
    tap: QualityTap,
    fn: Callable[[list[X]], Iterable[Y]],
    dead: Callable[[DeadLetter], Y],
) -> Callable[[list[X]], list[Y]]:
    """``fn`` over the records of each batch that pass ``tap``, plus ``dead(letter)`` for
    each that does not: the tap costs its rule, not a Bytewax step."""

    def run(batch: list[X]) -> list[Y]:
        ok, letters = tap.split(batch)
        result = fn(ok)
        out = result if type(result) is list else list(result)  # no copy of fn's own list
        if letters:
            out.extend(dead(d) for d in letters)
        return out

    return run


def _replacing(item: Outgoing, letter: DeadLetter) -> Outgoing:
    """The dead letter that replaces ``item``, with a ``Nats-Msg-Id`` so a replay after a
    crash is dropped by the DLQ stream: ``q:`` + the id of the record it replaces (the
    record is the same on replay: positions are ``pos:...``), else ``q:`` + a digest of
    the dead letter's subject and bytes (a dead letter of an ``Outgoing`` has no clock in
    it, so a replay repeats it byte for byte). As the orders flow names its own."""
    subject, data = f"dlq.{letter.stage}", _encode(letter)
    msg_id = item.headers.get(MSG_ID_HEADER) if item.headers else None
    return Outgoing(
        subject, data, {MSG_ID_HEADER: "q:" + (msg_id or content_msg_id(subject, data))}
    )


class Route(msgspec.Struct, frozen=True):
    """Outgoing subjects starting with ``prefix`` carry records of ``stage`` as JSON."""

    prefix: str
    stage: str
    decode: Callable[[bytes], Any]
    #: Decoded records not of this type pass unjudged (e.g. cancels on venue.commands).
    only: type | tuple[type, ...] | None = None


class OutgoingGate:
    """Judge the records a flow publishes, by subject, with one tap per stage. A failing
    record is replaced by its dead letter, named after it (``q:<its Nats-Msg-Id>``)."""

    def __init__(self, quality: Quality, routes: Sequence[Route]) -> None:
        self._routes = [(r, quality.tap(r.stage)) for r in routes if quality.enabled(r.stage)]

    def __bool__(self) -> bool:
        return bool(self._routes)

    def __call__(self, batch: list[Outgoing]) -> list[Outgoing]:
        routes = self._routes
        out: list[Outgoing] = []
        touched: set[int] = set()
        for item in batch:
            subject = item.subject
            for i, (route, tap) in enumerate(routes):
                if not subject.startswith(route.prefix):
                    continue
                try:
                    record = route.decode(item.data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    record = None
                if (
                    route.only is not None
                    and record is not None
                    and not isinstance(record, route.only)
                ):
                    out.append(item)
                    break
                touched.add(i)
                with tap.lock:
                    letter = tap.judge(item, record)
                out.append(item if letter is None else _replacing(item, letter))
                break
            else:
                out.append(item)
        for i in touched:
            tap = routes[i][1]
            with tap.lock:
                tap.commit()
        return out


def gate_outgoing(step_id: str, stream: Stream[Outgoing], gate: OutgoingGate) -> Stream[Outgoing]:
    """``stream`` with each judged record replaced by its dead letter when it fails."""
    return op.flat_map_batch(step_id, stream, gate)


def nats_publisher(config: NatsConfig) -> Callable[[str, bytes], None]:
    """``publish(subject, payload)`` for the validator threads: one lazy connection on the
    shared NATS loop, flushed per alert (alerts are rare; losing one must not go unseen)."""
    import threading

    from trade2026.natsloop import NatsLoop

    state: dict[str, Any] = {}
    lock = threading.Lock()

    def publish(subject: str, payload: bytes) -> None:
        with lock:
            if "nc" not in state:
                loop = NatsLoop.acquire()
                state["loop"], state["nc"] = loop, loop.connect(config)
            loop, nc = state["loop"], state["nc"]
        loop.run(nc.publish(subject, payload), timeout_s=10.0)
        loop.run(nc.flush(), timeout_s=10.0)

    return publish


def production_quality(ctx: RunContext, *stages: str) -> Quality:
    """The quality layer ``trade2026 run`` gives a flow: batch validation stored under
    ``$TRADE2026_STATE_DIR/quality``, alerts on NATS, the tail validated at exit."""
    import time

    from operators.quality.tap import QualityConfig
    from schemas.instruments import load_instruments

    return Quality(
        QualityConfig.production(stages=stages),
        load_instruments(),
        accounting=ctx.accounting,
        clock=time.time_ns,
        publish=nats_publisher(ctx.nats),
    ).close_at_exit()


__all__ = [
    "OutgoingGate",
    "Route",
    "dead_letter_out",
    "gate_outgoing",
    "gated",
    "nats_publisher",
    "production_quality",
    "quality_tap",
]
