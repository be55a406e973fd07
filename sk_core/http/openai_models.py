"""The OpenAI wire format's request and response bodies (the subset we implement).

The models of ``POST /api/v1/chat/completions`` and ``GET /api/v1/models``, in one
place: the handlers (``sk_core.http.openai_compat``) validate and render with them and
the OpenAPI document (``sk_core.http.openapi``) publishes them. Tools, tool messages,
message names and ``response_format`` are part of the request.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from sk_core.catalog import MAX_TOKENS_LIMIT, clean_text
from sk_core.pricing import Usage

# The request parameters we implement; any other is refused with a 400 naming it.
SUPPORTED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
        "seed", "presence_penalty", "frequency_penalty", "user", "stream", "stream_options", "n",
        "tools", "tool_choice", "parallel_tool_calls", "response_format",
    }
)
# Parameters we do not implement, at the value that asks for nothing we do not do (no
# log probabilities, no stored completion, no bias): the same as leaving them out, so a
# client that sends its defaults explicitly is answered. Any other value is refused.
NO_OP_VALUES: dict[str, object] = {"logprobs": False, "store": False, "logit_bias": {}}
# Sampling parameters passed to the model as given (the answer cap is admission's).
_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "user")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """A content part; only text parts are supported (no images or audio)."""

    type: Literal["text"]
    text: str


class CalledFunction(_Strict):
    """The function of an assistant's tool call: its name and JSON arguments (text)."""

    name: Annotated[str, Field(max_length=64)]
    arguments: Annotated[str, Field(max_length=32_000)]


class ToolCallIn(_Strict):
    """A tool call in an earlier assistant message of the conversation."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(_Strict):
    """One message. ``developer`` is OpenAI's newer name for ``system``; a ``tool``
    message answers an assistant's tool call (``tool_call_id``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(min_length=1, max_length=128)] | None = None
    tool_call_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    # What an assistant message read back from an OpenAI answer may carry; not sent on.
    refusal: str | None = None
    annotations: list[Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Message:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message may carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        if self.content is None and self.tool_calls is None:
            raise ValueError("content is required (it may be null only with tool_calls)")
        return self

    def text(self) -> str:
        """The content as one string (text parts joined, as OpenAI reads them)."""
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    @property
    def plain(self) -> bool:
        """A message the chat function's conversation can hold (role and text only)."""
        return self.role != "tool" and self.tool_calls is None and self.name is None

    def wire(self) -> dict[str, Any]:
        """The message as sent to the model (``developer`` as ``system``, content as text)."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": None if self.content is None else clean_text(self.text()),
        }
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls is not None:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionDefinition(_Strict):
    """A caller's tool: a function the model may ask the caller to run."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: Annotated[str, Field(max_length=8_000)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    """One ``tools`` item."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    """The function a ``tool_choice`` object names."""

    name: str


class NamedToolChoice(_Strict):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``."""

    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``: the schema the answer must match."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", default_factory=dict)
    strict: bool | None = None


class ResponseFormat(_Strict):
    """``response_format``: text (the default), any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only with it")
        if self.json_schema is not None:
            try:
                Draft202012Validator.check_schema(self.json_schema.schema_)
            except SchemaError as exc:
                raise ValueError(f"json_schema.schema is not a valid JSON Schema: {exc.message}") from None
        return self


class StreamOptions(_Strict):
    """``stream_options``: whether the client wants the usage chunk."""

    include_usage: Annotated[bool, Field(strict=True)] = False


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
    stream: Annotated[bool, Field(strict=True)] = False  # true or false; "yes" is refused
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    tools: Annotated[list[ToolDefinition], Field(min_length=1, max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if choice is not None and tools is None:
            raise ValueError("tool_choice needs tools")
        named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        if named is not None and named not in {t.function.name for t in tools or ()}:
            raise ValueError("tool_choice names a function that is not in tools")
        return choice

    @property
    def structured(self) -> bool:
        """Needs the messages path: tools, tool messages, names or a JSON answer."""
        json_answer = self.response_format is not None and self.response_format.type != "text"
        return self.tools is not None or json_answer or not all(m.plain for m in self.messages)

    def extra(self) -> dict[str, Any]:
        """The members passed to the model as given (``tools`` aside)."""
        extra: dict[str, Any] = {}
        if self.parallel_tool_calls is not None:
            extra["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format is not None and self.response_format.type != "text":
            extra["response_format"] = self.response_format.model_dump(by_alias=True, exclude_none=True)
        return extra

    def options(self) -> dict[str, Any]:
        """The sampling parameters the caller set."""
        return {name: value for name in _SAMPLING if (value := getattr(self, name)) is not None}

    def answer_cap(self) -> int | None:
        """The answer cap asked for (None: none): ``max_completion_tokens``, OpenAI's
        newer name, before the older ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class ToolCallOut(BaseModel):
    """A function call the model asks the caller to run."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class AnswerMessage(BaseModel):
    """The assistant's message of a chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


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
