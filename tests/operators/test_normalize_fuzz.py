"""Hypothesis: arbitrary bytes and mutated venue messages never crash the normalizer.

Every input becomes exactly one tick or one dead letter, and the sequencer then
splits the ticks into emitted and duplicates: in = out + dead-lettered + duplicates.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.normalize import NormalizeConfig, TickDecoder, TickSequencer
from schemas.canonical import DeadLetter
from schemas.instruments import load_instruments
from schemas.transport import Message

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
DECODER = TickDecoder(load_instruments())


def _sample_lines(n: int = 400) -> list[bytes]:
    with gzip.open(DATA / "spot_btcusdt_20240808.gz") as f:
        return [next(f).split(b" ", 1)[1].rstrip(b"\n") for _ in range(n)]


SAMPLES = _sample_lines()
SUBJECTS = st.sampled_from(
    [
        "md.raw.binance.btcusdt",
        "md.raw.binance-usdm.btcusdt",
        "md.raw.coinbase.btc-usd",
        "md.raw.binance",
        "md.raw.",
        "md.raw.nope.x",
    ]
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["NaN", "Infinity", "-1", "0", "1e999", ""]),
)


def _mutate(obj: Any, data: st.DataObject) -> Any:
    """Replace, drop or retype one field somewhere in a decoded venue message."""
    if isinstance(obj, dict) and obj:
        key = data.draw(st.sampled_from(sorted(obj)))
        action = data.draw(st.sampled_from(["replace", "drop", "recurse"]))
        new = dict(obj)
        if action == "drop":
            del new[key]
        elif action == "replace":
            new[key] = data.draw(JSON_SCALARS)
        else:
            new[key] = _mutate(obj[key], data)
        return new
    if isinstance(obj, list) and obj:
        i = data.draw(st.integers(0, len(obj) - 1))
        return [*obj[:i], _mutate(obj[i], data), *obj[i + 1 :]]
    return data.draw(JSON_SCALARS)


def _account(messages: list[Message]) -> tuple[int, int, int]:
    seqs: dict[str, TickSequencer] = {}
    out = dead = dups = 0
    for m in messages:
        rec = DECODER.decode(m)  # must never raise
        if isinstance(rec, DeadLetter):
            assert rec.payload == m.data and rec.reason.isupper()
            dead += 1
            continue
        seq = seqs.setdefault(
            rec.instrument_id, TickSequencer(rec.instrument_id, NormalizeConfig())
        )
        emitted, _ = seq.on_tick(rec)
        out += emitted
        dups += not emitted
    return out, dead, dups


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(SUBJECTS, st.binary(max_size=300)), max_size=20))
def test_arbitrary_bytes_are_accounted_for(items: list[tuple[str, bytes]]) -> None:
    messages = [Message(s, b, 1_723_161_254_000_000_000) for s, b in items]
    out, dead, dups = _account(messages)
    assert out + dead + dups == len(messages)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_venue_messages_are_accounted_for(data: st.DataObject) -> None:
    messages = []
    for _ in range(data.draw(st.integers(1, 8))):
        line = data.draw(st.sampled_from(SAMPLES))
        obj = json.loads(line)
        if data.draw(st.booleans()):
            obj = _mutate(obj, data)
        raw = json.dumps(obj, separators=(",", ":")).encode()
        if data.draw(st.integers(0, 9)) == 0:  # sometimes cut the bytes short
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        messages.append(Message("md.raw.binance.btcusdt", raw, 1_723_161_254_000_000_000))
    out, dead, dups = _account(messages)
    assert out + dead + dups == len(messages)
