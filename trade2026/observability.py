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
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, TextIO

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "LATENCY_BUCKETS",
    "FlowMetrics",
    "JsonFormatter",
    "MetricsServer",
    "RedactingFilter",
    "Redactor",
    "configure_logging",
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


class FlowMetrics:
    """The flow-level metrics beyond :class:`~trade2026.accounting.Accounting`.

    ``flow`` and ``process_id`` go into ``trade2026_flow_info`` so ``trade2026 status``
    and Grafana can name the process behind an endpoint.
    """

    def __init__(
        self,
        registry: CollectorRegistry = REGISTRY,
        *,
        flow: str = "",
        process_id: int | None = None,
    ) -> None:
        self.registry = registry
        self.flow = flow
        self.latency = Histogram(
            "trade2026_stage_latency_seconds",
            "Seconds from a record's receive time to the stage emitting it.",
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
        self._connectors.add_source(name, source)

    def watch_sink(self, name: str, sink: Any, *, backlog: Callable[[], int] | None = None) -> None:
        """Export a sink's published/retried/disconnect counts and backlog at each scrape.

        ``backlog`` is a callable for sinks that buffer (QuestDB); stats objects with an
        integer ``backlog`` attribute are exported per partition without one.
        """
        self._connectors.add_sink(name, sink, backlog)


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
