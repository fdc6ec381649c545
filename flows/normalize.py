"""The normalize dataflow: ``md.raw.>`` in; ``md.ticks.<instrument>``, gaps and dead letters out.

Shape::

    raw --decode (stateless, batched; emits (instrument, tick) or ("", dead letter))
        --> sequence (stateful per instrument; dead letters pass straight through)
        --> md.ticks.<instrument> / md.gaps.<instrument> / dlq.normalize

Decoding happens before the keyed exchange, so it spreads over every worker; only
deduplication and gap detection need the per-instrument state. All outputs are
:class:`~schemas.transport.Outgoing` so one publishing sink serves them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.quality import gated
from operators.normalize import (
    DLQ_SUBJECT,
    GAP_SUBJECT_PREFIX,
    STAGE,
    TICK_SUBJECT_PREFIX,
    NormalizeConfig,
    SequencerState,
    TickDecoder,
    TickSequencer,
    bytes_id,
    record_id,
)
from operators.quality.tap import Quality, QualityConfig, QualityTap, build_quality
from schemas.canonical import DeadLetter, Tick
from schemas.instruments import InstrumentRegistry, load_instruments
from schemas.transport import MSG_ID_HEADER, Message, Outgoing
from trade2026.accounting import (
    DEAD_LETTERED,
    DUPLICATE,
    IN,
    OUT,
    UNKNOWN_INSTRUMENT,
    Accounting,
)

#: The key dead letters travel under: they bypass sequencing, so any one worker will do.
_DEAD_LETTER_KEY = ""


class _Decode:
    """Batch decoder emitting ``(key, value)`` pairs, with exact in/dead-letter accounting.

    Emitting keyed pairs straight away (ticks under their instrument, dead letters under
    one fixed key) spares Bytewax a branch and a key step per message on the hot path.
    """

    def __init__(self, decoder: TickDecoder, accounting: Accounting, msg_ids: bool) -> None:
        self._decoder = decoder
        self._accounting = accounting
        self._encode = msgspec.json.Encoder().encode
        self._msg_ids = msg_ids

    def __call__(self, batch: list[Message]) -> list[tuple[str, Tick | Outgoing]]:
        decode = self._decoder.decode
        out: list[tuple[str, Tick | Outgoing]] = []
        seen: Counter[str] = Counter()
        dead: Counter[str] = Counter()
        reasons: list[str] = []
        for msg in batch:
            rec = decode(msg)
            if isinstance(rec, DeadLetter):
                dead[rec.instrument_id or UNKNOWN_INSTRUMENT] += 1
                reasons.append(rec.reason)
                data = self._encode(rec)
                headers = {MSG_ID_HEADER: bytes_id(DLQ_SUBJECT, data)} if self._msg_ids else None
                out.append((_DEAD_LETTER_KEY, Outgoing(DLQ_SUBJECT, data, headers)))
            else:
                seen[rec.instrument_id] += 1
                out.append((rec.instrument_id, rec))
        counts = {(inst, IN): n for inst, n in seen.items()}
        for inst, n in dead.items():
            counts[(inst, IN)] = counts.get((inst, IN), 0) + n
            counts[(inst, DEAD_LETTERED)] = n
        self._accounting.add(STAGE, counts)
        if reasons:
            self._accounting.add_reasons(STAGE, reasons)
        return out


class _SequenceLogic(StatefulBatchLogic[Tick | Outgoing, Outgoing, SequencerState]):
    """Bytewax's builder is not told the key, so the instrument comes from the first tick."""

    def __init__(
        self,
        config: NormalizeConfig,
        accounting: Accounting,
        state: SequencerState | None,
        msg_ids: bool = False,
        ticks_tap: Callable[[], QualityTap] | None = None,
    ) -> None:
        self._config = config
        self._ticks_tap = ticks_tap
        self._tap: QualityTap | None = None
        self._msg_ids = msg_ids
        self._accounting = accounting
        self._encode = msgspec.json.Encoder().encode
        self._seq: TickSequencer | None = None
        if state is not None and state.instrument_id:
            self._bind(state.instrument_id, state)

    def _bind(self, instrument_id: str, state: SequencerState | None) -> TickSequencer:
        self._seq = TickSequencer(instrument_id, self._config, state)
        self._subject = TICK_SUBJECT_PREFIX + instrument_id
        self._gap_subject = GAP_SUBJECT_PREFIX + instrument_id
        if self._ticks_tap is not None:  # one per instrument: the rule's state is per key
            self._tap = self._ticks_tap()
        return self._seq

    def on_batch(self, values: list[Tick | Outgoing]) -> tuple[Iterable[Outgoing], bool]:
        first = values[0]
        if isinstance(first, Outgoing):  # the dead-letter key: already encoded, pass through
            return values, StatefulBatchLogic.RETAIN  # type: ignore[return-value]
        seq = self._seq or self._bind(first.instrument_id, None)
        on_tick, encode, subject = seq.on_tick, self._encode, self._subject
        out: list[Outgoing] = []
        dups = 0
        problems: list[tuple[str, str]] = []
        check = self._tap.check if self._tap is not None else None
        for tick in values:
            emit, report = on_tick(tick)  # type: ignore[arg-type]
            if emit and check is not None and (dead := check(tick)) is not None:
                out.append(_dead_out(dead, self._msg_ids))  # quality: dlq.ticks, not md.ticks
            elif emit:
                headers = {MSG_ID_HEADER: record_id(tick)} if self._msg_ids else None  # type: ignore[arg-type]
                out.append(Outgoing(subject, encode(tick), headers))
            else:
                dups += 1
            if report is not None:
                problems.append((report.instrument_id, report.problem))
                headers = {MSG_ID_HEADER: record_id(report)} if self._msg_ids else None
                out.append(Outgoing(self._gap_subject, encode(report), headers))
        if self._tap is not None:
            self._tap.commit()
        iid = seq.instrument_id
        self._accounting.add(STAGE, {(iid, OUT): len(values) - dups, (iid, DUPLICATE): dups})
        if problems:
            self._accounting.add_problems(STAGE, problems)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> SequencerState:
        # The dead-letter key never binds a sequencer: its snapshot is an empty state.
        return self._seq.snapshot() if self._seq is not None else SequencerState()


