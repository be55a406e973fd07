"""Safety: the prompt-injection guard (``sk_core.safety.guard``) and output redaction.

Redaction's layout: ``_redactor`` (:class:`Redactor`, the kinds' documentation, prompt
echo), ``_values`` (credentials, e-mail, IBAN, card, phone), ``_links`` (link and image
destinations, read as a CommonMark renderer reads them), ``_streaming``
(:class:`StreamingRedaction`) and ``_common`` (kinds, marker, finder machinery).
"""

from __future__ import annotations

from sk_core.safety._common import (
    ALL_KINDS,
    EMAIL,
    IBAN,
    LINK,
    PAYMENT_CARD,
    PHONE,
    PROMPT_ECHO,
    RULES_VERSION,
    SECRET,
    VALUE_KINDS,
    RedactionResult,
    marker,
    policy_id,
)
from sk_core.safety._redactor import Redactor, redact, template_literals
from sk_core.safety._streaming import StreamingRedaction
from sk_core.safety._values import iban_valid, luhn_valid

__all__ = [
    "ALL_KINDS",
    "EMAIL",
    "IBAN",
    "LINK",
    "PAYMENT_CARD",
    "PHONE",
    "PROMPT_ECHO",
    "RULES_VERSION",
    "SECRET",
    "VALUE_KINDS",
    "RedactionResult",
    "Redactor",
    "StreamingRedaction",
    "iban_valid",
    "luhn_valid",
    "marker",
    "policy_id",
    "redact",
    "template_literals",
]
