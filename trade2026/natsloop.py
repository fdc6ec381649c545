"""One asyncio loop in a daemon thread, so synchronous code can drive nats-py.

Bytewax calls sources and sinks from its worker threads and expects them never to
block for long, while nats-py is asyncio only. Every NATS connection of a process
lives on one shared loop thread: sources hand messages to their partitions through
thread-safe queues, and sinks and other sync code call :meth:`NatsLoop.run`, which
blocks only the caller until the coroutine finishes.

One shared loop (rather than one per partition) keeps the thread count flat when a
worker owns many partitions; all of them share the GIL anyway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from nats.aio.client import Client

from trade2026.natsconf import NatsConfig

__all__ = ["NatsLoop", "connect"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class NatsLoop:
    """A running event loop on a daemon thread.

    ``NatsLoop.acquire()`` hands out the process-wide shared loop and counts users;
    ``release()`` stops it when the last user is gone. A private loop can be made with
    ``NatsLoop().start()`` and must be stopped with ``stop()``.
    """

    _shared: ClassVar[NatsLoop | None] = None
    _users: ClassVar[int] = 0
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "t26-nats-loop") -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()

    # -- shared instance -------------------------------------------------------------------
    @classmethod
    def acquire(cls) -> NatsLoop:
        with cls._lock:
            if cls._shared is None or not cls._shared.alive:
                cls._shared = NatsLoop().start()
                cls._users = 0
            cls._users += 1
            return cls._shared

    @classmethod
    def release(cls, loop: NatsLoop) -> None:
        with cls._lock:
            if loop is not cls._shared:
                loop.stop()
                return
            cls._users -= 1
            if cls._users <= 0:
                cls._shared = None
                cls._users = 0
                loop.stop()

    # -- lifecycle -------------------------------------------------------------------------
    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                self.loop.close()

    def start(self) -> NatsLoop:
        self._thread.start()
        self._started.wait(5.0)
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def stop(self, timeout_s: float = 5.0) -> None:
        if not self.alive:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # -- calling in ------------------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; the returned future is safe to wait on."""
        if not self.alive:
            coro.close()
            raise RuntimeError(
                f"nats loop {self.name}: not running; hint: the connector was closed already"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the loop and block the calling thread for its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                f"nats loop {self.name}: run() called from the loop thread would deadlock; "
                "hint: await the coroutine instead"
            )
        fut = self.submit(coro)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(
                f"nats loop {self.name}: no result after {timeout_s}s; "
                "hint: is the NATS server reachable?"
            ) from None

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a plain callable on the loop thread, without waiting."""
        self.loop.call_soon_threadsafe(fn, *args)

    def connect(self, config: NatsConfig, **callbacks: Any) -> Client:
        """Connect on this loop and return the client (blocking the caller)."""
        return self.run(connect(config, **callbacks))


async def connect(
    config: NatsConfig,
    *,
    step: str = "nats connect",
    error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
    **extra: Any,
) -> Client:
    """``nats.connect`` with the project's config and an error that names the step.

    nats-py's default error callback logs at ERROR with a traceback on every failed
    reconnect attempt; ours logs one line at WARNING, because a restarting server is
    expected operation, not a bug.
    """

    async def _log_error(exc: Exception) -> None:
        log.warning("%s: %s: %s", step, type(exc).__name__, exc)

    connected = False

    async def _on_error(exc: Exception) -> None:
        # nats-py applies max_reconnect_attempts=-1 to the first connect too, so a wrong
        # password or an untrusted certificate would be retried forever. Raising from the
        # error callback during that first connect stops its retry loop.
        if not connected and _is_auth_failure(exc):
            raise exc
        await (error_cb or _log_error)(exc)

    kw = config.connect_kwargs()
    kw.update(extra)
    nc = Client()
    try:
        await nc.connect(
            error_cb=_on_error,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            **kw,
        )
    except Exception as exc:
        # A half-open TLS transport can make close() wait forever: bound it.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=1.0)
        if _is_auth_failure(exc):
            raise ConnectionError(
                f"{step}: NATS at {list(config.servers)} refused us ({type(exc).__name__}: "
                f"{exc}); hint: check NATS_USER/NATS_PASSWORD, NATS_TOKEN, NATS_CREDS, "
                "NATS_NKEY_SEED or NATS_TLS_CA"
            ) from exc
        raise ConnectionError(
            f"{step}: cannot reach NATS at {list(config.servers)} ({type(exc).__name__}: {exc}); "
            "hint: start one with `nats-server -js` or set NATS_URL"
        ) from exc
    connected = True
    return nc


def _is_auth_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, ssl.SSLError) or "authorization" in text or "authentication" in text
