"""Safety: the prompt-injection guard (``sk_core.safety.guard``) and output redaction."""

from __future__ import annotations

from sk_core.safety._redaction import (
    ALL_KINDS,
    EMAIL,
    IBAN,
    LINK,
    PAYMENT_CARD,
    PHONE,
    PROMPT_ECHO,
    SECRET,
    VALUE_KINDS,
    RedactionResult,
    Redactor,
    StreamingRedaction,
    iban_valid,
    luhn_valid,
    marker,
    redact,
    template_literals,
)

__all__ = [
    "ALL_KINDS",
    "EMAIL",
    "IBAN",
    "LINK",
    "PAYMENT_CARD",
    "PHONE",
    "PROMPT_ECHO",
    "SECRET",
    "VALUE_KINDS",
    "RedactionResult",
    "Redactor",
    "StreamingRedaction",
    "iban_valid",
    "luhn_valid",
    "marker",
    "redact",
    "template_literals",
]
