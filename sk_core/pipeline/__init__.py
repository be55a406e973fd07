"""The one use case every entry shares: a prompt function call under hard limits.

    authenticate → screen → admit → invoke → settle → record

It takes plain values (headers as a mapping, a principal, a function spec, validated
arguments, the requested answer cap, the parsed cache ``Directive``) and returns an
``Outcome``; it knows nothing of HTTP. The handlers parse a request, call it and
render what it returns, so a second entry (another wire format, a streamed answer) is
another thin adapter over the same stages, and the whole flow can be tested and
benchmarked without a web request.

What a call did is written into an ``AuditEntry`` as it goes (a plain record the
caller owns), so that a call that fails half-way still leaves its tenant, guard
verdict and charge behind for the audit row.
"""

from sk_core.pipeline._deadline import fail_closed
from sk_core.pipeline._outcome import Outcome
from sk_core.pipeline._pipeline import Pipeline
from sk_core.pipeline._streamed import StreamedCall

__all__ = ["Outcome", "Pipeline", "StreamedCall", "fail_closed"]
