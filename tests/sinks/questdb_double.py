"""A failure-injection double of QuestDB's HTTP endpoints, for the writer's tests.

Not the product, and not a database: it answers ``/settings`` (so the client can
negotiate the ILP protocol version), ``/ping``, ``/exec`` (records DDL) and
``/write`` (parses and records the ILP rows it accepts), and it can be told to
fail: a 5xx or 4xx status for the next N writes or until further notice, slow
responses, rejecting rows that match a predicate (400, nothing of the request
kept, as QuestDB does), or a full stop (listener and live keep-alive connections
closed, so clients see connection refused) followed by a restart on the same port.

Rows are parsed with an ILP parser written here from the protocol description
(text fields, and the binary DOUBLE and DECIMAL forms of protocol v2/v3), so tests
compare what arrived against hand-written expectations, not against the writer's
own encoder.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class IlpRow:
    table: str
    symbols: dict[str, str]
    fields: dict[str, Any]
    ts: int | None


def _unescape_until(data: bytes, pos: int, stops: bytes) -> tuple[str, int]:
    out = bytearray()
    while pos < len(data) and data[pos] not in stops:
        if data[pos] == 0x5C and pos + 1 < len(data):  # backslash escape
            out.append(data[pos + 1])
            pos += 2
            continue
        out.append(data[pos])
        pos += 1
    return out.decode(), pos


def parse_ilp(data: bytes) -> list[IlpRow]:
    """Parse an ILP request body (text protocol with v2/v3 binary fields) into rows."""
    rows: list[IlpRow] = []
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0x0A:
            pos += 1
            continue
        table, pos = _unescape_until(data, pos, b", \n")
        symbols: dict[str, str] = {}
        while pos < n and data[pos] == 0x2C:  # ','
            name, pos = _unescape_until(data, pos + 1, b"=")
            value, pos = _unescape_until(data, pos + 1, b", \n")
            symbols[name] = value
        fields: dict[str, Any] = {}
        if pos < n and data[pos] == 0x20:
            pos += 1
            first = True
            while pos < n and data[pos] not in b" \n":
                if not first:
                    assert data[pos] == 0x2C, f"expected ',' at {pos}: {data[pos : pos + 20]!r}"
                    pos += 1
                first = False
                name, pos = _unescape_until(data, pos, b"=")
                pos += 1
                if data[pos] == 0x3D:  # '=' -> binary value
                    kind = data[pos + 1]
                    pos += 2
                    if kind == 16:  # DOUBLE
                        fields[name] = struct.unpack_from("<d", data, pos)[0]
                        pos += 8
                    elif kind == 23:  # DECIMAL: scale, length, big-endian two's complement
                        scale, length = data[pos], data[pos + 1]
                        raw = data[pos + 2 : pos + 2 + length]
                        unscaled = int.from_bytes(raw, "big", signed=True)
                        fields[name] = Decimal(unscaled).scaleb(-scale)
                        pos += 2 + length
                    else:
                        raise ValueError(f"ILP binary type {kind} not understood by the double")
                elif data[pos] == 0x22:  # quoted string
                    value_b = bytearray()
                    pos += 1
                    while data[pos] != 0x22:
                        if data[pos] == 0x5C:
                            pos += 1
                        value_b.append(data[pos])
                        pos += 1
                    pos += 1
                    fields[name] = value_b.decode()
                else:
                    tok, pos = _unescape_until(data, pos, b", \n")
                    if tok in ("t", "T", "true"):
                        fields[name] = True
                    elif tok in ("f", "F", "false"):
                        fields[name] = False
                    elif tok.endswith("i"):
                        fields[name] = int(tok[:-1])
                    elif tok.endswith(("n", "t")) and tok[:-1].isdigit():
                        fields[name] = ("timestamp", tok)
                    else:
                        fields[name] = float(tok)
        ts: int | None = None
        if pos < n and data[pos] == 0x20:
            tok, pos = _unescape_until(data, pos + 1, b"\n")
            ts = int(tok.rstrip("n"))
        rows.append(IlpRow(table, symbols, fields, ts))
        if pos < n and data[pos] == 0x0A:
            pos += 1
    return rows


@dataclass
class _Faults:
    fail_next: list[int] = field(default_factory=list)  # statuses for the next writes
    fail_always: int | None = None
    delay_s: float = 0.0
    reject: Callable[[IlpRow], bool] | None = None


class QuestDBDouble:
    """Start with ``with QuestDBDouble() as qdb:``; ``qdb.conf`` is a client conf string."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self.faults = _Faults()
        self.rows: list[IlpRow] = []
        self.bodies: list[bytes] = []
        self.ddl: list[str] = []
        self.write_attempts = 0
        self.write_statuses: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()

    # -- control ---------------------------------------------------------------------------
    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def conf(self) -> str:
        return f"http::addr={self.addr};"

    def fail_next(self, count: int, status: int = 500) -> None:
        with self._lock:
            self.faults.fail_next.extend([status] * count)

    def fail_always(self, status: int | None) -> None:
        with self._lock:
            self.faults.fail_always = status

    def slow(self, delay_s: float) -> None:
        with self._lock:
            self.faults.delay_s = delay_s

    def reject_rows(self, predicate: Callable[[IlpRow], bool] | None) -> None:
        with self._lock:
            self.faults.reject = predicate

    def accepted(self) -> list[IlpRow]:
        with self._lock:
            return list(self.rows)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> QuestDBDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with double._lock:
                    double._conns.add(self.connection)

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    with double._lock:
                        double._conns.discard(self.connection)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(
                self, status: int, body: bytes = b"", ctype: str = "application/json"
            ) -> None:
                self.send_response(status)
                if body:
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/settings":
                    body = {
                        "config": {
                            "line.proto.support.versions": [1, 2, 3],
                            "cairo.max.file.name.length": 127,
                        },
                        "preferences.version": 0,
                        "preferences": {},
                    }
                    self._reply(200, json.dumps(body).encode())
                elif url.path == "/ping":
                    self._reply(204)
                elif url.path == "/exec":
                    query = parse_qs(url.query).get("query", [""])[0]
                    with double._lock:
                        status = double.faults.fail_always
                    if status is not None:
                        self._reply(status, json.dumps({"error": "injected"}).encode())
                        return
                    with double._lock:
                        double.ddl.append(query)
                    self._reply(200, json.dumps({"ddl": "OK"}).encode())
                else:
                    self._reply(404, b'{"error":"not found"}')

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if url.path != "/write":
                    self._reply(404, b'{"error":"not found"}')
                    return
                with double._lock:
                    double.write_attempts += 1
                    faults = double.faults
                    status = faults.fail_next.pop(0) if faults.fail_next else faults.fail_always
                    delay = faults.delay_s
                    reject = faults.reject
                if status is not None:
                    err = {
                        "code": "internal error" if status >= 500 else "invalid",
                        "message": f"injected failure {status}",
                        "line": 0,
                        "errorId": f"double-{double.write_attempts}",
                    }
                    with double._lock:
                        double.write_statuses.append(status)
                    self._reply(status, json.dumps(err).encode())
                    return
                rows = parse_ilp(body)
                if reject is not None:
                    for i, row in enumerate(rows):
                        if reject(row):
                            err = {
                                "code": "invalid",
                                "message": f"cast error for line {i + 1}: injected rejection",
                                "line": i + 1,
                                "errorId": f"double-{double.write_attempts}",
                            }
                            with double._lock:
                                double.write_statuses.append(400)
                            self._reply(400, json.dumps(err).encode())
                            return
                with double._lock:
                    double.rows.extend(rows)
                    double.bodies.append(body)
                    double.write_statuses.append(204)
                if delay:
                    # Accepted, but the answer comes late: the client sees a timeout and
                    # the rows are "in doubt", as with a real slow server.
                    time.sleep(delay)
                with contextlib.suppress(OSError):
                    self._reply(204)

        server = ThreadingHTTPServer((self.host, self.port), Handler, bind_and_activate=False)
        server.allow_reuse_address = True
        server.daemon_threads = True
        server.server_bind()
        server.server_activate()
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True, name="qdb-double")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every live connection: clients now get connection refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        if self._thread is not None:
            self._thread.join(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> QuestDBDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
