"""Disk full on the Delta path: a clear error, and nothing acknowledged that was not written.

The Delta root sits on a real size-limited filesystem (a 1 MiB tmpfs; the sample's tick
tables need about 2.5 MB), the input is a real JetStream stream and the flow runs with
Bytewax recovery. When the disk fills, the sink's commit fails and the flow stops with a
:class:`~sinks.delta.DeltaSinkError` that says what to do. "No acknowledgement" is then
shown end to end: after the disk is enlarged, the same flow resumes from its recovery
snapshot, and the tables end up with every tick exactly once. Had the snapshot moved the
stream position past rows that never reached the table, they would be missing now.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.normalize import build_flow as build_normalize
from flows.pipeline import build_ticks_sink_jetstream
from schemas.transport import Message, Outgoing
from sinks.delta import KINDS, DeltaSinkError, table_uri
from tests.faults import add_streams, js_publish, recorded_messages
from trade2026.accounting import Accounting
from trade2026.flowregistry import RunContext
from trade2026.natsconf import NatsConfig
from trade2026.natsserver import LocalNatsServer
from trade2026.recovery import RecoverySettings, run_kwargs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(
            f"cannot mount a size-limited tmpfs here ({res.stderr.strip() or res.returncode}); "
            "the disk-full test needs root or CAP_SYS_ADMIN"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(seen) < 20:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _identities(root: Path) -> Counter[tuple[str, int]]:
    from deltalake import DeltaTable

    ids: Counter[tuple[str, int]] = Counter()
    for kind in KINDS:
        t = DeltaTable(table_uri(str(root), kind)).to_pyarrow_table(columns=["origin", "seq"])
        ids.update(zip(t.column("origin").to_pylist(), t.column("seq").to_pylist(), strict=True))
    return ids


def test_full_disk_stops_the_flow_clearly_and_loses_nothing_after_space_is_freed(
    own_nats_server: LocalNatsServer, small_disk: Path, tmp_path: Path
) -> None:
    url = own_nats_server.url
    out: list[Outgoing] = []
    run_main(build_normalize(TestingSource([m for _, m in recorded_messages()]), TestingSink(out)))
    ticks = [o for o in out if o.subject.startswith("md.ticks.")]
    add_streams(url, {"MD": ["md.ticks.>"], "DLQ": ["dlq.>"]})
    assert js_publish(url, [(f"t{i}", Message(o.subject, o.data, 0)) for i, o in enumerate(ticks)])
    root = small_disk / "delta"
    settings = RecoverySettings(tmp_path / "rec", epoch_interval=timedelta(milliseconds=200))
    ctx = RunContext(nats=NatsConfig(servers=(url,)), accounting=Accounting(), idle_timeout_s=2.0)

    flow, _ = build_ticks_sink_jetstream(ctx, str(root))
    with pytest.raises(Exception) as info:  # Bytewax wraps the sink's error
        run_main(flow, **run_kwargs(settings))
    ours = [e for e in _chain(info.value) if isinstance(e, DeltaSinkError)]
    assert ours, f"no DeltaSinkError in {_chain(info.value)!r}"
    text = str(ours[0])
    assert "No space left on device" in text or "os error 28" in text
    assert "hint: free disk space" in text and str(root) in text
    written_before = sum(_identities(root).values())
    assert 0 < written_before < len(ticks)

    # Free space (enlarge the filesystem) and restart on the same recovery directory.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    ctx2 = RunContext(nats=NatsConfig(servers=(url,)), accounting=Accounting(), idle_timeout_s=2.0)
    flow2, _ = build_ticks_sink_jetstream(ctx2, str(root))
    run_main(flow2, **run_kwargs(settings))

    ids = _identities(root)
    assert sum(ids.values()) == len(ticks), "rows missing or written twice"
    assert set(ids.values()) == {1}
    assert {seq for _, seq in ids} == set(range(1, len(ticks) + 1))
