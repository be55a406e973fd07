"""Tenants, their limits and their API keys, as values.

The model only: what a tenant may use and which keys it holds. How they are stored
(Table Storage entities) is ``sk_core.accounts._store``; this module imports nothing outside
the standard library, so the limits policy and authentication can use it freely.

A key looks like ``skf_<key id>_<secret>``: the prefix makes leaked keys easy to spot
(secret scanners), the key id finds the record without scanning, and the secret is 32
random bytes. Only an HMAC-SHA256 of the whole key (with a server-side pepper) is
stored, so a stolen table does not yield usable keys.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from datetime import datetime

KEY_PREFIX = "skf"
_KEY_RE = re.compile(r"^skf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
ALL = "*"
# Operator keys: their own prefix (a scanner, a log reader and ``parse_key`` can tell
# them from tenant keys at a glance), their own records, one scope.
ADMIN_KEY_PREFIX = "skfadm"
_ADMIN_KEY_RE = re.compile(r"^skfadm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
ADMIN_SCOPE = "admin"
# The owner recorded on admin key records: not a valid tenant id, so never a tenant.
OPERATORS = "_operators"


class TenantError(Exception):
    """A tenant or key operation was refused (unknown id, duplicate, bad value)."""


@dataclass(frozen=True)
class Limits:
    """What a tenant may use. Budgets are in nano-USD (see pricing.py)."""

    requests_per_minute: int = 60
    tokens_per_minute: int = 100_000
    max_concurrent: int = 8
    daily_budget_nano: int = 5 * 10**9
    monthly_budget_nano: int = 50 * 10**9

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent"):
            if getattr(self, name) < 1:
                raise TenantError(f"{name} must be at least 1")
        for name in ("daily_budget_nano", "monthly_budget_nano"):
            if getattr(self, name) < 0:
                raise TenantError(f"{name} must not be negative")


@dataclass(frozen=True)
class Tenant:
    """A customer of the API."""

    id: str
    display_name: str
    status: str = "active"
    limits: Limits = field(default_factory=Limits)
    allowed_functions: tuple[str, ...] = (ALL,)

    @property
    def active(self) -> bool:
        """Disabled tenants are refused (403) even with a valid key."""
        return self.status == "active"

    def allows(self, function_id: str) -> bool:
        """True when the tenant may call ``plugin/name``."""
        return ALL in self.allowed_functions or function_id in self.allowed_functions


@dataclass(frozen=True)
class ApiKey:
    """A stored key record (never the key itself)."""

    key_id: str
    tenant_id: str
    key_hash: str
    scopes: tuple[str, ...]
    status: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = None

    def allows(self, function_id: str) -> bool:
        """True when this key's scopes include ``plugin/name``."""
        return ALL in self.scopes or function_id in self.scopes


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``secret`` is shown once and never stored."""

    record: ApiKey
    secret: str


def parse_key(presented: str) -> str | None:
    """The key id of a well-formed key, else None."""
    match = _KEY_RE.match(presented)
    return match.group(1) if match else None


def parse_admin_key(presented: str) -> str | None:
    """The key id of a well-formed admin key, else None."""
    match = _ADMIN_KEY_RE.match(presented)
    return match.group(1) if match else None


def hash_key(presented: str, pepper: str) -> str:
    """HMAC-SHA256 of the full key under the server's pepper."""
    return hmac.new(pepper.encode(), presented.encode(), hashlib.sha256).hexdigest()
