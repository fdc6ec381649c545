"""The normalize dataflow: ``md.raw.>`` in; ``md.ticks.<instrument>``, gaps and dead letters out.

Shape::

    raw --decode (stateless, batched)--+--> dead letters --> dlq.normalize
                                       +--> key by instrument --> sequence (stateful)
                                                 --> md.ticks.<instrument> / md.gaps.<instrument>

Decoding happens before the keyed exchange, so it spreads over every worker; only
deduplication and gap detection need the per-instrument state. All outputs are
:class:`~schemas.transport.Outgoing` so one publishing sink serves them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TypeGuard

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.normalize import (
    DLQ_SUBJECT,
    GAP_SUBJECT_PREFIX,
    STAGE,
    TICK_SUBJECT_PREFIX,
    NormalizeConfig,
    SequencerState,
    TickDecoder,
    TickSequencer,
)
from schemas.canonical import DeadLetter, Tick
from schemas.instruments import InstrumentRegistry, load_instruments
from schemas.transport import Message, Outgoing
from trade2026.accounting import (
    DEAD_LETTERED,
    DUPLICATE,
    IN,
    OUT,
    UNKNOWN_INSTRUMENT,
    Accounting,
)


class _Decode:
    """Batch decoder with exact in/dead-letter accounting per instrument."""

    def __init__(self, decoder: TickDecoder, accounting: Accounting) -> None:
        self._decoder = decoder
        self._accounting = accounting
        self._encode = msgspec.json.Encoder().encode

    def __call__(self, batch: list[Message]) -> list[Tick | Outgoing]:
        decode = self._decoder.decode
        out: list[Tick | Outgoing] = []
        counts: Counter[tuple[str, str]] = Counter()
        reasons: list[str] = []
        for msg in batch:
            rec = decode(msg)
            if isinstance(rec, DeadLetter):
                inst = rec.instrument_id or UNKNOWN_INSTRUMENT
                counts[(inst, IN)] += 1
                counts[(inst, DEAD_LETTERED)] += 1
                reasons.append(rec.reason)
                out.append(Outgoing(DLQ_SUBJECT, self._encode(rec)))
            else:
                counts[(rec.instrument_id, IN)] += 1
                out.append(rec)
        self._accounting.add(STAGE, counts)
        if reasons:
            self._accounting.add_reasons(STAGE, reasons)
        return out


class _SequenceLogic(StatefulBatchLogic[Tick, Outgoing, SequencerState]):
    """Bytewax's builder is not told the key, so the instrument comes from the first tick."""

    def __init__(
        self, config: NormalizeConfig, accounting: Accounting, state: SequencerState | None
    ) -> None:
        self._config = config
        self._accounting = accounting
        self._encode = msgspec.json.Encoder().encode
        self._seq: TickSequencer | None = None
        if state is not None:
            self._bind(state.instrument_id, state)

    def _bind(self, instrument_id: str, state: SequencerState | None) -> TickSequencer:
        self._seq = TickSequencer(instrument_id, self._config, state)
        self._subject = TICK_SUBJECT_PREFIX + instrument_id
        self._gap_subject = GAP_SUBJECT_PREFIX + instrument_id
        return self._seq

    def on_batch(self, values: list[Tick]) -> tuple[Iterable[Outgoing], bool]:
        seq = self._seq or self._bind(values[0].instrument_id, None)
        on_tick, encode, subject = seq.on_tick, self._encode, self._subject
        out: list[Outgoing] = []
        dups = 0
        problems: list[tuple[str, str]] = []
        for tick in values:
            emit, report = on_tick(tick)
            if emit:
                out.append(Outgoing(subject, encode(tick)))
            else:
                dups += 1
            if report is not None:
                problems.append((report.instrument_id, report.problem))
                out.append(Outgoing(self._gap_subject, encode(report)))
        iid = seq.instrument_id
        self._accounting.add(STAGE, {(iid, OUT): len(values) - dups, (iid, DUPLICATE): dups})
        if problems:
            self._accounting.add_problems(STAGE, problems)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> SequencerState:
        assert self._seq is not None, "bytewax snapshots a logic only after it saw a batch"
        return self._seq.snapshot()


def _is_tick(item: Tick | Outgoing) -> TypeGuard[Tick]:
    return not isinstance(item, Outgoing)


def build_flow(
    source: Source[Message],
    sink: Sink[Outgoing],
    *,
    instruments: InstrumentRegistry | None = None,
    config: NormalizeConfig | None = None,
    accounting: Accounting | None = None,
    flow_id: str = "normalize",
) -> Dataflow:
    """Wire the normalize flow between any Message source and any Outgoing sink."""
    registry = instruments or load_instruments()
    cfg = config or NormalizeConfig()
    acct = accounting or Accounting()
    flow = Dataflow(flow_id)
    raw = op.input("raw", flow, source)
    decoded = op.flat_map_batch("decode", raw, _Decode(TickDecoder(registry, cfg), acct))
    split = op.branch("split_dead_letters", decoded, _is_tick)
    keyed = op.key_on("by_instrument", split.trues, lambda tick: tick.instrument_id)
    sequenced = op.stateful_batch("sequence", keyed, lambda state: _SequenceLogic(cfg, acct, state))
    dead: op.Stream[Outgoing] = split.falses  # type: ignore[assignment]
    published: op.Stream[Outgoing] = op.merge("merge", op.key_rm("unkey", sequenced), dead)
    op.output("publish", published, sink)
    return flow
