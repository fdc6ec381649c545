"""Alternative stream engines running the same ``operators/`` logic as the Bytewax flows.

Bytewax over NATS is the latency path. Firms whose market data already lives on Kafka
run the non-latency-critical flows (the tick sink, the features) on another engine
instead; each engine module here only wires ``operators/`` and ``sinks/`` logic to that
engine's runtime, so the results stay those of the Bytewax flows.
"""
