"""The QuestDB writer: order-path records to QuestDB over ILP/HTTP, losing and duplicating nothing.

What the official client (6.0) does not do for us, measured against QuestDB 9.0.4:
a failed ``flush()`` of the sender's *internal* buffer clears it (rows lost), and a
refused connection is not retried. So this writer builds its own ``Buffer`` per
batch and flushes it with ``clear=False``: a ``Buffer`` passed explicitly survives a
failed flush byte for byte, and is re-sent as is until the server takes it. The
client's own retry loop is switched off (``retry_timeout=0``) because it sleeps on
the wall clock; retries here use an injected clock, sleep and random source:
exponential backoff with jitter, never blocking a ``write`` (only :meth:`drain`
and :meth:`close` sleep).

While QuestDB is down rows wait in memory; after ``spill_after_ms`` of outage (or
when memory holds ``max_memory_rows``) they move, in order, to a bounded on-disk
:class:`~sinks.spill.SpillBuffer`. Once the server answers, the spill is replayed
oldest first, then memory. When memory and spill are both full, ``write`` raises
:class:`BacklogFullError` and accepts nothing: backpressure, never a silent drop.

A server *rejection* (HTTP 400: a row does not fit its table) is not retried as is:
the batch is bisected until the offending rows are isolated, and those become
``DeadLetter`` records (reason ``QUESTDB_REJECTED`` and the server's message).
Records that cannot become a row at all (a price with more than 18 decimals) are
dead-lettered before sending. Re-sending halves of a batch, replaying the spill
after a crash, and answers lost to timeouts can all deliver a row twice; every
table has ``DEDUP UPSERT KEYS``, so that is idempotent.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random as _random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import msgspec
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from schemas.canonical import DeadLetter
from sinks.questdb_tables import MoneyEncoding, RowError, TableRegistry, TableSpec
from sinks.questdb_tables import default_registry as _default_registry
from sinks.spill import SpillBuffer, SpillConfig, SpillFullError

__all__ = [
    "STAGE",
    "Backlog",
    "BacklogFullError",
    "QuestDBConfig",
    "QuestDBError",
    "QuestDBSink",
    "QuestDBWriter",
    "RecordWriter",
    "RetryConfig",
    "build_conf",
]

log = logging.getLogger(__name__)

#: The stage name used for dead letters and accounting.
STAGE = "sink.questdb"
DEFAULT_ADDR = "127.0.0.1:9000"


# -- the writer protocol shared with the Delta fallback -------------------------------------
class Backlog(msgspec.Struct, frozen=True):
    """What a writer holds that is not yet durable in its store."""

    memory_rows: int = 0
    spill_rows: int = 0
    spill_bytes: int = 0
    dead_lettered: int = 0
    #: When the current outage began (ns, injected clock), or None while healthy.
    down_since_ns: int | None = None
    last_error: str | None = None

    @property
    def pending_rows(self) -> int:
        return self.memory_rows + self.spill_rows


@runtime_checkable
class RecordWriter(Protocol):
    """A store the order path writes records to: QuestDB, or local Delta tables by default."""

    def write(self, records: Sequence[Any]) -> None: ...

    def flush(self) -> bool:
        """Push what is buffered; True when nothing is left pending."""
        ...

    def close(self) -> None: ...

    def backlog(self) -> Backlog: ...


# -- config ----------------------------------------------------------------------------------
class RetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    initial_ms: int = 100
    max_ms: int = 30_000
    multiplier: float = 2.0
    #: Each delay is scaled by a uniform factor in [1 - jitter, 1], so many writers
    #: restarting together do not retry in lockstep.
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial_ms <= 0 or self.max_ms < self.initial_ms or self.multiplier < 1:
            raise ValueError("retry config: need 0 < initial_ms <= max_ms and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("retry config: jitter must be in [0, 1)")

    def delay_ns(self, failures: int, rand: float) -> int:
        """Delay before the next attempt after ``failures`` consecutive failures (>= 1)."""
        base_ms = min(self.max_ms, self.initial_ms * self.multiplier ** (failures - 1))
        return int(base_ms * (1.0 - self.jitter * rand) * 1_000_000)


class QuestDBConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The QuestDB sink. ``url`` is ``host:port``, ``http://host:port`` or a client
    conf string (``http::addr=host:port;username=...;``)."""

    url: str = DEFAULT_ADDR
    #: ``decimal`` needs QuestDB >= 9.2 (ILP v3); ``string`` works from 7.3.10 on.
    money: MoneyEncoding = "decimal"
    batch_rows: int = 5_000
    batch_interval_ms: int = 1_000
    max_memory_rows: int = 100_000
    spill_after_ms: int = 30_000
    spill: SpillConfig = SpillConfig()
    retry: RetryConfig = RetryConfig()
    request_timeout_ms: int = 10_000
    create_tables: bool = True
    close_timeout_ms: int = 10_000
    #: Label on the metrics, to tell several writers apart.
    name: str = "questdb"

    def __post_init__(self) -> None:
        if self.batch_rows <= 0 or self.max_memory_rows < self.batch_rows:
            raise ValueError("questdb config: need 0 < batch_rows <= max_memory_rows")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> QuestDBConfig:
        """``QUESTDB_URL`` (and ``QUESTDB_SPILL_DIR``) from the environment."""
        env = os.environ if env is None else env
        kwargs: dict[str, Any] = {}
        if env.get("QUESTDB_URL"):
            kwargs["url"] = env["QUESTDB_URL"]
        if env.get("QUESTDB_SPILL_DIR"):
            kwargs["spill"] = SpillConfig(directory=env["QUESTDB_SPILL_DIR"])
        kwargs.update(overrides)
        return cls(**kwargs)

    def __repr__(self) -> str:  # the conf string may carry a password
        return f"QuestDBConfig(addr={_parse_url(self.url)[1].get('addr')!r}, name={self.name!r})"


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    """``(scheme, {key: value})`` from a conf string or a plain URL."""
    if "::" in url:
        scheme, _, rest = url.partition("::")
        params = dict(kv.split("=", 1) for kv in rest.split(";") if kv.strip())
        return scheme, params
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    params = {"addr": f"{parts.hostname or '127.0.0.1'}:{parts.port or 9000}"}
    if parts.username:
        params["username"] = urllib.parse.unquote(parts.username)
        params["password"] = urllib.parse.unquote(parts.password or "")
    return parts.scheme or "http", params


