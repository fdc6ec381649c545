"""NATS authentication and per-user permissions against a real nats-server.

Every client here connects through :class:`NatsConfig.from_env` and the project's own
``connect``, so the tests prove the path flows use, not a hand-made nats-py call. The
permissions test runs the shipped example ``deploy/nats/auth.conf`` itself.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from trade2026.natsconf import NatsConfig
from trade2026.natsloop import connect
from trade2026.natsserver import LocalNatsServer

REPO = Path(__file__).resolve().parents[2]
AUTH_CONF = REPO / "deploy" / "nats" / "auth.conf"
USERS = ("marketdata", "orders", "ops", "flows", "readonly")

Factory = Callable[..., LocalNatsServer]


# -- helpers ---------------------------------------------------------------------------------
class Errors:
    """Collects what nats-py reports through error_cb, and lets a test await the first."""

    def __init__(self) -> None:
        self.seen: list[Exception] = []
        self._event = asyncio.Event()

    async def cb(self, exc: Exception) -> None:
        self.seen.append(exc)
        self._event.set()

    async def wait(self, timeout_s: float = 5.0) -> Exception:
        await asyncio.wait_for(self._event.wait(), timeout_s)
        return self.seen[0]


async def _connect(env: dict[str, str], errors: Errors | None = None) -> Client:
    return await connect(
        NatsConfig.from_env(env), step="auth test", error_cb=None if errors is None else errors.cb
    )


@pytest.fixture
def passwords(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Random passwords in the environment the example config reads them from.

    nats-server parses a variable's value like a config token, so a value starting with a
    digit is read as a number or date: these start with a letter (see auth.conf).
    """
    pw = {u: "p" + secrets.token_hex(16) for u in USERS}
    for user, value in pw.items():
        monkeypatch.setenv(f"T26_{user.upper()}_PASSWORD", value)
    return pw


@pytest.fixture
def auth_server(nats_server_factory: Factory, passwords: dict[str, str]) -> LocalNatsServer:
    return nats_server_factory(extra_args=["-c", str(AUTH_CONF)])


#: A refused connection should fail at once; this bounds the wait when it does not.
REFUSAL_BUDGET_S = 3.0

#: ``natsloop.connect`` passes max_reconnect_attempts=-1 (reconnect forever), and nats-py
#: applies that to the *first* connect too; connect stops that loop on authorization and
#: TLS errors, which these tests pin.


def _refused(env: dict[str, str]) -> str:
    """Connect and expect a ConnectionError within the budget; return its message."""

    async def main() -> None:
        nc = await asyncio.wait_for(_connect(env), REFUSAL_BUDGET_S)
        await nc.close()

    with pytest.raises(ConnectionError) as info:
        asyncio.run(main())
    return str(info.value)


def _env(server: LocalNatsServer, user: str, password: str) -> dict[str, str]:
    return {"NATS_URL": server.url, "NATS_USER": user, "NATS_PASSWORD": password}


