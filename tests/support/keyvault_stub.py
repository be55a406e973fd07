"""A minimal local stand-in for Azure Key Vault's secrets REST API, over HTTPS.

No Key Vault emulator exists (PyPI, npm, Debian), and the real ``SecretClient`` insists
on https and on Key Vault's challenge-based authentication, so this module serves just
enough of the protocol for the real client to run unmodified:

* ``GET /secrets/{name}/`` (latest; the SDK sends the empty version with the slash),
  ``GET /secrets/{name}`` and ``GET /secrets/{name}/{version}`` with ``?api-version=``;
* the challenge: a request without ``Authorization: Bearer`` gets 401 and
  ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>",
  resource="https://vault.azure.net"``; the SDK then asks its credential for
  ``https://vault.azure.net/.default`` and retries. Because the resource domain is not
  the request's (127.0.0.1), clients must pass ``verify_challenge_resource=False``;
* a bearer token other than :attr:`KeyVaultStub.token` gets 401 (``invalid_token``);
* a missing secret gets 404 with Key Vault's ``SecretNotFound`` error body.

It runs uvicorn in a background thread (its own event loop, so a test's event loop can
block on the client while the server answers) with a self-signed certificate for
127.0.0.1/localhost generated with ``cryptography``. Tests control it directly through
thread-safe methods: set/rotate/delete secrets, stop/start (connection refused while
stopped), answer every request with an error status, and count reads.

Entra ID cannot run here, so tests authenticate with :class:`StaticTokenCredential`, a
stand-in ``AsyncTokenCredential`` that returns a fixed token.
"""

from __future__ import annotations

import datetime
import ipaddress
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.threaded_server import ThreadedServer

__all__ = [
    "CHALLENGE",
    "STUB_TOKEN",
    "VAULT_SCOPE",
    "KeyVaultStub",
    "StaticTokenCredential",
    "make_self_signed_cert",
]

TENANT_ID = "00000000-0000-0000-0000-000000000000"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="https://vault.azure.net"'
VAULT_SCOPE = "https://vault.azure.net/.default"
#: The one bearer token the stub accepts.
STUB_TOKEN = "stub-vault-token"


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed cert for 127.0.0.1 and localhost; returns (cert, key) paths.

    The certificate is its own trust anchor: clients pass the cert path as their CA file.
    EC P-256 keeps generation and handshakes fast.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyvault-stub")])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "keyvault-stub.crt"
    key_path = directory / "keyvault-stub.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class StaticTokenCredential:
    """An ``AsyncTokenCredential`` returning a fixed token (Entra ID cannot run here).

    Records the scopes it was asked for, so a test can check the challenge flow asked
    for the vault's scope.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[str] = []

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """The fixed token, valid for an hour."""
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        """Nothing to release."""

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None


@dataclass
class _Version:
    id: str
    value: str
    created: int


@dataclass
class _State:
    secrets: dict[str, list[_Version]] = field(default_factory=dict)
    reads: Counter[str] = field(default_factory=Counter)
    fail_status: int | None = None


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class KeyVaultStub(ThreadedServer):
    """The server and its control surface. Use as a context manager or call start/stop."""

    def __init__(self, directory: Path, *, token: str = STUB_TOKEN) -> None:
        super().__init__()
        self.token = token
        self.cert_path, self._key_path = make_self_signed_cert(directory)
        self._lock = threading.Lock()
        self._state = _State()
        self.app = Starlette(
            routes=[
                Route("/secrets/{name}", self._get_secret, methods=["GET"]),
                Route("/secrets/{name}/", self._get_secret, methods=["GET"]),
                Route("/secrets/{name}/{version}", self._get_secret, methods=["GET"]),
            ]
        )

    @property
    def vault_url(self) -> str:
        """What a ``SecretClient`` is given as ``vault_url``."""
        return f"https://127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------

    def set_secret(self, name: str, value: str) -> str:
        """Create the secret or rotate it (a new version); returns the version id."""
        version = _Version(id=uuid.uuid4().hex, value=value, created=int(time.time()))
        with self._lock:
            self._state.secrets.setdefault(name, []).append(version)
        return version.id

    def delete_secret(self, name: str) -> None:
        """Remove the secret and all its versions."""
        with self._lock:
            self._state.secrets.pop(name, None)

    def reads(self, name: str) -> int:
        """Authorized GETs of ``name`` so far (the challenge request is not counted)."""
        with self._lock:
            return self._state.reads[name]

    def fail_with(self, status: int | None) -> None:
        """Answer every request with ``status`` (e.g. 503); None restores normal service."""
        with self._lock:
            self._state.fail_status = status

    def reset(self) -> None:
        """Forget all secrets, counts and failure modes."""
        with self._lock:
            self._state = _State()

    def server_options(self) -> dict[str, Any]:
        """Serve HTTPS with the stub's self-signed certificate."""
        return {"ssl_certfile": str(self.cert_path), "ssl_keyfile": str(self._key_path)}

    # -- the REST API ----------------------------------------------------------------

    async def _get_secret(self, request: Request) -> Response:
        response = self._answer(request)
        # No keep-alive: an idle pooled TLS connection would hold up stop() (uvicorn waits
        # for it, then leaks it when its loop closes), and "down" must mean refused.
        response.headers["Connection"] = "close"
        return response

    def _answer(self, request: Request) -> Response:
        if "api-version" not in request.query_params:
            return _error(400, "BadParameter", "The 'api-version' query parameter is missing.")
        with self._lock:
            fail_status = self._state.fail_status
        if fail_status is not None:
            return _error(fail_status, "ServiceUnavailable", "The stub is failing on purpose.")
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            return _error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                headers={"WWW-Authenticate": CHALLENGE},
            )
        if authorization.removeprefix("Bearer ") != self.token:
            return _error(
                401,
                "Unauthorized",
                "AKV10032: Invalid issuer.",
                headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'},
            )
        name: str = request.path_params["name"]
        wanted: str = request.path_params.get("version", "")
        with self._lock:
            self._state.reads[name] += 1
            versions = list(self._state.secrets.get(name, []))
        found = [v for v in versions if v.id == wanted] if wanted else versions[-1:]
        if not found:
            return _error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {name}/{wanted} was not found in this key vault.",
            )
        version = found[0]
        body: dict[str, Any] = {
            "value": version.value,
            "id": f"{self.vault_url}/secrets/{name}/{version.id}",
            "attributes": {
                "enabled": True,
                "created": version.created,
                "updated": version.created,
                "recoveryLevel": "Recoverable+Purgeable",
            },
        }
        return JSONResponse(body)
