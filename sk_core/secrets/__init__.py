"""Secrets: Key Vault or settings-backed secrets with caching and refresh."""

from __future__ import annotations

from sk_core.secrets._store import (
    CachedSecrets,
    EnvSecretSource,
    KeyVaultSecretSource,
    OneShotSecrets,
    SecretMissing,
    SecretReader,
    SecretSource,
    SecretUnavailable,
)

__all__ = [
    "CachedSecrets",
    "EnvSecretSource",
    "KeyVaultSecretSource",
    "OneShotSecrets",
    "SecretMissing",
    "SecretReader",
    "SecretSource",
    "SecretUnavailable",
]
