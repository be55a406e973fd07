"""Accounts: tenants, their limits and API keys (values), the table store that keeps them,
and authentication (API key -> principal)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sk_core import startup
from sk_core.accounts._auth import (
    Authenticator,
    Principal,
    TooManyUnknownKeys,
    client_address,
    presented_key,
)
from sk_core.accounts._values import (
    ADMIN_SCOPE,
    ALL,
    ApiKey,
    Limits,
    Tenant,
    TenantError,
    hash_key,
    parse_admin_key,
    parse_key,
)

if TYPE_CHECKING:
    from sk_core.accounts._store import (
        TABLES,
        TenantStore,
        tenant_entity,
        tenant_from_entity,
        validate_tenant_id,
    )

# The table store (and so the Azure SDK) loads on first use of these names: the limits
# policy and the pipeline need only the values above, and stay free of any SDK.
_LAZY = {
    "TABLES": "sk_core.accounts._store",
    "TenantStore": "sk_core.accounts._store",
    "tenant_entity": "sk_core.accounts._store",
    "tenant_from_entity": "sk_core.accounts._store",
    "validate_tenant_id": "sk_core.accounts._store",
}

__getattr__ = startup.lazy_attributes(__name__, _LAZY)


__all__ = [
    "ADMIN_SCOPE",
    "ALL",
    "TABLES",
    "ApiKey",
    "Authenticator",
    "Limits",
    "Principal",
    "Tenant",
    "TenantError",
    "TenantStore",
    "TooManyUnknownKeys",
    "client_address",
    "hash_key",
    "parse_admin_key",
    "parse_key",
    "presented_key",
    "tenant_entity",
    "tenant_from_entity",
    "validate_tenant_id",
]