# -- per-user permissions with the example config --------------------------------------------
def test_user_without_permission_cannot_publish_orders(
    auth_server: LocalNatsServer, passwords: dict[str, str]
) -> None:
    async def main() -> tuple[Exception, list[str], list[str]]:
        watcher = await _connect(_env(auth_server, "flows", passwords["flows"]))
        seen: list[str] = []
        got_sentinel = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            seen.append(msg.subject)
            if msg.subject == "md.raw.binance.btcusdt":
                got_sentinel.set()

        await watcher.subscribe("orders.>", cb=on_msg)
        await watcher.subscribe("md.raw.>", cb=on_msg)
        await watcher.flush()

        errors = Errors()
        feed = await _connect(_env(auth_server, "marketdata", passwords["marketdata"]), errors)
        await feed.publish("orders.submit", b'{"forged":true}')
        # Same connection, so the server handles it after the refused one: once the
        # watcher has it, the refused order would have arrived too, had it passed.
        await feed.publish("md.raw.binance.btcusdt", b"{}")
        await feed.flush()
        violation = await errors.wait()
        await asyncio.wait_for(got_sentinel.wait(), 5.0)

        ro_errors = Errors()
        ro = await _connect(_env(auth_server, "readonly", passwords["readonly"]), ro_errors)
        await ro.publish("orders.submit", b'{"forged":true}')
        await ro.flush()
        await ro_errors.wait()
        # And a permitted order client does get through, on the same watcher.
        orders = await _connect(_env(auth_server, "orders", passwords["orders"]))
        await orders.publish("orders.submit", b'{"ok":true}')
        await orders.flush()
        deadline = time.monotonic() + 5
        while "orders.submit" not in seen and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for nc in (watcher, feed, ro, orders):
            await nc.close()
        return violation, seen, [str(e) for e in ro_errors.seen]

    violation, seen, ro_errors = asyncio.run(main())
    assert "permissions violation" in str(violation).lower()
    assert "orders.submit" in str(violation)
    # The forged orders (marketdata's and readonly's) never reached a subscriber.
    assert seen == ["md.raw.binance.btcusdt", "orders.submit"]
    assert any("orders.submit" in e for e in ro_errors)


def test_readonly_user_may_not_read_other_clients_replies(
    auth_server: LocalNatsServer, passwords: dict[str, str]
) -> None:
    async def main() -> Exception:
        errors = Errors()
        ro = await _connect(_env(auth_server, "readonly", passwords["readonly"]), errors)
        await ro.subscribe("_INBOX.>")
        await ro.flush()
        exc = await errors.wait()
        await ro.close()
        return exc

    exc = asyncio.run(main())
    assert "permissions violation" in str(exc).lower()
    assert "_inbox.>" in str(exc).lower()


def test_wrong_password_fails_with_a_clear_error(
    auth_server: LocalNatsServer, passwords: dict[str, str]
) -> None:
    wrong = "not-" + passwords["orders"]
    message = _refused(_env(auth_server, "orders", wrong))
    assert "auth test" in message  # names the step
    assert "authorization violation" in message.lower()
    assert "hint:" in message
    assert wrong not in message and passwords["orders"] not in message


def test_no_credentials_is_refused(auth_server: LocalNatsServer) -> None:
    assert "authorization violation" in _refused({"NATS_URL": auth_server.url}).lower()


# -- token -------------------------------------------------------------------------------------
@pytest.fixture
def token_server(nats_server_factory: Factory, tmp_path: Path) -> tuple[LocalNatsServer, str]:
    token = secrets.token_urlsafe(24)
    conf = tmp_path / "token.conf"
    conf.write_text(f'authorization {{ token: "{token}" }}\n')
    return nats_server_factory(extra_args=["-c", str(conf)]), token


def test_token_auth_from_env(token_server: tuple[LocalNatsServer, str]) -> None:
    server, token = token_server

    async def roundtrip(env: dict[str, str]) -> bytes:
        nc = await _connect(env)
        sub = await nc.subscribe("md.ticks.TEST")
        await nc.publish("md.ticks.TEST", b"tick")
        msg = await sub.next_msg(timeout=5)
        await nc.close()
        return bytes(msg.data)

    assert asyncio.run(roundtrip({"NATS_URL": server.url, "NATS_TOKEN": token})) == b"tick"


def test_wrong_token_is_refused(token_server: tuple[LocalNatsServer, str]) -> None:
    server, token = token_server
    message = _refused({"NATS_URL": server.url, "NATS_TOKEN": token[::-1]})
    assert "authorization violation" in message.lower()
    assert token not in message and token[::-1] not in message


# -- NKeys and operator-mode credentials files -------------------------------------------------
def _nkeys() -> Any:
    return pytest.importorskip(
        "nkeys",
        reason="nats-py needs the nkeys package for NKey and creds auth: "
        "pip install 'nats-py[nkeys]'",
    )


