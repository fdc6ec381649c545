"""The non-latency-critical flows as Quix Streams applications over Kafka.

``quix_flow(name, kafka)`` builds a ready-to-run ``Application``; ``trade2026 run FLOW
--engine quix --kafka BROKERS`` calls it and then ``app.run()``. Flow modules import
quixstreams inside their builders, so importing this package stays cheap.

Adding a flow means a module with ``build_app(kafka, ...)`` wiring ``operators/`` logic,
and one entry in :data:`QUIX_FLOWS`. ``quality`` (ticks) and ``quality_raw`` have no
Bytewax twin in ``trade2026 run``: on Bytewax the same gate sits inside each flow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engines.quix.app import KafkaConfig
from trade2026.accounting import Accounting

if TYPE_CHECKING:
    from quixstreams import Application

    from trade2026.observability import FlowMetrics

__all__ = ["QUIX_FLOWS", "KafkaConfig", "quix_flow"]


def _ticks_sink(kafka: KafkaConfig, accounting: Accounting, options: dict[str, Any]) -> Any:
    from engines.quix.ticks_sink import build_app
    from sinks.delta import DeltaTicksConfig

    root = options.pop("delta_root", None) or os.environ.get("TRADE2026_DELTA_ROOT")
    delta = DeltaTicksConfig(root=root) if root else DeltaTicksConfig()
    return build_app(kafka, delta, accounting=accounting, **options)


def _features(kafka: KafkaConfig, accounting: Accounting, options: dict[str, Any]) -> Any:
    from engines.quix.features import build_app

    return build_app(kafka, **options)


def _quality_for(stage: str) -> Callable[[KafkaConfig, Accounting, dict[str, Any]], Any]:
    def build(kafka: KafkaConfig, accounting: Accounting, options: dict[str, Any]) -> Any:
        import time

        from engines.quix.quality import build_app, kafka_publisher
        from operators.quality.tap import Quality, QualityConfig
        from schemas.instruments import load_instruments

        quality = options.pop("quality", None)
        if quality is None:  # production: stored under $TRADE2026_STATE_DIR/quality
            # The tail is validated and stored at exit (close_at_exit). pyarrow imports
            # concurrent.futures.thread lazily on its first table, and that import fails
            # once the interpreter is shutting down ("can't register atexit after
            # shutdown"), losing the last batch's stored result: import it now.
            import concurrent.futures.thread  # noqa: F401

            quality = Quality(
                QualityConfig.production(stages=(stage,)),
                load_instruments(),
                accounting=accounting,
                clock=time.time_ns,
                publish=kafka_publisher(kafka),
            ).close_at_exit()
        return build_app(kafka, quality, stage=stage, **options)

    return build


#: Flow name -> builder(kafka, accounting, options). Names match ``trade2026 run FLOW``.
QUIX_FLOWS: dict[str, Callable[[KafkaConfig, Accounting, dict[str, Any]], Any]] = {
    "features": _features,
    "quality": _quality_for("ticks"),
    "quality_raw": _quality_for("raw"),
    "ticks_sink": _ticks_sink,
}


def quix_flow(
    flow_name: str,
    kafka: str | KafkaConfig,
    *,
    consumer_group: str | None = None,
    accounting: Accounting | None = None,
    state_dir: str | None = None,
    metrics: FlowMetrics | None = None,
    **options: Any,
) -> Application:
    """The Quix application of ``flow_name`` against ``kafka`` (brokers or a config).

    The consumer group defaults to ``trade2026-<flow>`` and the state directory to
    ``state/quix/<flow>``, so two flows never share offsets or window state. ``options``
    go to the flow's ``build_app`` (``topic=...``, ``config=FeatureConfig(...)``,
    ``delta_root=...`` for the tick sink, ``quality=Quality(...)``/``out_topic=...`` for
    the quality checks). ``metrics`` feeds its batch-size and latency histograms
    (per checkpoint, see :func:`engines.quix.app.attach_meter`).
    """
    if flow_name not in QUIX_FLOWS:
        raise ValueError(
            f"quix engine: no flow {flow_name!r}; hint: one of {sorted(QUIX_FLOWS)} "
            "(normalize stays on Bytewax)"
        )
    if isinstance(kafka, str):
        kafka = KafkaConfig(
            brokers=kafka,
            consumer_group=consumer_group or f"trade2026-{flow_name}",
            state_dir=state_dir or f"state/quix/{flow_name}",
        )
    if metrics is not None:
        options["metrics"] = metrics
    app: Application = QUIX_FLOWS[flow_name](kafka, accounting or Accounting(), dict(options))
    return app
