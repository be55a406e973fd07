"""The function catalog: prompt functions read from ``sk_core/prompts/<plugin>/<name>.yaml``.

The YAML files are Semantic Kernel's prompt format (name, description, template,
input_variables, execution_settings). This module reads them with PyYAML only, so
listing functions and validating arguments never imports Semantic Kernel (cold start);
``kernel.py`` hands the same YAML text to ``KernelFunctionFromPrompt.from_yaml``.

Each input variable may carry a ``json_schema`` (a JSON string, as in SK). We support
the subset that request validation needs: string (minLength, maxLength, enum),
integer/number (minimum, maximum), boolean, and an array of chat messages marked with
``"x-sk-chat-history": true`` (converted to a ``ChatHistory`` before invoking).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from sk_core.tools import ToolSettings, parse_tool_settings

PROMPTS_DIR = Path(__file__).parent / "prompts"

# Every invocation may cap the answer length; budgets (admission) clamp it further.
MAX_TOKENS_LIMIT = 4096
# What a request body may carry besides the function's inputs: options of the call, not
# arguments of the prompt (so no input may take their names).
REQUEST_OPTIONS = ("max_tokens", "run_limits")
# Chat templates wrap each message in a few special tokens (ChatML: <|im_start|>, the
# role, a newline, <|im_end|>) and open the assistant's turn; these allowances cover
# them generously for the templates we know.
_PER_MESSAGE_TOKENS = 8
_FIXED_OVERHEAD_TOKENS = 16


# The chat parameters a prompt file's execution_settings may set, named as in the OpenAI
# API (chat_service.ChatSettings has a field for each). Anything else is refused when
# the catalog loads: SK would drop an unknown key silently at request time.
CHAT_SETTINGS = (
    "max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty", "stop", "seed"
)
# SK's template engines (handlebars is imported only when a prompt uses it: sk_loader.py).
TEMPLATE_FORMATS = ("semantic-kernel", "handlebars", "jinja2")


# C0/C1 control characters and DEL, except tab, line feed and carriage return: they have
# no place in prose, and some (e.g. NUL, ESC, bidi tricks' companions) are used to hide
# instructions from human reviewers or to break log and terminal output.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Unicode NFC; rejects control characters other than tab, newline and carriage return,
    and lone surrogates (valid JSON escapes like "\\ud800" that are not text and cannot be
    encoded as UTF-8)."""
    if _SURROGATE.search(value):
        raise ValueError("unpaired surrogate code points are not allowed")
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"control character U+{ord(found.group()):04X} is not allowed")
    return unicodedata.normalize("NFC", value)


# The same rule, published in the OpenAPI document (validation itself is clean_text's,
# for its clearer error message).
_TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F\\uD800-\\uDFFF]*$"
Text = Annotated[str, AfterValidator(clean_text), Field(json_schema_extra={"pattern": _TEXT_PATTERN})]


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Annotated[Text, Field(min_length=1, max_length=32_000)]


@dataclass(frozen=True)
class InputSpec:
    """One declared input variable of a prompt function."""

    name: str
    description: str
    required: bool
    default: Any
    schema: dict[str, Any]

    @property
    def is_chat_history(self) -> bool:
        """True when the variable carries a conversation (rendered as SK chat history)."""
        return bool(self.schema.get("x-sk-chat-history"))

    @property
    def answer_tokens(self) -> tuple[int, int] | None:
        """``(per, plus)`` when the answer's natural length scales with this integer input.

        Declared in the prompt file as ``"x-sk-answer-tokens": {"per": 2, "plus": 16}``
        on e.g. a word limit: a call that names no ``max_tokens`` is then capped at
        ``per * value + plus`` (and never above the function's own ``max_tokens``).
        """
        rule = self.schema.get("x-sk-answer-tokens")
        if rule is None:
            return None
        return int(rule["per"]), int(rule.get("plus", 0))