def _new_key(prefix: int) -> Any:
    nkeys = _nkeys()
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def test_nkey_seed_file_auth_and_permissions(nats_server_factory: Factory, tmp_path: Path) -> None:
    nkeys = _nkeys()
    user = _new_key(nkeys.PREFIX_BYTE_USER)
    conf = tmp_path / "nkey.conf"
    perms = '{ publish: { allow: ["md.raw.>"] }, subscribe: { allow: ["md.>"] } }'
    entry = f"{{ nkey: {user.public_key.decode()}, permissions: {perms} }}"
    conf.write_text(f"authorization {{ users = [ {entry} ] }}\n")
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(user.seed)
    seed_file.chmod(0o600)
    server = nats_server_factory(extra_args=["-c", str(conf)])

    async def main() -> tuple[bytes, Exception]:
        errors = Errors()
        nc = await _connect({"NATS_URL": server.url, "NATS_NKEY_SEED": str(seed_file)}, errors)
        sub = await nc.subscribe("md.raw.>")
        await nc.publish("orders.submit", b"forged")
        await nc.publish("md.raw.coinbase.btc-usd", b"raw")
        msg = await sub.next_msg(timeout=5)
        exc = await errors.wait()
        await nc.close()
        return bytes(msg.data), exc

    data, exc = asyncio.run(main())
    assert data == b"raw"
    assert "permissions violation" in str(exc).lower() and "orders.submit" in str(exc)


