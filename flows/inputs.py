"""One input stream from one source or several, for flows that listen on many subjects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

X = TypeVar("X")


def merged_input(
    flow: Dataflow, sources: Source[X] | Sequence[Source[X]], *, hint: str
) -> op.Stream[X]:
    """``op.input`` for each source, merged; one source keeps its exact interleaving.

    ``hint`` names what the flow expects, for the error when no source is given.
    """
    srcs = [sources] if isinstance(sources, Source) else list(sources)
    if not srcs:
        raise ValueError(f"{flow.flow_id} build_flow: no sources; hint: pass {hint}")
    inputs = [op.input(f"in_{i}", flow, s) for i, s in enumerate(srcs)]
    return inputs[0] if len(inputs) == 1 else op.merge("merge_inputs", *inputs)
