"""Prices and cost arithmetic, in integer nano-dollars (1e-9 USD).

Integers because budgets are compared and summed across processes in Table Storage:
floats would drift, and a ceiling that drifts is not a ceiling. Costs round up, so a
reservation is never smaller than the exact cost.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, Field, TypeAdapter, field_validator

NANO_PER_USD = 1_000_000_000


class Usage(BaseModel):
    """Token usage exactly as the provider reported it."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)

# USD per million tokens (input, output). Public list prices; override with
# SKF_MODEL_PRICES for your contract, region or deployment names.
DEFAULT_PRICES: dict[str, tuple[str, str]] = {
    "gpt-4o": ("2.50", "10.00"),
    "gpt-4o-mini": ("0.15", "0.60"),
    "gpt-4.1": ("2.00", "8.00"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.40"),
    "o3-mini": ("1.10", "4.40"),
    "gpt-35-turbo": ("0.50", "1.50"),
    "smollm2": ("0", "0"),
    # Embedding models (document memory): input tokens only.
    "all-minilm-l6-v2": ("0", "0"),
    "text-embedding-3-small": ("0.02", "0"),
    "text-embedding-3-large": ("0.13", "0"),
    "text-embedding-ada-002": ("0.10", "0"),
}


@dataclass(frozen=True)
class Price:
    """USD per million input and output tokens."""

    input_per_million: Decimal
    output_per_million: Decimal

    def cost_nano(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Exact cost in nano-USD, rounded up."""
        # USD/M tokens * tokens / 1e6 * 1e9 nano/USD = price * tokens * 1000
        exact = (self.input_per_million * prompt_tokens + self.output_per_million * completion_tokens) * 1000
        return math.ceil(exact)

    def max_output_tokens(self, budget_nano: int, prompt_tokens: int) -> int:
        """The most output tokens that fit in ``budget_nano`` after the prompt (may be <= 0)."""
        left = Decimal(budget_nano) - self.input_per_million * prompt_tokens * 1000
        if self.output_per_million == 0:
            return 1 << 30 if left >= 0 else -1
        return math.floor(left / (self.output_per_million * 1000))


class PriceSpec(BaseModel):
    """A price as operators write it (``SKF_MODEL_PRICES``, a deployment's ``price``):
    ``{"input": 0.15, "output": 0.6}``, USD per million tokens."""

    input: Decimal
    output: Decimal

    @field_validator("input", "output")
    @classmethod
    def _not_negative(cls, value: Decimal) -> Decimal:
        if value < 0:
            raise ValueError("a price must not be negative")
        return value

    @property
    def price(self) -> Price:
        """The value arithmetic uses."""
        return Price(self.input, self.output)


def price_table(overrides: Mapping[str, PriceSpec]) -> dict[str, Price]:
    """The default prices overlaid with ``overrides`` (by model)."""
    table = {model: Price(Decimal(i), Decimal(o)) for model, (i, o) in DEFAULT_PRICES.items()}
    return table | {model: spec.price for model, spec in overrides.items()}


@functools.cache
def _overrides() -> TypeAdapter[dict[str, PriceSpec]]:
    return TypeAdapter(dict[str, PriceSpec])


def parse_prices(raw: str) -> dict[str, Price]:
    """Defaults overlaid with ``{"model": {"input": 0.15, "output": 0.6}, ...}`` JSON
    (the settings read ``SKF_MODEL_PRICES`` as the same ``PriceSpec`` values)."""
    return price_table(_overrides().validate_json(raw) if raw.strip() else {})


def usd(nano: int) -> float:
    """Nano-USD as a float for display (never for arithmetic)."""
    return nano / NANO_PER_USD


def nano(usd_amount: float | str | Decimal) -> int:
    """USD (as typed by an operator) to nano-USD, rounded down."""
    return math.floor(Decimal(str(usd_amount)) * NANO_PER_USD)
