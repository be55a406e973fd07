"""The model: deployments and their resilience (breakers, the retry budget), the cached
runtime provider, Semantic Kernel wiring and the chat service over the OpenAI SDK."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sk_core import startup
from sk_core.model._deployments import (
    BreakerState,
    Chain,
    CircuitBreaker,
    Deployment,
    DeploymentHealth,
    RetryBudget,
    RoutingTable,
)
from sk_core.model._provider import KeyProvider, RuntimeProvider
from sk_core.model._sk_loader import import_semantic_kernel

if TYPE_CHECKING:
    from sk_core.model._chat_service import REQUEST_SETTINGS, ChatSettings
    from sk_core.model._completion import Completion, ModelStream, ToolCall
    from sk_core.model._runtime import SERVICE_ID, ModelRuntime, build_runtime, make_health

# Semantic Kernel and the OpenAI SDK load on first use of these names, not on import
# of the package: the pipeline and the hosts import the light half at cold start.
_LAZY = {
    "ChatSettings": "sk_core.model._chat_service",
    "REQUEST_SETTINGS": "sk_core.model._chat_service",
    "Completion": "sk_core.model._completion",
    "ModelRuntime": "sk_core.model._runtime",
    "ModelStream": "sk_core.model._completion",
    "SERVICE_ID": "sk_core.model._runtime",
    "ToolCall": "sk_core.model._completion",
    "build_runtime": "sk_core.model._runtime",
    "make_health": "sk_core.model._runtime",
}

__getattr__ = startup.lazy_attributes(__name__, _LAZY)


__all__ = [
    "REQUEST_SETTINGS",
    "SERVICE_ID",
    "BreakerState",
    "Chain",
    "ChatSettings",
    "CircuitBreaker",
    "Completion",
    "Deployment",
    "DeploymentHealth",
    "KeyProvider",
    "ModelRuntime",
    "ModelStream",
    "RetryBudget",
    "RoutingTable",
    "RuntimeProvider",
    "ToolCall",
    "build_runtime",
    "import_semantic_kernel",
    "make_health",
]
