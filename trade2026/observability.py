"""Structured logs that never leak a secret, and the Prometheus metrics Accounting does not keep.

Logs
    An operator greps logs by step and key (``jq 'select(.step == "normalize")'``), so
    :func:`configure_logging` can write one JSON object per line with ``ts``, ``level``,
    ``logger``, ``message`` and whatever was passed through ``extra`` (``step``, ``key``,
    ...). Either way a :class:`RedactingFilter` sits on the handler, so a password, token,
    API key, NKey seed or JWT that slips into a message, an argument, an extra field or a
    traceback is replaced by ``***`` before anything is written. Redaction is by value
    (every secret-looking environment variable is registered at configure time) and by
    shape (``password=...``, ``nats://user:pass@``, seeds, JWTs, PEM private keys), because
    a secret can reach a log line from places we do not control (an exception from a
    library that echoes its connect options).

Metrics
    :class:`~trade2026.accounting.Accounting` counts records per stage. :class:`FlowMetrics`
    adds what a dashboard needs to see a flow's health: processing-latency and batch-size
    histograms, consumer lag and sink backlog gauges, and NATS disconnects, all on a
    registry the caller passes (tests use a private one, ``trade2026 run`` the default).
    Lag and backlog are read from the connectors' own stats at scrape time, so the hot
    path pays nothing for them. :class:`MetricsServer` serves a registry over HTTP and can
    bind port 0, so tests and several flows on one host never fight over a port.

Histograms in every flow
    ``trade2026 run`` calls :meth:`FlowMetrics.meter_dataflow` on the flow it built, which
    wraps every ``op.input`` source and ``op.output`` sink of the graph (whatever their
    type: NATS, JetStream, Delta, QuestDB, ...). No flow and no connector has to know:
    a flow added to the registry gets the histograms for free, without a global. The
    cost is per batch, never per record: a source observes the size of each batch it
    hands Bytewax; a sink observes the size of each batch it wrote and, once the write
    returned, the latency of the batch's first record that carries a receive time (the
    oldest in arrival order, so the sample leans to the slow side). Per-record
    observation was not taken: a prometheus ``observe`` measured ~6 us here, more than a
    core NATS publish; per batch of 1,000 the whole meter costs 6-11 us.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TextIO

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.transport import RECV_NS_HEADER

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "LATENCY_BUCKETS",
    "FlowMetrics",
    "JsonFormatter",
    "MetricsServer",
    "RedactingFilter",
    "Redactor",
    "configure_logging",
    "receive_ns",
    "secrets_from_env",
]

REDACTED = "***"

# -- redaction ------------------------------------------------------------------------------
#: Environment variables whose values are secrets whatever their content.
SECRET_ENV_HINTS = ("PASSWORD", "PASSWD", "TOKEN", "SECRET", "API_KEY", "APIKEY", "CREDENTIAL")
#: Variables naming a file whose *contents* are secret (a creds file, a seed file).
SECRET_FILE_ENV = ("NATS_CREDS", "NATS_NKEY_SEED")
#: Values shorter than this are not redacted by value: "a" would shred every message.
MIN_SECRET_LEN = 4

_KEYWORDS = (
    r"password|passwd|pwd|pass|token|auth_token|secret|api[_-]?key|x-api-key|"
    r"authorization|nkeys?_seed|seed|jwt|credentials?|private[_-]?key"
)
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys (a TLS key pasted into an error message).
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
        ),
        REDACTED,
    ),
    # NKey seeds: S + key type + base32 (what a creds or seed file holds).
    (re.compile(r"\bS[UAOCNX][A-Z2-7]{56}\b"), REDACTED),
    # JWTs (a creds file's user JWT, bearer tokens).
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]{4,}"), REDACTED),
    # scheme://user:password@host
    (
        re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s/]+(?=@)", re.IGNORECASE),
        r"\g<pre>***",
    ),
    # Authorization: Bearer xyz / Basic xyz
    (
        re.compile(r"\b(?P<pre>(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE),
        r"\g<pre>***",
    ),
    # password=xyz, "token": "xyz", api_key: xyz
    (
        re.compile(
            rf"(?P<pre>\b(?:{_KEYWORDS})\b[\"']?\s*[:=]\s*[\"']?)"
            r"(?!\*\*\*)[^\s\"',;&}\)\]]+",
            re.IGNORECASE,
        ),
        r"\g<pre>***",
    ),
    # --password xyz (a command line echoed in an error)
    (
        re.compile(rf"(?P<pre>--(?:{_KEYWORDS})\s+)(?!\*\*\*)[^\s\"']+", re.IGNORECASE),
        r"\g<pre>***",
    ),
)


def secrets_from_env(env: Mapping[str, str] | None = None) -> list[str]:
    """Secret values the environment holds: secret-named variables and secret files' lines.

    A creds file holds a JWT and a seed; both are registered line by line, so even a
    library that prints a fragment of the file is caught.
    """
    env = os.environ if env is None else env
    found: list[str] = []
    for name, value in env.items():
        upper = name.upper()
        if value and any(hint in upper for hint in SECRET_ENV_HINTS):
            found.append(value)
    for name in SECRET_FILE_ENV:
        path = env.get(name)
        if not path:
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read(64_000)
        except OSError:
            continue
        found.extend(
            line.strip() for line in text.splitlines() if line.strip() and "-----" not in line
        )
    return [s for s in found if len(s) >= MIN_SECRET_LEN]


class Redactor:
    """Replaces known secret values and secret-shaped text with ``***``.

    Thread-safe: values may be added while other threads log.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        new = {s for s in secrets if s and len(s) >= MIN_SECRET_LEN}
        if not new:
            return
        with self._lock:
            values = self._values | new
            # Longest first, so a secret that contains another is removed whole.
            alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
            self._values = frozenset(values)
            self._pattern = re.compile(alternatives)

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        for shape, replacement in _SHAPES:
            text = shape.sub(replacement, text)
        return text

    def redact_value(self, value: Any) -> Any:
        """Redact strings inside JSON-like values; other types pass through."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(v) for v in value]
        return value


# Attributes every LogRecord has; anything else on a record came in through ``extra``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record so nothing secret reaches a formatter.

    It formats the message (``msg % args``) once and stores the redacted text, renders
    the traceback into ``exc_text`` redacted, and redacts string ``extra`` fields. It sits
    on handlers, not loggers, because logger filters do not see records that propagate
    up from child loggers.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        r = self.redactor
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string must not lose the record
            message = f"{record.msg!r} (unformattable args: {type(exc).__name__})"
        record.msg = r.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = r.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = r.redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRS:
                setattr(record, name, r.redact_value(value))
        return True


# -- formatting -----------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, then extras.

    ``ts`` is RFC 3339 UTC with microseconds, so lines from several hosts sort together.
    Extra fields that JSON cannot hold are written with ``str()``.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and name not in doc:
                doc[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """The human format, with ``[step key]`` when a record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        step = getattr(record, "step", None)
        key = getattr(record, "key", None)
        if step is None and key is None:
            return line
        tag = " ".join(str(x) for x in (step, key) if x is not None)
        head, sep, rest = line.partition(": ")
        return f"{head} [{tag}]{sep}{rest}" if sep else f"{line} [{tag}]"


