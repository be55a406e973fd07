"""Response shapes of the API (request shapes come from the prompt files, see catalog.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from sk_core.pricing import Usage


class ToolCallInfo(BaseModel):
    """One tool execution of a run."""

    name: str = Field(description="The plugin function, as plugin-function.")
    outcome: Literal["ok", "error", "timeout", "withheld", "refused"]
    duration_ms: float


class RunInfo(BaseModel):
    """What a tool-using function's run did (README, "Tools and plugins")."""

    status: Literal["completed", "incomplete"] = Field(
        description="completed: the model answered; incomplete: a limit stopped the run (see code)."
    )
    code: str | None = Field(
        default=None,
        description="Why an incomplete run stopped: max_steps, max_tool_calls, run_cost_limit, "
        "or the tenant limit that refused the next step (budget_exceeded, rate_limited...).",
    )
    steps: int = Field(ge=0, description="Model round trips made (each admitted and charged).")
    tool_calls: list[ToolCallInfo]
    cost_usd: float = Field(ge=0, description="The run's total charge: the sum of its steps.")


class ModelAnswer(BaseModel):
    """Fields every answer produced by a model carries."""

    model: str = Field(description="The model that answered, as the provider reported it.")
    usage: Usage
    finish_reason: str | None = Field(default=None, description="Why the model stopped (stop, length...).")
    cost_usd: float = Field(ge=0, description="What this request cost the tenant, in USD.")
    redacted: int = Field(default=0, ge=0, description="How many items were redacted from the answer.")
    redactions: dict[str, int] = Field(default_factory=dict, description="Redacted items by kind.")
    cached: bool = Field(
        default=False,
        description="Answered from the response cache: `usage` is the original answer's, "
        "`cost_usd` is 0.",
    )
    run: RunInfo | None = Field(default=None, description="A tool-using function's run; absent otherwise.")


class StreamDone(ModelAnswer):
    """The last event of a streamed catalog answer (``event: done``): its accounting;
    the text came before it in ``delta`` events."""


class SummarizeResponse(ModelAnswer):
    """``POST /api/v1/summarize``."""

    summary: str


class AssistantMessage(BaseModel):
    """The assistant's reply in a chat."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatResponse(ModelAnswer):
    """``POST /api/v1/chat``."""

    message: AssistantMessage


class InvokeResponse(ModelAnswer):
    """``POST /api/v1/functions/{plugin}/{function}``."""

    plugin: str
    function: str
    result: str


class FunctionInput(BaseModel):
    """One input variable of a catalog function."""

    name: str
    description: str
    required: bool
    default: Any = None
    schema_: dict[str, Any] = Field(alias="schema")


class ToolInfo(BaseModel):
    """A plugin function a catalog function's model may call."""

    plugin: str
    name: str
    description: str


class RunLimitsInfo(BaseModel):
    """A tool-using function's run limits (a request may lower them in ``run_limits``)."""

    max_steps: int
    max_tool_calls: int
    max_cost_usd: float | None = None
    tool_timeout_seconds: float
    max_result_chars: int


class FunctionInfo(BaseModel):
    """One entry of the catalog."""

    plugin: str
    name: str
    description: str
    path: str
    input_variables: list[FunctionInput]
    tools: list[ToolInfo] | None = Field(default=None, description="The tools it may call, if any.")
    run_limits: RunLimitsInfo | None = None


class FunctionList(BaseModel):
    """``GET /api/v1/functions``."""

    functions: list[FunctionInfo]


class HealthResponse(BaseModel):
    """``GET /api/health``: the process is alive."""

    status: Literal["ok"]


class DependencyStatus(BaseModel):
    """One dependency's readiness."""

    status: Literal["ok", "starting", "error"]
    code: str | None = None


class ReadyResponse(BaseModel):
    """``GET /api/ready``: 200 when every dependency is usable, else 503."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, DependencyStatus]


class FieldError(BaseModel):
    """One invalid field of a request body."""

    field: str
    message: str


class Problem(BaseModel):
    """The error body of every route (RFC 9457 problem details plus ``code``)."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    errors: list[FieldError] | None = None
