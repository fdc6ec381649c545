"""How to reach NATS: one frozen config read from the environment, shared by every command.

``NATS_URL`` names the server(s); credentials come from ``NATS_USER``/``NATS_PASSWORD``,
``NATS_TOKEN``, ``NATS_CREDS`` (a credentials file), ``NATS_NKEY_SEED`` (a seed file) and
``NATS_TLS_CA`` (a CA bundle). Secrets are never part of ``repr`` so they stay out of logs.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

import msgspec

DEFAULT_URL = "nats://127.0.0.1:4222"


class NatsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, repr_omit_defaults=True):
    servers: tuple[str, ...] = (DEFAULT_URL,)
    name: str = "trade2026"
    user: str | None = None
    password: str | None = msgspec.field(default=None)
    token: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None
    connect_timeout_s: float = 2.0
    #: -1 reconnects forever: a flow outlives a nats-server restart.
    max_reconnect_attempts: int = -1
    reconnect_wait_s: float = 0.5

    def __repr__(self) -> str:  # never print secrets
        return f"NatsConfig(servers={list(self.servers)!r}, name={self.name!r})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> NatsConfig:
        env = os.environ if env is None else env
        servers = tuple(s.strip() for s in env.get("NATS_URL", DEFAULT_URL).split(",") if s.strip())
        kwargs: dict[str, Any] = {
            "servers": servers or (DEFAULT_URL,),
            "user": env.get("NATS_USER") or None,
            "password": env.get("NATS_PASSWORD") or None,
            "token": env.get("NATS_TOKEN") or None,
            "creds_file": env.get("NATS_CREDS") or None,
            "nkey_seed_file": env.get("NATS_NKEY_SEED") or None,
            "tls_ca_file": env.get("NATS_TLS_CA") or None,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        kw: dict[str, Any] = {
            "servers": list(self.servers),
            "name": self.name,
            "connect_timeout": self.connect_timeout_s,
            "max_reconnect_attempts": self.max_reconnect_attempts,
            "reconnect_time_wait": self.reconnect_wait_s,
            "allow_reconnect": True,
        }
        if self.user is not None:
            kw["user"] = self.user
            kw["password"] = self.password or ""
        if self.token is not None:
            kw["token"] = self.token
        if self.creds_file is not None:
            kw["user_credentials"] = self.creds_file
        if self.nkey_seed_file is not None:
            kw["nkeys_seed"] = self.nkey_seed_file
        if self.tls_ca_file is not None:
            ctx = ssl.create_default_context(cafile=self.tls_ca_file)
            kw["tls"] = ctx
        return kw

    @property
    def url(self) -> str:
        return self.servers[0]
