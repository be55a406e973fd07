"""Arithmetic without ``eval``: the expression is parsed with ``ast`` and only numbers,
the four operations, powers, modulo, parentheses and a few named functions are
evaluated. Bounded: the text's length, the tree's depth, and the size of a power's
result (``9**9**9`` would otherwise hold the event loop for minutes)."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated

from semantic_kernel.functions import kernel_function

MAX_EXPRESSION_CHARS = 500
_MAX_DEPTH = 50
_MAX_RESULT_BITS = 4096  # an integer result of at most ~1,233 digits

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _power(base: float, exponent: float) -> float:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if max(base.bit_length(), 1) * exponent > _MAX_RESULT_BITS:
            raise ValueError("the result is too large")
    elif abs(exponent) > 10_000:
        raise ValueError("the exponent is too large")
    result: float = base**exponent
    return result


def _number(node: ast.AST, depth: int) -> float:
    if depth > _MAX_DEPTH:
        raise ValueError("the expression is nested too deeply")
    if isinstance(node, ast.Expression):
        return _number(node.body, depth + 1)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value: float = node.value  # type: ignore[assignment]  # int or float, checked above
        return value
    if isinstance(node, ast.BinOp):
        left, right = _number(node.left, depth + 1), _number(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        binary = _BINARY.get(type(node.op))
        if binary is not None:
            return binary(left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(node.operand, depth + 1))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*(_number(arg, depth + 1) for arg in node.args))
    raise ValueError(
        f"unsupported element: {ast.dump(node)[:60] if not isinstance(node, ast.Name) else node.id}"
    )


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression; ``ValueError`` says what is wrong."""
    # ^ as a power, and the multiplication and division signs people paste.
    text = expression.strip().replace("^", "**").replace("\u00d7", "*").replace("\u00f7", "/")
    if not text:
        raise ValueError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    try:
        return _number(tree, 0)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("the result is too large") from None
    except TypeError as exc:  # a function given the wrong number of arguments
        raise ValueError(f"bad function call: {exc}") from None


def format_number(value: float) -> str:
    """An integer exactly; a float to 12 significant digits (no binary noise like 0.30000000000000004)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"


class CalcPlugin:
    """Exact, safe arithmetic."""

    @kernel_function(
        name="evaluate",
        description="Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses, "
        "the functions abs, round, min, max, sqrt, exp, log, log10, sin, cos, tan, floor, ceil, "
        "and the constants pi and e.",
    )
    def evaluate(self, expression: Annotated[str, "The expression, e.g. (17.5 * 3) / 4 + sqrt(2)"]) -> str:
        """The expression's value as text."""
        return format_number(evaluate(expression))
