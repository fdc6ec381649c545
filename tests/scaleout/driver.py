"""Run the normalize, orders or features flow on fixed input, writing every output to files.

The scale-out tests run the same flow three ways (1 worker, 2 workers in one process,
2 processes over loopback TCP) and compare what it wrote. Each worker's sink partition
keeps its outputs and writes them on close as one msgpack file per (step, worker,
process), so the comparison sees every output of every worker, whichever one made it.

Inputs are files, so a cluster's processes all read the same data: normalize reads the
recorded sample files (``RecordedSource``, one partition per file); orders and features
read msgpack lists of :class:`~schemas.transport.Message` (one partition per file).

Run a cluster process: ``python -m tests.scaleout.driver FLOW INPUT_DIR OUT_DIR
--process-id I --addresses 'host:port;host:port'``. Orders run with the bundled risk
limits loaded once (no file watcher), so nothing depends on when a file is stat'ed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.transport import Message

FLOWS = ("normalize", "orders", "features")
_messages = msgspec.msgpack.Decoder(list[Message])


def write_messages(path: Path, msgs: Sequence[Message]) -> None:
    path.write_bytes(msgspec.msgpack.encode(list(msgs)))


class _FilePartition(StatefulSourcePartition[Message, int]):
    def __init__(self, msgs: list[Message], start: int, batch: int) -> None:
        self._msgs = msgs
        self._pos = start
        self._batch = batch

    def next_batch(self) -> list[Message]:
        if self._pos >= len(self._msgs):
            raise StopIteration
        out = self._msgs[self._pos : self._pos + self._batch]
        self._pos += len(out)
        return out

    def snapshot(self) -> int:
        return self._pos


class MessageFiles(FixedPartitionedSource[Message, int]):
    """One partition per msgpack file of Messages, read in file order."""

    def __init__(self, paths: Sequence[Path], batch_size: int = 200) -> None:
        self._paths = [str(p) for p in paths]
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return self._paths

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        msgs = _messages.decode(Path(for_part).read_bytes())
        return _FilePartition(msgs, resume_state or 0, self._batch)


class _Collect(StatelessSinkPartition[Any]):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._items: list[bytes] = []
        self._enc = msgspec.msgpack.Encoder()

    def write_batch(self, items: list[Any]) -> None:
        enc = self._enc.encode
        self._items.extend(enc(i) for i in items)

    def close(self) -> None:
        self._path.write_bytes(msgspec.msgpack.encode(self._items))


class FileSink(DynamicSink[Any]):
    """Every output encoded (msgpack) and written per worker on close."""

    def __init__(self, out_dir: Path, name: str) -> None:
        self._dir = out_dir
        self._name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Collect:
        return _Collect(self._dir / f"{self._name}-{step_id}-w{worker_index}-p{os.getpid()}.bin")


def read_outputs(out_dir: Path) -> list[bytes]:
    """Every encoded output any worker wrote, in no particular order."""
    items: list[bytes] = []
    for path in sorted(out_dir.glob("*.bin")):
        items.extend(msgspec.msgpack.decode(path.read_bytes(), type=list[bytes]))
    return items


def build(flow: str, input_dir: Path, out_dir: Path) -> Dataflow:
    if flow == "normalize":
        from flows.normalize import build_flow as build_normalize
        from sources.recorded import RecordedSource

        files = sorted(input_dir.glob("*.gz"))
        return build_normalize(RecordedSource(files), FileSink(out_dir, "normalize"))
    if flow == "orders":
        from flows.orders import build_flow as build_orders
        from operators.risk_config import load_limits

        limits = load_limits()
        source = MessageFiles(sorted(input_dir.glob("*.msgpack")))
        return build_orders(source, FileSink(out_dir, "orders"), limits=limits)
    if flow == "features":
        from flows.features import FeatureOutputs
        from flows.features import build_flow as build_features

        sink = FileSink(out_dir, "features")
        outputs = FeatureOutputs(bars=sink, late=sink, dead_letters=sink, accounts=sink)
        return build_features(MessageFiles(sorted(input_dir.glob("*.msgpack"))), outputs)
    raise ValueError(f"scaleout driver: unknown flow {flow!r}; hint: one of {FLOWS}")


def main(argv: Sequence[str] | None = None) -> None:
    from bytewax.testing import cluster_main

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("flow", choices=FLOWS)
    p.add_argument("input_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--process-id", type=int, required=True)
    p.add_argument("--addresses", required=True)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    flow = build(args.flow, args.input_dir, args.out_dir)
    cluster_main(
        flow,
        args.addresses.split(";"),
        args.process_id,
        worker_count_per_proc=args.workers,
    )


if __name__ == "__main__":
    main()
