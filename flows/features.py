"""The feature flow: canonical ticks (and account records) in, windowed features out.

Graph::

    input ─ decode ─┬─ ticks ─ key_on(instrument) ─┬─ bars_1s (stateful) ─┐
                    │                              └─ bars_1m (stateful) ─┼─ branch ─ bars
                    ├─ fills/positions ─ key_on(account) ─ accounts_1m ───┤         └─ late
                    └─ undecodable ─ dead_letters                         └─ accounts

Windowing is the project's own operator (:mod:`operators.features`), wrapped in bytewax's
low-level ``stateful`` operator, not bytewax's ``EventClock`` windows: see that module for
the two bytewax 0.21.1 bugs this avoids. Windows still open at end of stream are emitted
on EOF. Input may be canonical records or :class:`~schemas.transport.Message` (JSON
bytes of a canonical record, e.g. off NATS); bytes that do not decode become
:class:`~schemas.canonical.DeadLetter` on the ``dead_letters`` output. Records that are not
features input (book deltas, data gaps, orders) are skipped on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink

from operators.features import AccountFeatures, FeatureConfig, InstrumentBars, width_label
from schemas.canonical import BookDelta, DataGap, DeadLetter, Fill, Position, Quote, TradeTick
from schemas.features import AccountWindow, Bar, LateRecord
from schemas.transport import Message

if TYPE_CHECKING:
    from operators.quality.tap import Quality, QualityConfig

STAGE = "features"
_Decodable = TradeTick | Quote | BookDelta | DataGap | Fill | Position
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(_Decodable)


@dataclass(frozen=True)
class FeatureOutputs:
    """Where the flow's outputs go. ``accounts=None`` leaves account records unused."""

    bars: Sink[Bar]
    late: Sink[LateRecord]
    dead_letters: Sink[DeadLetter]
    accounts: Sink[AccountWindow] | None = None


def decode(item: Any) -> Any:
    """A canonical record as is, a :class:`Message` decoded, or a :class:`DeadLetter`."""
    if not isinstance(item, Message):
        return item
    try:
        return _decoder.decode(item.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return DeadLetter(
            stage=STAGE,
            reason="UNDECODABLE",
            detail=f"{STAGE}: {exc}; hint: the input must be a canonical record as JSON",
            payload=item.data,
            subject=item.subject,
            ts_recv=item.ts_recv,
        )


class _BarsLogic(StatefulLogic[TradeTick | Quote, Bar | LateRecord, InstrumentBars]):
    """Built from resume state, or lazily from the key's first tick (which names it)."""

    def __init__(self, width_ns: int, lateness_ns: int, resume: InstrumentBars | None) -> None:
        self.width_ns = width_ns
        self.lateness_ns = lateness_ns
        self.bars = resume

    def on_item(self, value: TradeTick | Quote) -> tuple[Iterable[Bar | LateRecord], bool]:
        if self.bars is None:
            self.bars = InstrumentBars(value.instrument_id, self.width_ns, self.lateness_ns)
        return self.bars.on_tick(value), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Bar | LateRecord], bool]:
        if self.bars is None:
            return (), StatefulLogic.DISCARD
        return self.bars.flush(), StatefulLogic.RETAIN

    def snapshot(self) -> InstrumentBars:
        assert self.bars is not None
        return self.bars


class _AccountLogic(StatefulLogic[Fill | Position, AccountWindow | LateRecord, AccountFeatures]):
    def __init__(self, width_ns: int, lateness_ns: int, resume: AccountFeatures | None) -> None:
        self.width_ns = width_ns
        self.lateness_ns = lateness_ns
        self.acc = resume

    def on_item(self, value: Fill | Position) -> tuple[Iterable[AccountWindow | LateRecord], bool]:
        if self.acc is None:
            self.acc = AccountFeatures(value.account_id, self.width_ns, self.lateness_ns)
        return self.acc.on_record(value), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[AccountWindow | LateRecord], bool]:
        if self.acc is None:
            return (), StatefulLogic.DISCARD
        return self.acc.flush(), StatefulLogic.RETAIN

    def snapshot(self) -> AccountFeatures:
        assert self.acc is not None
        return self.acc


def _unkey(kv: tuple[str, Any]) -> Any:
    return kv[1]


