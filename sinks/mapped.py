"""A sink that encodes records into :class:`~schemas.transport.Outgoing` for another sink.

Flows produce typed records (bars, late records, dead letters); the NATS sinks publish
``Outgoing``. This adapter keeps that mapping out of both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.transport import Outgoing

X = TypeVar("X")


class _MappedPartition(StatelessSinkPartition[X], Generic[X]):
    def __init__(self, inner: StatelessSinkPartition[Outgoing], fn: Callable[[X], Outgoing]):
        self._inner = inner
        self._fn = fn

    def write_batch(self, items: list[X]) -> None:
        self._inner.write_batch([self._fn(x) for x in items])

    def close(self) -> None:
        self._inner.close()


class MappedSink(DynamicSink[X], Generic[X]):
    def __init__(self, inner: DynamicSink[Outgoing], fn: Callable[[X], Outgoing]) -> None:
        self._inner = inner
        self._fn = fn

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MappedPartition[X]:
        return _MappedPartition(self._inner.build(step_id, worker_index, worker_count), self._fn)