@dataclass(frozen=True)
class CachePolicy:
    """A function's response-cache choice (the prompt file's top-level ``cache:`` block).

    Off unless the file opts in. A function sampled at temperature > 0 (or at the
    provider's default, which is 1) gives a different answer each time on purpose, so
    a bare ``cache:`` block does not turn it on; ``enabled: true`` does. ``shared``
    lets every tenant read every other tenant's answers to the same input (README,
    *Response cache*, explains when that is safe).
    """

    enabled: bool = False
    ttl_seconds: float | None = None  # None: SKF_CACHE_TTL_SECONDS
    shared: bool = False

    @classmethod
    def parse(cls, raw: Any, temperature: float | None, where: str) -> CachePolicy:
        """The policy a ``cache:`` value declares; raises ``ValueError`` naming ``where``."""
        if raw is None or raw is False:
            return cls()
        block: dict[str, Any] = {"enabled": True} if raw is True else raw
        if not isinstance(block, dict) or set(block) - {"enabled", "ttl_seconds", "shared"}:
            raise ValueError(
                f"{where}: cache must be true, false or a mapping of enabled, ttl_seconds, shared"
            )
        enabled, shared, ttl = block.get("enabled"), block.get("shared", False), block.get("ttl_seconds")
        if enabled not in (None, True, False) or shared not in (True, False):
            raise ValueError(f"{where}: cache.enabled and cache.shared must be true or false")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
            raise ValueError(f"{where}: cache.ttl_seconds must be a positive number")
        if enabled is None:
            enabled = temperature is not None and temperature == 0
        return cls(enabled=bool(enabled), ttl_seconds=None if ttl is None else float(ttl), shared=shared)


@dataclass(frozen=True)
class RequestOptions:
    """A call's options beside the prompt's arguments (``REQUEST_OPTIONS``)."""

    max_tokens: int | None = None  # the caller's answer cap (None: the function's default)
    # Lower run limits for a tool-using function (validated: each at most the file's).
    run_limits: dict[str, Any] | None = None


@dataclass(frozen=True)
class FunctionSpec:
    """A prompt function as declared in its YAML file."""

    plugin: str
    name: str
    description: str
    inputs: tuple[InputSpec, ...]
    yaml_text: str
    template: str  # the template's own text (an answer must not echo it)
    template_bytes: int
    default_max_tokens: int
    # The function's input variables (what the template sees), and the request body:
    # those inputs plus the request's own options (``max_tokens``, ``run_limits``),
    # which are not arguments of the prompt (``split_request`` takes them apart).
    arguments_model: type[BaseModel] = field(compare=False)
    request_model: type[BaseModel] = field(compare=False)
    # The model fallback chain the prompt file names (``model_chain:``, a key SK ignores);
    # None: the configured default chain (sk_core/model/_deployments.py).
    model_chain: str | None = None
    cache: CachePolicy = CachePolicy()
    # The plugin functions its model may call and the run's limits (``tools:``, see
    # sk_core.tools); None: a plain prompt function, one model call.
    tools: ToolSettings | None = None

    def split_request(self, body: BaseModel) -> tuple[dict[str, Any], RequestOptions]:
        """A validated ``request_model`` body as the function's arguments and the
        request's own options, so no option ever reaches the template or the cache key."""
        arguments = body.model_dump()
        options = RequestOptions(
            max_tokens=arguments.pop("max_tokens"), run_limits=arguments.pop("run_limits", None)
        )
        return arguments, options

    def requested_max_tokens(self, arguments: dict[str, Any], max_tokens: int | None) -> int:
        """The answer cap a call asks for, before budgets clamp it: the caller's
        ``max_tokens``, else the function's default for these arguments."""
        return max_tokens or self.default_max_tokens_for(arguments)

    def default_max_tokens_for(self, arguments: dict[str, Any]) -> int:
        """The answer cap of a call that names none: the function's ``max_tokens``,
        lowered by any input that declares how the answer scales with it."""
        cap = self.default_max_tokens
        for spec in self.inputs:
            rule, value = spec.answer_tokens, arguments.get(spec.name)
            if rule is not None and isinstance(value, int):
                cap = min(cap, rule[0] * value + rule[1])
        return max(1, cap)

    def user_texts(self, arguments: dict[str, Any]) -> list[str]:
        """Every caller-supplied text of a call (what prompt screening inspects)."""
        texts: list[str] = []
        for spec in self.inputs:
            value = arguments.get(spec.name)
            if spec.is_chat_history and value:
                texts.extend(str(m["content"]) for m in value)
            elif isinstance(value, str):
                texts.append(value)
        return texts

    def prompt_token_bound(self, arguments: dict[str, Any]) -> int:
        """An upper bound on the prompt tokens this call can be billed for.

        A byte-level BPE token is at least one UTF-8 byte, so the template's bytes plus
        every argument's bytes bound the rendered text; the model's chat template adds
        a few special tokens per message (role markers), covered by the per-message
        allowance. Template markup that SK strips (``<message role=...>``) only adds slack.
        """
        total = self.template_bytes + _FIXED_OVERHEAD_TOKENS
        for spec in self.inputs:
            value = arguments.get(spec.name)
            if value is None:
                continue
            if spec.is_chat_history:
                total += sum(len(str(m["content"]).encode()) + _PER_MESSAGE_TOKENS for m in value)
            else:
                total += len(str(value).encode())
        return total

    @property
    def id(self) -> str:
        """``plugin/name``, the catalog path."""
        return f"{self.plugin}/{self.name}"

    def public(self) -> dict[str, Any]:
        """What ``GET /api/v1/functions`` shows for this function."""
        return {
            "plugin": self.plugin,
            "name": self.name,
            "description": self.description,
            "path": f"/api/v1/functions/{self.id}",
            "input_variables": [
                {
                    "name": i.name,
                    "description": i.description,
                    "required": i.required,
                    **({"default": i.default} if not i.required else {}),
                    "schema": {k: v for k, v in i.schema.items() if not k.startswith("x-")},
                }
                for i in self.inputs
            ],
            **(
                {"tools": self.tools.public(), "run_limits": self.tools.limits.public()}
                if self.tools
                else {}
            ),
        }


