"""``trade2026 gateway``: serve the HTTP order gateway (docs/gateway.md) with uvicorn.

The gateway starts even when NATS is down (``/health`` answers 503 and orders get 503
until it connects), so a supervisor can start it before the bus; it logs one warning.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from trade2026 import exitcodes


@click.command("gateway")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8099, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--default-account",
    default="default",
    show_default=True,
    help="Account for orders that name none (risk.toml's default_account).",
)
@click.option(
    "--default-venue",
    default="BINANCE",
    show_default=True,
    help="Venue whose spot instruments bare symbols such as BTCUSDT map to.",
)
@click.option(
    "--timeout",
    "request_timeout_s",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.01, 60),
    help="Seconds to wait for the orders flow's risk decision before answering 504.",
)
@click.option(
    "--api-keys",
    "api_keys_path",
    envvar="TRADE2026_GATEWAY_API_KEYS",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML file of API keys (sha256 -> accounts); without it auth is off "
    "(env TRADE2026_GATEWAY_API_KEYS).",
)
@click.option(
    "--nats-url",
    envvar="NATS_URL",
    default=None,
    help="NATS server(s), comma-separated (env NATS_URL).",
)
def gateway_command(
    host: str,
    port: int,
    default_account: str,
    default_venue: str,
    request_timeout_s: float,
    api_keys_path: Path | None,
    nats_url: str | None,
) -> None:
    """Serve POST/GET/DELETE /orders, GET /positions, GET /health and /openapi.json.

    Example: curl -X POST http://localhost:8099/orders -H "Content-Type: application/json"
    -d '{"symbol":"BTCUSDT","side":"buy","quantity":0.001,"price":45000,"order_type":"LIMIT"}'
    """
    import msgspec
    import uvicorn

    from trade2026.gateway.app import create_app
    from trade2026.gateway.models import ApiKeyConfig, GatewayConfig
    from trade2026.natsconf import NatsConfig

    api_keys = None
    if api_keys_path is not None:
        try:
            api_keys = msgspec.toml.decode(api_keys_path.read_bytes(), type=ApiKeyConfig)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            click.echo(
                f"error: gateway: cannot load API keys from {api_keys_path}: "
                f"{type(exc).__name__}: {exc}; hint: see docs/gateway.md (Auth)",
                err=True,
            )
            sys.exit(exitcodes.BAD_INPUT)
    try:
        config = GatewayConfig(
            default_account=default_account,
            default_venue=default_venue.upper(),
            request_timeout_s=request_timeout_s,
            api_keys=api_keys,
        )
        config = msgspec.convert(msgspec.to_builtins(config), GatewayConfig)  # run the checks
    except msgspec.ValidationError as exc:
        click.echo(f"error: gateway: {exc}; hint: see `trade2026 gateway --help`", err=True)
        sys.exit(exitcodes.USAGE)
    env = None
    if nats_url:
        import os

        env = {**os.environ, "NATS_URL": nats_url}
    nats = NatsConfig.from_env(env, name="trade2026-gateway")
    try:
        app = create_app(config, nats)
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"error: gateway: {exc}", err=True)
        sys.exit(exitcodes.BAD_INPUT)
    from urllib.parse import urlsplit

    parts = urlsplit(nats.url)  # never print credentials embedded in the URL
    shown = f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else "NATS"
    click.echo(f"gateway: http://{host}:{port} (NATS {shown})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on")
