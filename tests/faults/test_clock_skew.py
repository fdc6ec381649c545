"""Clock skew in venue timestamps: far ahead is dead-lettered, far behind is routed as late.

Decision (docs/recovery.md, "Clock skew"): the normalizer judges an event time only
against our own receive time of the same message. Ahead by more than
``max_future_ns`` (60 s) cannot be network delay, so it is ``TIMESTAMP_IN_FUTURE``.
Behind is normal for a venue that resends or a link that stalled, and the normalizer
cannot know how far behind is too far, so it publishes the tick; the feature flow,
which owns the watermark, routes anything behind an already-emitted window to its
``late`` output (a :class:`~schemas.features.LateRecord`) instead of changing a
published bar or dropping it.
"""

from __future__ import annotations

import msgspec
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.features import FeatureOutputs
from flows.features import build_flow as build_features
from flows.normalize import build_flow as build_normalize
from operators.features import FeatureConfig
from schemas.canonical import DeadLetter, Tick, TradeTick
from schemas.features import Bar, LateRecord
from schemas.transport import Message, Outgoing
from trade2026.accounting import Accounting

SUBJECT = "md.raw.binance.ethusdt"
SECOND = 1_000_000_000
T0 = 1_723_161_255_000 * 1_000_000  # a venue time on the sample day, in ns
HOUR_MS = 3_600_000


def trade(trade_id: int, venue_ms: int, recv_ns: int) -> Message:
    data = (
        b'{"stream":"ethusdt@trade","data":{"e":"trade","E":%d,"s":"ETHUSDT","t":%d,'
        b'"p":"2600.5","q":"0.1","T":%d,"m":false,"M":true}}' % (venue_ms, trade_id, venue_ms)
    )
    return Message(SUBJECT, data, recv_ns)


def normalize(msgs: list[Message]) -> tuple[list[Outgoing], Accounting]:
    out: list[Outgoing] = []
    acct = Accounting()
    run_main(build_normalize(TestingSource(msgs), TestingSink(out), accounting=acct))
    return out, acct


def test_far_ahead_is_dead_lettered_and_far_behind_passes_normalize() -> None:
    ms0 = T0 // 1_000_000
    msgs = [
        trade(1, ms0, T0),
        trade(2, ms0 + HOUR_MS, T0 + SECOND),  # venue clock an hour ahead of ours
        trade(3, ms0 + 2_000, T0 + 2 * SECOND),
        trade(4, ms0 - HOUR_MS, T0 + 3 * SECOND),  # an hour behind
        trade(5, ms0 + 59_000, T0),  # 59 s ahead: within the 60 s limit
    ]
    out, acct = normalize(msgs)
    dead = [
        msgspec.json.decode(o.data, type=DeadLetter) for o in out if o.subject == "dlq.normalize"
    ]
    assert [d.reason for d in dead] == ["TIMESTAMP_IN_FUTURE"]
    assert dead[0].payload == msgs[1].data and "ahead" in dead[0].detail
    ticks = [
        msgspec.json.decode(o.data, type=Tick) for o in out if o.subject.startswith("md.ticks.")
    ]
    assert sorted(t.trade_id for t in ticks if isinstance(t, TradeTick)) == ["1", "3", "4", "5"]
    assert acct.stage("normalize").balanced and acct.stage("normalize").dead_lettered == 1


def test_far_behind_the_watermark_is_routed_late_by_the_feature_flow() -> None:
    ms0 = T0 // 1_000_000
    msgs = [trade(i, ms0 + i * 1_000, T0 + i * SECOND) for i in range(1, 6)]
    msgs.append(trade(99, ms0 - HOUR_MS, T0 + 6 * SECOND))  # an hour behind everything
    msgs.append(trade(6, ms0 + 6_000, T0 + 7 * SECOND))
    out, _ = normalize(msgs)
    ticks = [
        msgspec.json.decode(o.data, type=Tick) for o in out if o.subject.startswith("md.ticks.")
    ]
    assert len(ticks) == 7

    bars: list[Bar] = []
    late: list[LateRecord] = []
    dead: list[DeadLetter] = []
    cfg = FeatureConfig(widths_ns=(SECOND,), allowed_lateness_ns=2 * SECOND)
    run_main(
        build_features(
            TestingSource(ticks),
            FeatureOutputs(TestingSink(bars), TestingSink(late), TestingSink(dead)),
            cfg,
        )
    )
    assert len(late) == 1 and not dead
    assert late[0].ts_event == (ms0 - HOUR_MS) * 1_000_000
    assert late[0].ts_event < late[0].watermark
    assert msgspec.json.decode(late[0].record, type=TradeTick).trade_id == "99"
    # The late trade joined no bar: the bars hold exactly the six on-time trades.
    assert sum(b.trade_count for b in bars) == 6
