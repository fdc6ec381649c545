"""``trade2026 schema``: JSON Schema of the wire contract, exported from the Structs themselves."""

from __future__ import annotations

import inspect
import json

import click


def contract_types() -> dict[str, type]:
    """Every record that crosses a process boundary, by the name docs/contract.md uses."""
    from schemas import canonical, orders
    from schemas.transport import Message
    from schemas.venues import binance, coinbase

    return {
        "TradeTick": canonical.TradeTick,
        "Quote": canonical.Quote,
        "BookDelta": canonical.BookDelta,
        "DataGap": canonical.DataGap,
        "DeadLetter": canonical.DeadLetter,
        "Order": canonical.Order,
        "OrderEvent": canonical.OrderEvent,
        "Fill": canonical.Fill,
        "Position": canonical.Position,
        "SubmitOrder": orders.SubmitOrder,
        "CancelOrder": orders.CancelOrder,
        "ReplaceOrder": orders.ReplaceOrder,
        "ControlCommand": orders.ControlCommand,
        "RiskDecision": orders.RiskDecision,
        "ExecutionReport": orders.ExecutionReport,
        "AlertRaised": orders.AlertRaised,
        "BinanceTrade": binance.BinanceTrade,
        "BinanceBookTicker": binance.BinanceBookTicker,
        "BinanceDepthUpdate": binance.BinanceDepthUpdate,
        "BinanceDepthSnapshot": binance.BinanceDepthSnapshot,
        "CoinbaseMatch": coinbase.CoinbaseMatch,
        "CoinbaseTicker": coinbase.CoinbaseTicker,
        "Message": Message,
    }


def export(names: list[str] | None = None) -> dict[str, object]:
    import msgspec

    types = contract_types()
    chosen = [types[n] for n in (names or sorted(types))]
    schemas, components = msgspec.json.schema_components(chosen)
    # msgspec 0.23 started passing docstrings through inspect.cleandoc; do it here too so
    # the published contract is the same whichever msgspec version is installed.
    for component in components.values():
        if isinstance(component.get("description"), str):
            component["description"] = inspect.cleandoc(component["description"])
    return {"schemas": dict(zip(names or sorted(types), schemas, strict=True)), "$defs": components}


@click.command("schema")
@click.argument("names", nargs=-1)
def schema_command(names: tuple[str, ...]) -> None:
    """Print the JSON Schema of the named records (all when none are named)."""
    known = contract_types()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(
            f"unknown record(s) {unknown}; known: {', '.join(sorted(known))}", param_hint="NAMES"
        )
    click.echo(json.dumps(export(list(names) or None), indent=2, sort_keys=True))