def _dead_out(dead: DeadLetter, msg_ids: bool) -> Outgoing:
    subject = f"dlq.{dead.stage}"
    data = msgspec.json.encode(dead)
    return Outgoing(subject, data, {MSG_ID_HEADER: bytes_id(subject, data)} if msg_ids else None)


def build_flow(
    source: Source[Message],
    sink: Sink[Outgoing],
    *,
    instruments: InstrumentRegistry | None = None,
    config: NormalizeConfig | None = None,
    accounting: Accounting | None = None,
    flow_id: str = "normalize",
    msg_ids: bool = False,
    quality: QualityConfig | Quality | None = None,
) -> Dataflow:
    """Wire the normalize flow between any Message source and any Outgoing sink.

    ``msg_ids`` stamps every output with a ``Nats-Msg-Id`` naming the record itself, so
    a JetStream sink de-duplicates what a recovered flow publishes again.

    ``quality`` gates raw messages before decoding (``dlq.raw``) and ticks as they are
    emitted (``dlq.ticks``; order checks off: the sequencer owns ordering), counted under
    ``quality.raw``/``quality.ticks``; None: no quality layer (fast unit tests).
    """
    registry = instruments or load_instruments()
    cfg = config or NormalizeConfig()
    acct = accounting or Accounting()
    q = build_quality(quality, registry, acct)
    flow = Dataflow(flow_id)
    raw = op.input("raw", flow, source)
    decode: Callable[[list[Message]], Iterable[tuple[str, Tick | Outgoing]]]
    decode = _Decode(TickDecoder(registry, cfg), acct, msg_ids)
    if q is not None and q.enabled("raw"):
        decode = gated(q.tap("raw"), decode, lambda d: (_DEAD_LETTER_KEY, _dead_out(d, msg_ids)))
    keyed = op.flat_map_batch("decode", raw, decode)
    ticks_tap: Callable[[], QualityTap] | None = None
    if q is not None and q.enabled("ticks"):
        quality_layer = q
        # The decoder already rejects every non-finite or non-positive level price and negative
        # size (operators/normalize.py _levels): re-checking each level costs ~1 us a message.
        ticks_rules = msgspec.structs.replace(
            q.config.rules, check_order=False, check_book_levels=False
        )

        def ticks_tap() -> QualityTap:
            return quality_layer.tap("ticks", rules=ticks_rules)

    sequenced = op.stateful_batch(
        "sequence", keyed, lambda state: _SequenceLogic(cfg, acct, state, msg_ids, ticks_tap)
    )
    op.output("publish", op.key_rm("unkey", sequenced), sink)
    return flow