def _as_tick(x: Any) -> TradeTick | Quote | None:
    return x if isinstance(x, TradeTick | Quote) else None


def _instrument_of(t: TradeTick | Quote) -> str:
    return t.instrument_id


def _as_account_record(x: Any) -> Fill | Position | None:
    return x if isinstance(x, Fill | Position) else None


def _account_of(r: Fill | Position) -> str:
    return r.account_id


def _bars_builder(width_ns: int, lateness_ns: int) -> Callable[[InstrumentBars | None], _BarsLogic]:
    def build(resume: InstrumentBars | None) -> _BarsLogic:
        return _BarsLogic(width_ns, lateness_ns, resume)

    return build


def _account_builder(
    width_ns: int, lateness_ns: int
) -> Callable[[AccountFeatures | None], _AccountLogic]:
    def build(resume: AccountFeatures | None) -> _AccountLogic:
        return _AccountLogic(width_ns, lateness_ns, resume)

    return build


def build_flow(
    source: Source[Any],
    outputs: FeatureOutputs,
    config: FeatureConfig | None = None,
    flow_id: str = "features",
    quality: QualityConfig | Quality | None = None,
) -> Dataflow:
    """Wire source → windows → outputs. Each width of ``config.widths_ns`` is its own step.

    ``quality`` judges every bar and account window before its sink (failures go to the
    ``dead_letters`` output with stage ``features``; accounting ``quality.features``).
    """
    cfg = config or FeatureConfig()
    flow = Dataflow(flow_id)
    raw = op.input("input", flow, source)
    decoded = op.map("decode", raw, decode)
    dead = op.filter_map(
        "dead_letters", decoded, lambda x: x if isinstance(x, DeadLetter) else None
    )
    op.output("dead_letters_out", dead, outputs.dead_letters)

    ticks: Stream[TradeTick | Quote] = op.filter_map("ticks", decoded, _as_tick)
    keyed = op.key_on("by_instrument", ticks, _instrument_of)
    lateness = cfg.allowed_lateness_ns
    results: list[Stream[Any]] = []
    for width in cfg.widths_ns:
        step = f"bars_{width_label(width)}"
        windows = op.stateful(step, keyed, _bars_builder(width, lateness))
        results.append(op.map(f"{step}_unkey", windows, _unkey))
    if outputs.accounts is not None:
        acc_in: Stream[Fill | Position] = op.filter_map(
            "account_records", decoded, _as_account_record
        )
        acc_keyed = op.key_on("by_account", acc_in, _account_of)
        step = f"accounts_{width_label(cfg.account_width_ns)}"
        acc_windows = op.stateful(step, acc_keyed, _account_builder(cfg.account_width_ns, lateness))
        results.append(op.map(f"{step}_unkey", acc_windows, _unkey))

    merged = op.merge("windows", *results)
    if quality is not None:
        merged = _quality_tap(merged, quality, outputs)
    late = op.filter_map("late", merged, lambda x: x if isinstance(x, LateRecord) else None)
    op.output("late_out", late, outputs.late)
    bars = op.filter_map("bars", merged, lambda x: x if isinstance(x, Bar) else None)
    op.output("bars_out", bars, outputs.bars)
    if outputs.accounts is not None:
        accounts = op.filter_map(
            "accounts", merged, lambda x: x if isinstance(x, AccountWindow) else None
        )
        op.output("accounts_out", accounts, outputs.accounts)
    return flow


def _quality_tap(
    merged: Stream[Any], quality: QualityConfig | Quality, outputs: FeatureOutputs
) -> Stream[Any]:
    """Bars and account windows through the features quality gate; late records pass."""
    from flows.quality import quality_tap
    from operators.quality.tap import build_quality
    from schemas.instruments import load_instruments

    q = build_quality(quality, load_instruments(), None)
    if q is None or not q.enabled(STAGE):
        return merged
    split = op.branch("quality_select", merged, lambda x: isinstance(x, Bar | AccountWindow))
    ok, dead = quality_tap("quality_features", split.trues, q.tap(STAGE))
    op.output("quality_dead_letters_out", dead, outputs.dead_letters)
    return op.merge("quality_windows", ok, split.falses)


__all__ = ["STAGE", "FeatureOutputs", "build_flow", "decode"]