def test_unknown_nkey_is_refused(nats_server_factory: Factory, tmp_path: Path) -> None:
    nkeys = _nkeys()
    known, stranger = _new_key(nkeys.PREFIX_BYTE_USER), _new_key(nkeys.PREFIX_BYTE_USER)
    conf = tmp_path / "nkey.conf"
    conf.write_text(f"authorization {{ users = [ {{ nkey: {known.public_key.decode()} }} ] }}\n")
    seed_file = tmp_path / "stranger.nk"
    seed_file.write_bytes(stranger.seed)
    server = nats_server_factory(extra_args=["-c", str(conf)])
    message = _refused({"NATS_URL": server.url, "NATS_NKEY_SEED": str(seed_file)})
    assert "authorization violation" in message.lower()
    assert stranger.seed.decode() not in message


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _jwt(issuer: Any, subject: str, name: str, nats_claims: dict[str, Any]) -> str:
    """A NATS JWT signed by ``issuer``: what `nsc` writes, built here with nkeys."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": nats_claims,
    }
    digest = hashlib.sha512(json.dumps(claims, sort_keys=True).encode()).digest()[:32]
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64url(issuer.sign(f'{head}.{body}'.encode()))}"


_ACCOUNT_LIMITS = {
    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
    "wildcards": True, "conn": -1, "leaf": -1,
}  # fmt: skip


def test_creds_file_in_operator_mode(nats_server_factory: Factory, tmp_path: Path) -> None:
    nkeys = _nkeys()
    operator = _new_key(nkeys.PREFIX_BYTE_OPERATOR)
    account = _new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    system = _new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _new_key(nkeys.PREFIX_BYTE_USER)
    op_pub, acct_pub, sys_pub = (k.public_key.decode() for k in (operator, account, system))
    op_jwt = _jwt(operator, op_pub, "trade2026", {"type": "operator", "version": 2})
    acct_jwt = _jwt(
        operator, acct_pub, "TRADING", {"limits": _ACCOUNT_LIMITS, "type": "account", "version": 2}
    )
    sys_jwt = _jwt(
        operator, sys_pub, "SYS", {"limits": _ACCOUNT_LIMITS, "type": "account", "version": 2}
    )
    user_jwt = _jwt(
        account,
        user.public_key.decode(),
        "marketdata",
        {
            "pub": {"allow": ["md.raw.>"]},
            "sub": {"allow": ["md.>"]},
            "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2,
        },
    )  # fmt: skip
    conf = tmp_path / "operator.conf"
    conf.write_text(
        f"operator: {op_jwt}\nsystem_account: {sys_pub}\nresolver: MEMORY\n"
        f"resolver_preload: {{\n  {acct_pub}: {acct_jwt}\n  {sys_pub}: {sys_jwt}\n}}\n"
    )
    creds = tmp_path / "marketdata.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    server = nats_server_factory(extra_args=["-c", str(conf)])

    async def main() -> tuple[bytes, Exception]:
        errors = Errors()
        nc = await _connect({"NATS_URL": server.url, "NATS_CREDS": str(creds)}, errors)
        sub = await nc.subscribe("md.raw.>")
        await nc.publish("orders.submit", b"forged")
        await nc.publish("md.raw.binance.ethusdt", b"raw")
        msg = await sub.next_msg(timeout=5)
        exc = await errors.wait()
        await nc.close()
        return bytes(msg.data), exc

    data, exc = asyncio.run(main())
    assert data == b"raw"
    assert "permissions violation" in str(exc).lower() and "orders.submit" in str(exc)


# -- TLS with a private CA ---------------------------------------------------------------------
def _ca_key_usage() -> Any:
    from cryptography import x509

    flags = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
    )
    return x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False, **flags,
    )  # fmt: skip


def _pki(tmp_path: Path, tag: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"trade2026 test CA {tag}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (tmp_path / f"{tag}-{n}.pem" for n in ("ca", "cert", "key"))
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


@pytest.fixture
def tls_server(
    nats_server_factory: Factory, tmp_path: Path
) -> Iterator[tuple[LocalNatsServer, Path]]:
    ca, cert, key = _pki(tmp_path, "server")
    conf = tmp_path / "tls.conf"
    conf.write_text(f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n  timeout: 2\n}}\n')
    yield nats_server_factory(extra_args=["-c", str(conf)]), ca


def test_tls_with_custom_ca_from_env(tls_server: tuple[LocalNatsServer, Path]) -> None:
    server, ca = tls_server

    async def main() -> tuple[bytes, bool]:
        nc = await _connect({"NATS_URL": server.url, "NATS_TLS_CA": str(ca)})
        sub = await nc.subscribe("md.ticks.TLS")
        await nc.publish("md.ticks.TLS", b"over tls")
        msg = await sub.next_msg(timeout=5)
        # nats-py keeps the asyncio writer on its transport; TLS shows as an ssl_object.
        writer = nc._transport._io_writer  # type: ignore[union-attr]
        tls = writer is not None and writer.get_extra_info("ssl_object") is not None
        await nc.close()
        return bytes(msg.data), bool(tls)

    data, encrypted = asyncio.run(main())
    assert data == b"over tls"
    assert encrypted


def test_tls_rejects_a_server_our_ca_did_not_sign(
    tls_server: tuple[LocalNatsServer, Path], tmp_path: Path
) -> None:
    server, _ = tls_server
    other_ca, _, _ = _pki(tmp_path, "other")
    message = _refused({"NATS_URL": server.url, "NATS_TLS_CA": str(other_ca)})
    assert "certificate verify failed" in message.lower()


def test_tls_server_is_not_trusted_without_our_ca(tls_server: tuple[LocalNatsServer, Path]) -> None:
    server, _ = tls_server
    assert "certificate verify failed" in _refused({"NATS_URL": server.url}).lower()


def test_config_repr_never_shows_secrets(tmp_path: Path) -> None:
    env = {
        "NATS_URL": "nats://127.0.0.1:4222",
        "NATS_USER": "orders",
        "NATS_PASSWORD": "pw-" + secrets.token_hex(8),
        "NATS_TOKEN": "tok-" + secrets.token_hex(8),
    }
    config = NatsConfig.from_env(env)
    for text in (repr(config), str(config), f"{config}"):
        assert env["NATS_PASSWORD"] not in text and env["NATS_TOKEN"] not in text
