"""The HTTP order gateway (``trade2026 gateway``): HTTP in, order-path NATS requests out.

See docs/gateway.md. :func:`trade2026.gateway.app.create_app` builds the ASGI app; the
request models and the API-key hook live in :mod:`trade2026.gateway.models`. Nothing is
imported here, so the CLI's ``--help`` does not pay for Starlette.
"""