def _field_type(spec: InputSpec) -> Any:
    schema = spec.schema
    kind = schema.get("type", "string")
    if spec.is_chat_history:
        return Annotated[
            list[ChatMessage],
            Field(min_length=schema.get("minItems", 1), max_length=schema.get("maxItems", 64)),
        ]
    if kind == "string":
        if "enum" in schema:
            return Literal[tuple(schema["enum"])]
        return Annotated[
            Text, Field(min_length=schema.get("minLength", 0), max_length=schema.get("maxLength"))
        ]
    if kind in ("integer", "number"):
        base: type = int if kind == "integer" else float
        return Annotated[base, Field(ge=schema.get("minimum"), le=schema.get("maximum"), strict=True)]
    if kind == "boolean":
        return Annotated[bool, Field(strict=True)]
    raise ValueError(f"input {spec.name!r}: unsupported json_schema type {kind!r}")


def _models(
    plugin: str, name: str, inputs: tuple[InputSpec, ...], tools: ToolSettings | None = None
) -> tuple[type[BaseModel], type[BaseModel]]:
    """The function's arguments model (its inputs) and its request model (the inputs
    plus the request options, in that order). The request model keeps the name
    ``<Plugin><Name>Arguments`` that the OpenAPI document has always published. A
    tool-using function's request may also lower its run limits (``run_limits``): the
    tool run takes that option out of the arguments before the prompt sees them."""
    fields: dict[str, Any] = {}
    for spec in inputs:
        default = ... if spec.required else spec.default
        fields[spec.name] = (_field_type(spec), Field(default, description=spec.description))
    title = "".join(part.title() for part in f"{plugin}_{name}".split("_"))
    arguments = create_model(f"{title}Inputs", __config__=ConfigDict(extra="forbid"), **fields)
    options: dict[str, Any] = {}
    if tools is not None:
        options["run_limits"] = (
            tools.request_model() | None,
            Field(None, description="Lower run limits for this call (never above the function's)."),
        )
    request = create_model(
        f"{title}Arguments",
        __base__=arguments,
        **options,
        max_tokens=(
            int | None,
            Field(
                None,
                ge=1,
                le=MAX_TOKENS_LIMIT,
                strict=True,
                description="Upper bound on the answer's tokens.",
            ),
        ),
    )
    return arguments, request


def _coerce_default(raw: Any, schema: dict[str, Any]) -> Any:
    # SK keeps defaults as strings; give the API the declared type.
    if raw in (None, ""):
        return None
    kind = schema.get("type", "string")
    if kind == "integer":
        return int(raw)
    if kind == "number":
        return float(raw)
    if kind == "boolean":
        return str(raw).lower() == "true"
    return raw


