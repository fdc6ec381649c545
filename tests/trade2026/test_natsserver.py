"""The local nats-server launcher used by tests and the demo."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from trade2026.natsserver import (
    LocalNatsServer,
    NatsServerError,
    ensure_nats,
    find_nats_server,
    nats_answers,
)


def test_start_answers_and_stop_frees_the_port_and_store() -> None:
    server = LocalNatsServer().start()
    url, store = server.url, server.store_dir
    assert store is not None and store.is_dir()
    assert nats_answers(url)
    server.stop()
    assert not nats_answers(url)
    assert not store.exists()


def test_restart_keeps_port_and_jetstream_data(
    nats_server_factory: Callable[..., LocalNatsServer],
) -> None:
    server = nats_server_factory()
    url = server.url

    async def put() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep"])
        await js.publish("keep", b"still here")
        await nc.close()

    async def get() -> bytes:
        nc = await nats.connect(url)
        msg = await nc.jetstream().get_msg("KEEP", 1)
        await nc.close()
        return msg.data or b""

    asyncio.run(put())
    old_pid = server.pid
    server.restart(kill=True)
    assert server.url == url and server.pid != old_pid
    assert asyncio.run(get()) == b"still here"


def test_extra_args_reach_the_server(nats_server_factory: Callable[..., LocalNatsServer]) -> None:
    server = nats_server_factory(extra_args=["--auth", "s3cret"])
    host_port = server.url.removeprefix("nats://")

    async def connect(url: str) -> None:
        async def quiet(exc: Exception) -> None:
            pass

        nc = await asyncio.wait_for(
            nats.connect(url, connect_timeout=1, allow_reconnect=False, error_cb=quiet), 5
        )
        await nc.close()

    with pytest.raises(Exception, match=r"(?i)authorization"):
        asyncio.run(connect(server.url))
    asyncio.run(connect(f"nats://s3cret@{host_port}"))


def test_ensure_nats_reuses_a_running_server(nats_server: LocalNatsServer) -> None:
    url, started = ensure_nats(nats_server.url)
    assert (url, started) == (nats_server.url, None)


def test_ensure_nats_starts_one_when_nothing_answers() -> None:
    free = LocalNatsServer().start()
    dead_url = free.url
    free.stop()
    url, started = ensure_nats(dead_url)
    try:
        assert started is not None
        assert url == dead_url  # took the port it was asked for
        assert nats_answers(url)
    finally:
        if started is not None:
            started.stop()


def test_missing_binary_error_has_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(NatsServerError, match=r"find nats-server.*hint"):
        find_nats_server()


def test_bad_args_fail_fast_with_the_log() -> None:
    with pytest.raises(NatsServerError, match=r"(?s)exited.*hint"):
        LocalNatsServer(extra_args=["--no-such-flag"]).start()


def test_binary_is_the_venv_one_when_present() -> None:
    venv_bin = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.path.exists(venv_bin):
        assert find_nats_server() == venv_bin
    else:
        assert os.path.basename(find_nats_server()) == "nats-server"