_HANDLER_MARK = "_trade2026_handler"


def configure_logging(
    *,
    json: bool = False,
    level: str | int = "WARNING",
    stream: IO[str] | TextIO | None = None,
    secrets: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Install one redacting handler on the root logger (JSON or text) and return it.

    Calling it again replaces the handler it installed before (the CLI group and tests
    may both call it) and leaves handlers others installed alone. Secret values from
    ``env`` (default ``os.environ``) and ``secrets`` are redacted by value.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    redactor = Redactor([*secrets_from_env(env), *secrets])
    handler.addFilter(RedactingFilter(redactor))
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


# -- metrics --------------------------------------------------------------------------------
#: Seconds from receive to emit: 50 us to 10 s, dense below 10 ms where a healthy flow is.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
#: Records per batch: sources hand Bytewax up to 1,000 by default.
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def _stats_items(obj: Any) -> list[tuple[str, Any]]:
    """``(partition, stats)`` from a connector's ``stats`` mapping, or from a stats object."""
    stats = getattr(obj, "stats", obj)
    if isinstance(stats, Mapping):
        return [(str(k), v) for k, v in list(stats.items())]
    return [("0", stats)]


def _buffered(stats: Any) -> int:
    """Messages a source holds that the flow has not taken yet.

    A connector that knows its lag better (JetStream's pending count) exposes ``lag``;
    otherwise it is what was received minus what was skipped, de-duplicated or delivered.
    """
    lag = getattr(stats, "lag", None)
    if lag is not None:
        return int(lag)
    received = int(getattr(stats, "received", 0))
    done = (
        int(getattr(stats, "delivered", 0))
        + int(getattr(stats, "skipped_other_partition", 0))
        + int(getattr(stats, "duplicates", 0))
    )
    return max(0, received - done)


class _ConnectorCollector(Collector):
    """Reads sources' and sinks' stats at scrape time: nothing runs on the hot path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, Any] = {}
        self._sinks: dict[str, Any] = {}
        self._backlogs: dict[str, Callable[[], int]] = {}

    def add_source(self, name: str, source: Any) -> None:
        with self._lock:
            self._sources[name] = source

    def add_sink(self, name: str, sink: Any, backlog: Callable[[], int] | None) -> None:
        with self._lock:
            self._sinks[name] = sink
            if backlog is not None:
                self._backlogs[name] = backlog

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = dict(self._sources)
            sinks = dict(self._sinks)
            backlogs = dict(self._backlogs)
        lag = GaugeMetricFamily(
            "trade2026_consumer_lag",
            "Messages a source has received and the flow has not taken yet.",
            labels=["source", "partition"],
        )
        received = CounterMetricFamily(
            "trade2026_source_received",
            "Messages a source partition received from NATS.",
            labels=["source", "partition"],
        )
        disconnects = CounterMetricFamily(
            "trade2026_nats_disconnects",
            "NATS disconnects per connector (core NATS may have lost messages meanwhile).",
            labels=["connector", "partition"],
        )
        drops = CounterMetricFamily(
            "trade2026_slow_consumer_drops",
            "Messages nats-py dropped because the flow did not keep up (core NATS).",
            labels=["source", "partition"],
        )
        published = CounterMetricFamily(
            "trade2026_sink_published",
            "Messages a sink partition published.",
            labels=["sink", "partition"],
        )
        retried = CounterMetricFamily(
            "trade2026_sink_retried",
            "Messages a sink published again after a missing acknowledgement.",
            labels=["sink", "partition"],
        )
        backlog = GaugeMetricFamily(
            "trade2026_sink_backlog",
            "Records handed to a sink and not yet written.",
            labels=["sink", "partition"],
        )
        for name, source in sources.items():
            for part, st in _stats_items(source):
                lag.add_metric([name, part], _buffered(st))
                received.add_metric([name, part], int(getattr(st, "received", 0)))
                disconnects.add_metric([name, part], int(getattr(st, "disconnects", 0)))
                drops.add_metric([name, part], int(getattr(st, "slow_consumer_drops", 0)))
        for name, sink in sinks.items():
            for part, st in _stats_items(sink):
                published.add_metric([name, part], int(getattr(st, "published", 0)))
                retried.add_metric([name, part], int(getattr(st, "retried", 0)))
                disconnects.add_metric([name, part], int(getattr(st, "disconnects", 0)))
                own = getattr(st, "backlog", None)
                if isinstance(own, int):
                    backlog.add_metric([name, part], own)
            fn = backlogs.get(name)
            if fn is not None:
                try:
                    backlog.add_metric([name, "all"], int(fn()))
                except Exception:  # a scrape must not fail because one sink is closing
                    logging.getLogger(__name__).debug("backlog of %s unavailable", name)
        yield from (lag, received, disconnects, drops, published, retried, backlog)


# -- metering sources and sinks -----------------------------------------------------------
class _RecvOnly(msgspec.Struct):
    ts_recv: int | None = None


_decode_recv = msgspec.json.Decoder(_RecvOnly).decode
#: Wrappers whose record carries the receive time one level down (the Delta sink's Stamped).
_NESTED = ("tick", "record", "value")


def receive_ns(item: Any) -> int | None:
    """When the bytes behind ``item`` were first received (int ns UTC), if it says.

    In order: a ``ts_recv`` attribute (Message, ticks, dead letters), the ``T26-Recv-Ns``
    header (Outgoing, Message), a wrapped record's ``ts_recv`` (``Stamped.tick``), the
    ``ts_recv`` field of a JSON payload (an encoded tick or dead letter). A keyed
    ``(key, value)`` pair is judged by its value. None when nothing says.
    """
    if type(item) is tuple and len(item) == 2:
        item = item[1]
    ts = getattr(item, "ts_recv", None)
    if type(ts) is int and ts > 0:
        return ts
    headers = getattr(item, "headers", None)
    if headers:
        raw = headers.get(RECV_NS_HEADER)
        if raw is not None:
            try:
                return int(raw)
            except ValueError:
                pass
    for name in _NESTED:
        inner = getattr(item, name, None)
        if inner is not None:
            ts = getattr(inner, "ts_recv", None)
            if type(ts) is int and ts > 0:
                return ts
    data = getattr(item, "data", None)
    if isinstance(data, bytes) and data[:1] == b"{":
        try:
            ts = _decode_recv(data).ts_recv
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return ts if ts is not None and ts > 0 else None
    return None


#: Records of a batch looked at for a receive time before the batch goes unsampled.
_SAMPLE_SCAN = 8


class _SinkMeter:
    """One sink step's histogram children and clock, shared by its partitions."""

    __slots__ = ("_batch", "_clock", "_latency")

    def __init__(self, batch: Any, latency: Any, clock: Callable[[], int]) -> None:
        self._batch = batch
        self._latency = latency
        self._clock = clock

    def written(self, items: list[Any]) -> None:
        self._batch.observe(len(items))
        for item in items[:_SAMPLE_SCAN]:
            recv = receive_ns(item)
            if recv is not None:
                self._latency.observe(max(0, self._clock() - recv) / 1e9)
                return


@cache
def _wrappers() -> dict[str, type]:
    """The wrapper classes, built on first use so importing this module skips bytewax."""
    from bytewax.inputs import (
        DynamicSource,
        FixedPartitionedSource,
        StatefulSourcePartition,
        StatelessSourcePartition,
    )
    from bytewax.outputs import (
        DynamicSink,
        FixedPartitionedSink,
        StatefulSinkPartition,
        StatelessSinkPartition,
    )

    def _sized(batch: Any) -> list[Any]:
        return batch if isinstance(batch, list) else list(batch)

    class StatefulPart(StatefulSourcePartition[Any, Any]):
        def __init__(self, inner: Any, observe: Callable[[int], None]) -> None:
            self.inner, self.observe = inner, observe

        def next_batch(self) -> list[Any]:
            batch = _sized(self.inner.next_batch())
            if batch:
                self.observe(len(batch))
            return batch

        def next_awake(self) -> datetime | None:
            awake: datetime | None = self.inner.next_awake()
            return awake

        def snapshot(self) -> Any:
            return self.inner.snapshot()

        def close(self) -> None:
            self.inner.close()

    class StatelessPart(StatelessSourcePartition[Any]):
        def __init__(self, inner: Any, observe: Callable[[int], None]) -> None:
            self.inner, self.observe = inner, observe

        def next_batch(self) -> list[Any]:
            batch = _sized(self.inner.next_batch())
            if batch:
                self.observe(len(batch))
            return batch

        def next_awake(self) -> datetime | None:
            awake: datetime | None = self.inner.next_awake()
            return awake

        def close(self) -> None:
            self.inner.close()

    class MeteredFixedSource(FixedPartitionedSource[Any, Any]):
        def __init__(self, inner: Any, observe: Callable[[int], None]) -> None:
            self.inner, self.observe = inner, observe

        def list_parts(self) -> list[str]:
            parts: list[str] = self.inner.list_parts()
            return parts

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
            return StatefulPart(
                self.inner.build_part(step_id, for_part, resume_state), self.observe
            )

    class MeteredDynamicSource(DynamicSource[Any]):
        def __init__(self, inner: Any, observe: Callable[[int], None]) -> None:
            self.inner, self.observe = inner, observe

        def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
            return StatelessPart(
                self.inner.build(step_id, worker_index, worker_count), self.observe
            )

    class StatefulSinkPart(StatefulSinkPartition[Any, Any]):
        def __init__(self, inner: Any, meter: _SinkMeter) -> None:
            self.inner, self.meter = inner, meter

        def write_batch(self, values: list[Any]) -> None:
            self.inner.write_batch(values)
            if values:
                self.meter.written(values)

        def snapshot(self) -> Any:
            return self.inner.snapshot()

        def close(self) -> None:
            self.inner.close()

    class StatelessSinkPart(StatelessSinkPartition[Any]):
        def __init__(self, inner: Any, meter: _SinkMeter) -> None:
            self.inner, self.meter = inner, meter

        def write_batch(self, items: list[Any]) -> None:
            self.inner.write_batch(items)
            if items:
                self.meter.written(items)

        def close(self) -> None:
            self.inner.close()

    class MeteredFixedSink(FixedPartitionedSink[Any, Any]):
        def __init__(self, inner: Any, meter: _SinkMeter) -> None:
            self.inner, self.meter = inner, meter

        def list_parts(self) -> list[str]:
            parts: list[str] = self.inner.list_parts()
            return parts

        def part_fn(self, item_key: str) -> int:
            index: int = self.inner.part_fn(item_key)
            return index

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
            return StatefulSinkPart(
                self.inner.build_part(step_id, for_part, resume_state), self.meter
            )

    class MeteredDynamicSink(DynamicSink[Any]):
        def __init__(self, inner: Any, meter: _SinkMeter) -> None:
            self.inner, self.meter = inner, meter

        def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
            return StatelessSinkPart(
                self.inner.build(step_id, worker_index, worker_count), self.meter
            )

    return {
        "fixed_source": MeteredFixedSource,
        "dynamic_source": MeteredDynamicSource,
        "fixed_sink": MeteredFixedSink,
        "dynamic_sink": MeteredDynamicSink,
        "FixedPartitionedSource": FixedPartitionedSource,
        "DynamicSource": DynamicSource,
        "FixedPartitionedSink": FixedPartitionedSink,
        "DynamicSink": DynamicSink,
    }


def _steps(steps: Iterable[Any]) -> Iterator[Any]:
    for step in steps:
        yield step
        yield from _steps(getattr(step, "substeps", ()))


class FlowMetrics:
    """The flow-level metrics beyond :class:`~trade2026.accounting.Accounting`.

    ``flow`` and ``process_id`` go into ``trade2026_flow_info`` so ``trade2026 status``
    and Grafana can name the process behind an endpoint. ``clock`` (int ns UTC) is what
    sink latency is measured against; tests inject their own.
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        flow: str = "",
        process_id: int | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.registry = registry
        self.flow = flow
        self.clock = clock
        self._watched: set[int] = set()
        self.latency = Histogram(
            "trade2026_stage_latency_seconds",
            "Seconds from a record's receive time to the stage emitting it "
            "(sinks: once the write returned; one sample per batch).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "trade2026_batch_size",
            "Records per batch a stage, source or sink handled.",
            ["stage"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "trade2026_stage_lag",
            "Lag a stage reports itself (e.g. JetStream pending), when it knows it.",
            ["stage"],
            registry=registry,
        )
        info = Gauge(
            "trade2026_flow_info",
            "Always 1; labels name the flow and process behind this endpoint.",
            ["flow", "process_id"],
            registry=registry,
        )
        info.labels(flow or "-", "-" if process_id is None else str(process_id)).set(1)
        self._connectors = _ConnectorCollector()
        registry.register(self._connectors)

    def observe_latency(self, stage: str, seconds: float) -> None:
        self.latency.labels(stage).observe(seconds)

    def observe_latency_ns(self, stage: str, recv_ns: int, now_ns: int) -> None:
        """Latency from integer-ns timestamps; the caller passes ``now`` (time is injected)."""
        self.latency.labels(stage).observe(max(0, now_ns - recv_ns) / 1e9)

    def observe_batch(self, stage: str, size: int) -> None:
        self.batch_size.labels(stage).observe(size)

    def set_lag(self, stage: str, value: float) -> None:
        self.lag.labels(stage).set(value)

    def watch_source(self, name: str, source: Any) -> None:
        """Export a source's lag, receive count, disconnects and drops at each scrape.

        ``source`` is anything with a ``stats`` mapping of partition to stats (the NATS
        and JetStream sources) or a stats object itself.
        """
        self._watched.add(id(source))
        self._connectors.add_source(name, source)

    def watch_sink(self, name: str, sink: Any, *, backlog: Callable[[], int] | None = None) -> None:
        """Export a sink's published/retried/disconnect counts and backlog at each scrape.

        ``backlog`` is a callable for sinks that buffer (QuestDB); stats objects with an
        integer ``backlog`` attribute are exported per partition without one.
        """
        self._watched.add(id(sink))
        self._connectors.add_sink(name, sink, backlog)

    def meter_dataflow(self, flow: Dataflow) -> list[str]:
        """Wrap every source and sink of ``flow`` so they feed the histograms; call it
        once, after the flow is built and before it runs. Returns the metered step ids.

        The histogram label ``stage`` is the step id (``normalize.raw`` for the input,
        ``normalize.publish`` for the output). A source's batch sizes sum to the records
        it handed Bytewax; a sink's batch sizes sum to the records it wrote, and it has
        one latency sample per batch whose first records carry a receive time (see
        :func:`receive_ns`). Connectors with ``stats`` not yet watched are watched
        under their step id, so every flow also exports their lag and counts.
        """
        w = _wrappers()
        metered: list[str] = []
        for step in _steps(flow.substeps):
            step_id = str(getattr(step, "step_id", ""))
            source = getattr(step, "source", None)
            sink = getattr(step, "sink", None)
            if isinstance(source, w["FixedPartitionedSource"] | w["DynamicSource"]):
                if isinstance(source, w["fixed_source"] | w["dynamic_source"]):
                    continue  # metered already
                if getattr(source, "stats", None) is not None and id(source) not in self._watched:
                    self.watch_source(step_id, source)
                observe = self.batch_size.labels(step_id).observe
                kind = (
                    "fixed_source"
                    if isinstance(source, w["FixedPartitionedSource"])
                    else ("dynamic_source")
                )
                # Bytewax operators are frozen dataclasses; the runtime reads ``source``
                # when it builds the worker, after this.
                object.__setattr__(step, "source", w[kind](source, observe))
                metered.append(step_id)
            elif isinstance(sink, w["FixedPartitionedSink"] | w["DynamicSink"]):
                if isinstance(sink, w["fixed_sink"] | w["dynamic_sink"]):
                    continue
                if getattr(sink, "stats", None) is not None and id(sink) not in self._watched:
                    self.watch_sink(step_id, sink)
                meter = _SinkMeter(
                    self.batch_size.labels(step_id), self.latency.labels(step_id), self.clock
                )
                kind = (
                    "fixed_sink"
                    if isinstance(sink, w["FixedPartitionedSink"])
                    else ("dynamic_sink")
                )
                object.__setattr__(step, "sink", w[kind](sink, meter))
                metered.append(step_id)
        return metered


class MetricsServer:
    """Serves a registry at ``http://host:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port; read it back from :attr:`port` after :meth:`start`.
    """

    def __init__(
        self, port: int = 0, *, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        if self._server is not None:
            return self
        try:
            server, thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            raise OSError(
                f"metrics server: cannot listen on {self.host}:{self.port} ({exc}); "
                "hint: pick another --metrics-port or 0 for any free port"
            ) from exc
        self._server, self._thread = server, thread
        self.port = int(server.server_port)
        return self

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
