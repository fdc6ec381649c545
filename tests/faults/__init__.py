"""Fault tests, and the helpers they share with the kill -9 recovery test.

Helpers talk to a real nats-server (the ``own_nats_server`` fixture) with plain nats-py,
so what they read back is what the server stored, not what our code believes it sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import nats
from nats.js import api
from nats.js.errors import NotFoundError

from schemas.transport import MSG_ID_HEADER, RECV_NS_HEADER, Message
from sources.recorded import iter_recorded

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "binance" / "spot_ethusdt_20240808.gz"


def recorded_messages(path: Path = SAMPLE) -> list[tuple[str, Message]]:
    """(msg id, message) for every line of a recording, in file order."""
    return [
        (f"{path.name}:{line.line_no}", Message(line.subject, line.data, line.ts_recv))
        for line in iter_recorded(path)
    ]


def add_streams(url: str, streams: dict[str, list[str]], **config: object) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for name, subjects in streams.items():
            await js.add_stream(api.StreamConfig(name=name, subjects=subjects, **config))  # type: ignore[arg-type]
        await nc.close()

    asyncio.run(go())


def js_publish(url: str, items: Iterable[tuple[str, Message]]) -> int:
    """Publish to JetStream with msg ids and the receive-time header; all acks awaited."""

    async def go() -> int:
        nc = await nats.connect(url)
        js = nc.jetstream(publish_async_max_pending=4000)
        futures = []
        for msg_id, m in items:
            headers = {MSG_ID_HEADER: msg_id, RECV_NS_HEADER: str(m.ts_recv)}
            futures.append(await js.publish_async(m.subject, m.data, headers=headers))
        acks = await asyncio.gather(*futures)
        await nc.close()
        return sum(1 for a in acks if not a.duplicate)

    return asyncio.run(go())


def stream_count(url: str, stream: str) -> int:
    """Messages stored in a stream (0 while it does not exist yet)."""

    async def go() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages)
        except NotFoundError:
            return 0
        finally:
            await nc.close()

    return asyncio.run(go())


def read_stream(url: str, stream: str, timeout_s: float = 30.0) -> list[tuple[str, bytes]]:
    """Every message a stream holds, as (subject, data), in stream order."""

    async def go() -> list[tuple[str, bytes]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        total = int((await js.stream_info(stream)).state.messages)
        out: list[tuple[str, bytes]] = []
        done = asyncio.Event()

        async def cb(msg: object) -> None:
            out.append((msg.subject, msg.data))  # type: ignore[attr-defined]
            if len(out) >= total:
                done.set()

        if total:
            sub = await js.subscribe(
                ">", stream=stream, cb=cb, ordered_consumer=True, pending_msgs_limit=-1
            )
            await asyncio.wait_for(done.wait(), timeout_s)
            await sub.unsubscribe()
        await nc.close()
        return out

    return asyncio.run(go())


class Runner:
    """A flow in a child process (``python -m flows.pipeline ...``) we can kill -9."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.args = [sys.executable, "-m", "flows.pipeline", *args]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "ab") as f:
            f.write(f"--- start {time.monotonic():.3f}\n".encode())
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.running():
            self.kill9()

    def wait_until(self, pred: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        """Poll ``pred``; fail with the flow's log tail if the flow exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while not pred():
            if not self.running():
                raise AssertionError(
                    f"flow exited before {what}; log:\n{self.log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {what}; log:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.02)