def _check_answer_tokens(path: Path, name: Any, schema: dict[str, Any]) -> None:
    rule = schema.get("x-sk-answer-tokens")
    if rule is None:
        return
    valid = (
        schema.get("type") == "integer"
        and isinstance(rule, dict)
        and set(rule) <= {"per", "plus"}
        and isinstance(rule.get("per"), int)
        and rule["per"] >= 1
        and isinstance(rule.get("plus", 0), int)
        and rule.get("plus", 0) >= 0
    )
    if not valid:
        raise ValueError(
            f"{path}: input {name!r}: x-sk-answer-tokens needs an integer input and "
            '{"per": <int >= 1>, "plus": <int >= 0>}'
        )


def load_spec(path: Path, plugin: str) -> FunctionSpec:
    """Parse one prompt YAML file; raises ``ValueError`` naming the file on any defect."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not data.get("name") or not data.get("template"):
        raise ValueError(f"{path}: a prompt file needs at least 'name' and 'template'")
    inputs = []
    for var in data.get("input_variables") or []:
        raw_schema = var.get("json_schema") or "{}"
        try:
            schema = json.loads(raw_schema) if isinstance(raw_schema, str) else dict(raw_schema)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: input {var.get('name')!r} has invalid json_schema") from exc
        required = bool(var.get("is_required", True))
        if var.get("name") in REQUEST_OPTIONS:
            raise ValueError(f"{path}: input {var.get('name')!r} is a request option, not an input name")
        _check_answer_tokens(path, var.get("name"), schema)
        inputs.append(
            InputSpec(
                name=var["name"],
                description=var.get("description") or "",
                required=required,
                default=None if required else _coerce_default(var.get("default"), schema),
                schema=schema,
            )
        )
    template_format = data.get("template_format") or "semantic-kernel"
    if template_format not in TEMPLATE_FORMATS:
        raise ValueError(f"{path}: template_format must be one of {', '.join(TEMPLATE_FORMATS)}")
    all_settings = data.get("execution_settings") or {}
    for service, values in all_settings.items():
        unknown = sorted(set(values or {}) - set(CHAT_SETTINGS))
        if unknown:
            raise ValueError(
                f"{path}: execution_settings.{service} has unsupported keys {unknown}; "
                f"supported: {', '.join(CHAT_SETTINGS)}"
            )
    # The same choice the kernel makes (model_runtime.build_runtime): the chat service's
    # own settings when the file has them, else the default ones.
    settings = all_settings.get("chat") or all_settings.get("default") or {}
    temperature = settings.get("temperature")
    cache = CachePolicy.parse(
        data.get("cache"), None if temperature is None else float(temperature), f"{path}: cache"
    )
    input_tuple = tuple(inputs)
    tools = parse_tool_settings(data.get("tools"), str(path))
    arguments_model, request_model = _models(plugin, data["name"], input_tuple, tools)
    return FunctionSpec(
        plugin=plugin,
        name=data["name"],
        description=data.get("description") or "",
        inputs=input_tuple,
        yaml_text=text,
        template=str(data["template"]),
        template_bytes=len(str(data["template"]).encode()),
        default_max_tokens=int(settings.get("max_tokens", 256)),
        arguments_model=arguments_model,
        request_model=request_model,
        model_chain=str(data["model_chain"]) if data.get("model_chain") else None,
        cache=cache,
        tools=tools,
    )


class Catalog:
    """All exposed prompt functions, keyed by ``plugin/name``."""

    def __init__(self, specs: list[FunctionSpec]) -> None:
        self._specs = {spec.id: spec for spec in specs}

    @classmethod
    def load(cls, directory: Path = PROMPTS_DIR) -> Catalog:
        """Read every ``<plugin>/<name>.yaml`` under ``directory``."""
        specs = [load_spec(path, plugin=path.parent.name) for path in sorted(directory.glob("*/*.yaml"))]
        return cls(specs)

    def get(self, plugin: str, name: str) -> FunctionSpec | None:
        """The function, or None when it is not exposed."""
        return self._specs.get(f"{plugin}/{name}")

    def __iter__(self) -> Any:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)