def build_conf(config: QuestDBConfig) -> str:
    """The client conf string: ILP over HTTP, explicit flushes, no client-side retries."""
    scheme, params = _parse_url(config.url)
    if scheme not in ("http", "https"):
        raise ValueError(
            f"questdb config: {scheme!r} transport unsupported; hint: use http:: (ILP over HTTP)"
        )
    params.update(
        {
            "auto_flush": "off",
            "retry_timeout": "0",
            "request_timeout": str(config.request_timeout_ms),
            "protocol_version": "3" if config.money == "decimal" else "1",
        }
    )
    return f"{scheme}::" + "".join(f"{k}={v};" for k, v in params.items())


# -- errors ----------------------------------------------------------------------------------
class QuestDBError(RuntimeError):
    """A QuestDB step failed (DDL, or a flush that could not be recovered)."""


class BacklogFullError(QuestDBError):
    """Memory and spill are both full: the writer refuses more rows rather than drop any."""


# -- metrics ---------------------------------------------------------------------------------
class _Metrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        labels = ["sink"]
        self.memory_rows = Gauge(
            "trade2026_questdb_backlog_rows", "Rows held in memory, not yet in QuestDB.", labels,
            registry=registry,
        )  # fmt: skip
        self.spill_rows = Gauge(
            "trade2026_questdb_spill_rows", "Rows spilled to disk, not yet in QuestDB.", labels,
            registry=registry,
        )  # fmt: skip
        self.spill_bytes = Gauge(
            "trade2026_questdb_spill_bytes", "Bytes of spill segment files on disk.", labels,
            registry=registry,
        )  # fmt: skip
        self.down = Gauge(
            "trade2026_questdb_down", "1 while the writer cannot reach QuestDB.", labels,
            registry=registry,
        )  # fmt: skip
        self.rows_written = Counter(
            "trade2026_questdb_rows_written", "Rows QuestDB accepted.", labels, registry=registry
        )
        self.flush_failures = Counter(
            "trade2026_questdb_flush_failures", "Failed flush attempts.", labels, registry=registry
        )
        self.dead_lettered = Counter(
            "trade2026_questdb_dead_lettered", "Rows refused and dead-lettered.", labels,
            registry=registry,
        )  # fmt: skip


