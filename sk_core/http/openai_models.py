"""The OpenAI wire format's request and response bodies (the subset we implement).

The models of ``POST /api/v1/chat/completions`` and ``GET /api/v1/models``, in one
place: the handlers (``sk_core.http.openai_compat``) validate and render with them and
the OpenAPI document (``sk_core.http.openapi``) publishes them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sk_core.catalog import MAX_TOKENS_LIMIT
from sk_core.pricing import Usage

# The request parameters we implement; any other is refused with a 400 naming it.
SUPPORTED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
        "seed", "presence_penalty", "frequency_penalty", "user", "stream", "stream_options", "n",
    }
)
# Sampling parameters passed to the model as given (the answer cap is admission's).
_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "user")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """A content part; only text parts are supported (no images or audio)."""

    type: Literal["text"]
    text: str


class Message(_Strict):
    """One message. ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string (text parts joined, as OpenAI reads them)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    """``stream_options``: whether the client wants the usage chunk."""

    include_usage: bool = False


Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT, strict=True)]


class ChatCompletionRequest(_Strict):
    """The request body of ``POST /api/v1/chat/completions`` (the subset we implement)."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1, max_length=64)]
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None

    def options(self) -> dict[str, Any]:
        """The sampling parameters the caller set."""
        return {name: value for name in _SAMPLING if (value := getattr(self, name)) is not None}

    def answer_cap(self) -> int | None:
        """The answer cap asked for (None: none): ``max_completion_tokens``, OpenAI's
        newer name, before the older ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class AnswerMessage(BaseModel):
    """The assistant's message of a chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """The one choice of a chat completion (``n`` = 1)."""

    index: int = 0
    message: AnswerMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """``POST /api/v1/chat/completions`` without ``stream``: OpenAI's ``chat.completion``,
    plus what it cost (``cost_usd``, also in ``X-Request-Cost-USD``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    cost_usd: float = Field(ge=0)


class ErrorDetail(BaseModel):
    """OpenAI's error object, with our ``code`` and the refused field as ``param``."""

    model_config = ConfigDict(extra="allow")  # a budget refusal adds its figures

    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """The error body of the OpenAI-compatible routes."""

    error: ErrorDetail


class ModelInfo(BaseModel):
    """One model of ``GET /api/v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /api/v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelInfo]