_METRICS: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: Any) -> _Metrics:
    m = _METRICS.get(registry)
    if m is None:
        m = _METRICS[registry] = _Metrics(registry)
    return m


# -- the writer ------------------------------------------------------------------------------
_CODE_RE = re.compile(r"code: ([^,\]]+)")
#: QuestDB's error codes for a request it refuses as invalid (HTTP 4xx): not transient.
_REJECTION_CODES = frozenset({"invalid", "request too large"})


class _Rejected(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Transient(Exception):
    pass


@dataclass
class _Chunk:
    items: list[tuple[TableSpec, Any]]
    buffer: Any = None


@dataclass
class _Batch:
    from_spill: bool
    size: int
    chunks: list[_Chunk] = field(default_factory=list)


_FRAME = msgspec.msgpack.Decoder(tuple[str, msgspec.Raw])
_ENC = msgspec.msgpack.Encoder()


class QuestDBWriter:
    """Batches records into QuestDB tables; see the module docstring for the guarantees.

    ``clock`` returns integer ns; ``sleep`` takes seconds; ``rand`` returns [0, 1).
    ``on_dead_letter`` receives refused rows (e.g. to publish on ``dlq.sink.questdb``);
    without it they are kept in :attr:`dead_letters` and logged. ``registry`` is a
    prometheus ``CollectorRegistry`` to report backlog gauges on (None: no metrics).
    """

    def __init__(
        self,
        config: QuestDBConfig | None = None,
        *,
        tables: TableRegistry | None = None,
        clock: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = _random.random,
        registry: Any = None,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
    ) -> None:
        self.config = config or QuestDBConfig()
        self.tables = tables or _default_registry()
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._on_dead_letter = on_dead_letter
        self.dead_letters: list[DeadLetter] = []
        self._conf = build_conf(self.config)
        self._spill = SpillBuffer(self.config.spill)
        self._mem: list[tuple[TableSpec, Any]] = []
        self._batch: _Batch | None = None
        self._sender: Any = None
        self._failures = 0
        self._down_since: int | None = None
        self._next_attempt_ns = 0
        self._last_flush_ns = clock()
        self._last_error: str | None = None
        self._dead_count = 0
        self._tables_ready = not self.config.create_tables
        self._closed = False
        self._metrics = _metrics_for(registry) if registry is not None else None
        self._label = self.config.name
        if self._spill.rows:
            log.warning(
                "%s: %d rows (%d bytes) left in the spill at %s by an earlier run; "
                "they are replayed first",
                STAGE, self._spill.rows, self._spill.size_bytes, self._spill.dir,
            )  # fmt: skip
        self._report()

    # -- public API ------------------------------------------------------------------------
    def write(self, records: Iterable[Any]) -> None:
        """Accept records (in order) and send full batches; never blocks on an outage."""
        if self._closed:
            raise QuestDBError(f"{STAGE} write: writer is closed; hint: make a new writer")
        incoming: list[tuple[TableSpec, Any]] = []
        for rec in records:
            try:
                incoming.append((self.tables.for_record(rec), rec))
            except RowError as exc:
                self._dead_letter(rec, exc.reason, exc.detail)
        if not incoming:
            self._report()
            return
        if len(self._mem) + len(incoming) > self.config.max_memory_rows:
            self._pump(force=False)
            self._maybe_spill(self._clock(), pressure=True)
            if len(self._mem) + len(incoming) > self.config.max_memory_rows:
                self._report()
                raise BacklogFullError(
                    f"{STAGE} write: backlog full, {len(incoming)} rows refused: "
                    f"{len(self._mem)} rows in memory (max {self.config.max_memory_rows}), "
                    f"spill {self._spill.size_bytes} of {self.config.spill.max_bytes} bytes at "
                    f"{self._spill.dir}; last error: {self._last_error}; hint: bring QuestDB "
                    "back (the backlog then drains) or raise max_memory_rows / spill max_bytes"
                )
        self._mem.extend(incoming)
        self._pump(force=False)

    def flush(self) -> bool:
        """Send everything now unless backing off; True when nothing is pending."""
        return self._pump(force=True)

    def drain(self, timeout_s: float) -> bool:
        """Flush, sleeping through backoff, until empty or ``timeout_s`` passes (injected clock)."""
        deadline = self._clock() + int(timeout_s * 1e9)
        while True:
            if self._pump(force=True):
                return True
            now = self._clock()
            if now >= deadline:
                return False
            wait_ns = min(max(self._next_attempt_ns - now, 0), deadline - now)
            self._sleep(wait_ns / 1e9)

    def backlog(self) -> Backlog:
        in_batch = 0
        if self._batch is not None and not self._batch.from_spill:
            in_batch = sum(len(c.items) for c in self._batch.chunks)
        return Backlog(
            memory_rows=len(self._mem) + in_batch,
            spill_rows=self._spill.rows,
            spill_bytes=self._spill.size_bytes,
            dead_lettered=self._dead_count,
            down_since_ns=self._down_since,
            last_error=self._last_error,
        )

    def close(self) -> None:
        """Drain for ``close_timeout_ms``; whatever is still pending goes to the spill
        (replayed by the next writer on the same directory). Raises if it cannot."""
        if self._closed:
            return
        try:
            if not self.drain(self.config.close_timeout_ms / 1000):
                self._move_memory_to_spill()
                left = self.backlog()
                log.warning(
                    "%s close: QuestDB unreachable (%s); %d rows left in the spill at %s",
                    STAGE, self._last_error, left.spill_rows, self._spill.dir,
                )  # fmt: skip
                if left.memory_rows:
                    raise BacklogFullError(
                        f"{STAGE} close: {left.memory_rows} rows could neither be written nor "
                        f"spilled (spill full at {self._spill.dir}); hint: keep the upstream "
                        "unacknowledged and restart once QuestDB is back"
                    )
        finally:
            self._closed = True
            self._close_sender()
            self._spill.close()
            self._report()

    def create_tables(self) -> None:
        """Run each table's DDL over HTTP ``/exec`` (idempotent: IF NOT EXISTS)."""
        for spec in self.tables.specs():
            self.exec_sql(spec.ddl(self.config.money))
        self._tables_ready = True

    def exec_sql(self, sql: str) -> dict[str, Any]:
        """One statement over ``/exec``; raises :class:`QuestDBError` naming the step."""
        scheme, params = _parse_url(self.config.url)
        url = f"{scheme}://{params['addr']}/exec?" + urllib.parse.urlencode({"query": sql})
        req = urllib.request.Request(url)
        if "username" in params:
            raw = f"{params['username']}:{params.get('password', '')}".encode()
            req.add_header("Authorization", "Basic " + base64.b64encode(raw).decode())
        elif "token" in params:
            req.add_header("Authorization", f"Bearer {params['token']}")
        try:
            with urllib.request.urlopen(req, timeout=self.config.request_timeout_ms / 1000) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise QuestDBError(
                f"{STAGE} DDL at {params['addr']}: HTTP {exc.code}: {detail}; "
                f"statement: {sql[:200]}; hint: check the server version (DECIMAL needs 9.2+, "
                "else set money='string')"
            ) from exc
        except OSError as exc:
            raise _Transient(f"DDL at {params['addr']}: {exc}") from exc
        try:
            result: dict[str, Any] = json.loads(body) if body else {}
        except ValueError:
            result = {}
        return result

    # -- the pump --------------------------------------------------------------------------
    def _pump(self, *, force: bool) -> bool:
        now = self._clock()
        try:
            if now < self._next_attempt_ns:
                self._maybe_spill(now)
                return False
            while True:
                if self._batch is None:
                    if not self._spill and not self._mem:
                        return True
                    if (
                        not force
                        and not self._spill
                        and len(self._mem) < self.config.batch_rows
                        and now - self._last_flush_ns < self.config.batch_interval_ms * 1_000_000
                    ):
                        return False
                    self._batch = self._next_batch()
                    if self._batch is None:
                        continue
                try:
                    self._send_batch(self._batch)
                except _Transient as exc:
                    self._on_failure(now, str(exc))
                    self._maybe_spill(now)
                    return False
                self._on_success(self._batch)
                self._batch = None
                now = self._clock()
        finally:
            self._report()

    def _next_batch(self) -> _Batch | None:
        n = self.config.batch_rows
        items: list[tuple[TableSpec, Any]] = []
        if self._spill:
            frames = self._spill.peek(n)
            for frame in frames:
                table, raw = _FRAME.decode(frame)
                spec = self.tables.by_name(table)
                items.append((spec, msgspec.msgpack.decode(raw, type=spec.record_type)))
            batch = _Batch(from_spill=True, size=len(frames))
        else:
            items, self._mem = self._mem[:n], self._mem[n:]
            batch = _Batch(from_spill=False, size=len(items))
        good: list[tuple[TableSpec, Any]] = []
        for spec, rec in items:
            try:
                spec.split(rec, self.config.money)
            except RowError as exc:
                self._dead_letter(rec, exc.reason, exc.detail)
                continue
            good.append((spec, rec))
        batch.chunks = [_Chunk(good)] if good else []
        if not batch.chunks:
            self._finish(batch)
            return None
        return batch

    def _send_batch(self, batch: _Batch) -> None:
        """Send chunk by chunk; a rejected chunk is split until the bad rows are isolated."""
        if not self._tables_ready:
            self.create_tables()
        while batch.chunks:
            chunk = batch.chunks[0]
            try:
                self._flush_chunk(chunk)
            except _Rejected as exc:
                if len(chunk.items) == 1:
                    spec, rec = chunk.items[0]
                    self._dead_letter(rec, "QUESTDB_REJECTED", f"{spec.name}: {exc.message}")
                    batch.chunks.pop(0)
                else:
                    mid = len(chunk.items) // 2
                    batch.chunks[0:1] = [_Chunk(chunk.items[:mid]), _Chunk(chunk.items[mid:])]
                continue
            batch.chunks.pop(0)
            if self._metrics is not None:
                self._metrics.rows_written.labels(self._label).inc(len(chunk.items))

    def _flush_chunk(self, chunk: _Chunk) -> None:
        from questdb import QuestDBError as ClientError

        sender = self._ensure_sender()
        if chunk.buffer is None:
            buf = sender.new_buffer()
            for spec, rec in chunk.items:
                spec.add_row(buf, rec, self.config.money)
            chunk.buffer = buf
        try:
            # clear=False: an explicit Buffer survives a failed flush, so a retry
            # re-sends exactly the same bytes.
            sender.flush(chunk.buffer, clear=False)
        except ClientError as exc:
            msg = str(exc)
            code = _CODE_RE.search(msg)
            if code and code.group(1).strip() in _REJECTION_CODES:
                raise _Rejected(msg) from exc
            if type(exc).__name__ == "QuestDBServerRejectionError":
                raise _Rejected(msg) from exc
            # The sender reconnects by itself on the next flush; recreating it on every
            # failure would only trip the client's reconnection-burst warning.
            raise _Transient(msg) from exc

    def _ensure_sender(self) -> Any:
        if self._sender is None:
            from questdb import QuestDBError as ClientError
            from questdb import Sender

            try:
                sender = Sender.from_conf(self._conf)
                sender.establish()
            except ClientError as exc:
                raise _Transient(f"connect: {exc}") from exc
            self._sender = sender
        return self._sender

    def _close_sender(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                sender.close(flush=False)
            except Exception as exc:  # closing a broken connection: nothing to save
                log.debug("%s: closing sender: %s", STAGE, exc)

    def _on_success(self, batch: _Batch) -> None:
        if self._down_since is not None:
            log.warning(
                "%s: QuestDB is back after %.1f s",
                STAGE, (self._clock() - self._down_since) / 1e9,
            )  # fmt: skip
        self._failures = 0
        self._down_since = None
        self._next_attempt_ns = 0
        self._last_error = None
        self._last_flush_ns = self._clock()
        self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        if batch.from_spill:
            self._spill.consume(batch.size)

    def _on_failure(self, now: int, error: str) -> None:
        self._failures += 1
        if self._down_since is None:
            self._down_since = now
            log.warning("%s: QuestDB write failed, retrying with backoff: %s", STAGE, error)
        self._last_error = error
        self._next_attempt_ns = now + self.config.retry.delay_ns(self._failures, self._rand())
        if self._metrics is not None:
            self._metrics.flush_failures.labels(self._label).inc()

    # -- spill -----------------------------------------------------------------------------
    def _maybe_spill(self, now: int, *, pressure: bool = False) -> None:
        if self._down_since is None:
            return
        long_down = now - self._down_since >= self.config.spill_after_ms * 1_000_000
        full = len(self._mem) >= self.config.max_memory_rows
        if long_down or full or pressure:
            self._move_memory_to_spill()

    def _move_memory_to_spill(self) -> None:
        """Move unsent memory rows (the in-flight batch first) to the spill's tail, in order."""
        pending: list[tuple[TableSpec, Any]] = []
        if self._batch is not None and not self._batch.from_spill:
            pending = [item for chunk in self._batch.chunks for item in chunk.items]
        pending += self._mem
        if not pending:
            return
        frames = [_ENC.encode((spec.name, rec)) for spec, rec in pending]
        try:
            self._spill.append(frames)
        except SpillFullError as exc:
            self._last_error = str(exc)
            log.error("%s: %s", STAGE, exc)
            return
        if self._batch is not None and not self._batch.from_spill:
            self._batch = None
        self._mem = []

    # -- dead letters and reporting ----------------------------------------------------------
    def _dead_letter(self, record: Any, reason: str, detail: str) -> None:
        try:
            payload = msgspec.json.encode(record)
        except (TypeError, msgspec.EncodeError):
            payload = repr(record).encode()
        dl = DeadLetter(
            stage=STAGE,
            reason=reason,
            detail=detail,
            payload=payload,
            instrument_id=getattr(record, "instrument_id", None),
            ts_recv=self._clock(),
        )
        self._dead_count += 1
        if self._metrics is not None:
            self._metrics.dead_lettered.labels(self._label).inc()
        log.error("%s: dead-lettered a %s: %s: %s", STAGE, type(record).__name__, reason, detail)
        if self._on_dead_letter is not None:
            self._on_dead_letter(dl)
        else:
            self.dead_letters.append(dl)

    def _report(self) -> None:
        if self._metrics is None:
            return
        b = self.backlog()
        m = self._metrics
        m.memory_rows.labels(self._label).set(b.memory_rows)
        m.spill_rows.labels(self._label).set(b.spill_rows)
        m.spill_bytes.labels(self._label).set(b.spill_bytes)
        m.down.labels(self._label).set(0 if b.down_since_ns is None else 1)


# -- Bytewax ---------------------------------------------------------------------------------
class QuestDBSink(DynamicSink[Any]):
    """Bytewax ``DynamicSink``: one :class:`QuestDBWriter` per worker.

    Each worker gets its own spill directory (``<spill.directory>/worker-<i>``) so
    workers never share segment files. Every ``write_batch`` hands the items to the
    writer and flushes (Bytewax only calls a sink when items arrive, so a timer-based
    flush would never fire on a quiet stream).
    """

    def __init__(
        self,
        config: QuestDBConfig | None = None,
        *,
        tables: Callable[[], TableRegistry] | None = None,
        registry: Any = None,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config or QuestDBConfig.from_env()
        self._tables = tables
        self._registry = registry
        self._on_dead_letter = on_dead_letter
        self._clock = clock

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Any]:
        spill_dir = os.path.join(self.config.spill.directory, f"worker-{worker_index}")
        cfg = msgspec.structs.replace(
            self.config,
            spill=msgspec.structs.replace(self.config.spill, directory=spill_dir),
            name=f"{self.config.name}-{worker_index}",
        )
        writer = QuestDBWriter(
            cfg,
            tables=self._tables() if self._tables else None,
            registry=self._registry,
            on_dead_letter=self._on_dead_letter,
            clock=self._clock,
        )

        class _Partition(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                writer.write(items)
                writer.flush()

            def close(self) -> None:
                writer.close()

        return _Partition()
