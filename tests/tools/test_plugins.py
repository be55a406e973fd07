"""The shipped plugins (deterministic, no model), what the catalog reads of them without
importing them, and that a kernel whose functions call no tools imports none."""

from __future__ import annotations

import ast
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sk_core.catalog import Catalog, load_spec
from sk_core.plugins.calc import CalcPlugin, evaluate
from sk_core.plugins.clock import ClockPlugin
from sk_core.plugins.units import UnitsPlugin, convert
from sk_core.tools import available_tools
from tests.support.processes import run_fresh_python

PROMPTS = Path(__file__).resolve().parents[2] / "sk_core" / "prompts"


def test_the_catalog_reads_what_semantic_kernel_sees_in_each_plugin() -> None:
    from semantic_kernel.functions import KernelPlugin

    from sk_core.plugins import calc, clock, units

    read = available_tools()
    seen = {}
    for name, instance in (("calc", CalcPlugin()), ("clock", ClockPlugin()), ("units", UnitsPlugin())):
        plugin = KernelPlugin.from_object(name, instance)
        for function in plugin.functions.values():
            assert function.description is not None
            seen[function.fully_qualified_name] = function.description
    assert {name: tool.description for name, tool in read.items()} == seen
    # Every parameter is typed and described (the model sees both).
    for module in (calc, clock, units):
        plugin = KernelPlugin.from_object(module.__name__.rsplit(".", 1)[1], instance_of(module))
        for function in plugin.functions.values():
            for parameter in function.parameters:
                assert parameter.description, f"{function.fully_qualified_name}.{parameter.name}"
                assert parameter.type_ in {"str", "int", "float"}


def instance_of(module: object) -> object:
    classes = [v for k, v in vars(module).items() if k.endswith("Plugin") and isinstance(v, type)]
    assert len(classes) == 1
    return classes[0]()


def test_a_bare_decorator_or_a_missing_description_is_refused(tmp_path: Path) -> None:
    from sk_core.tools._discovery import read_plugin

    bare = tmp_path / "bare.py"
    bare.write_text("class P:\n    @kernel_function\n    def f(self) -> str:\n        return ''\n")
    with pytest.raises(ValueError, match=r"name=\.\.\., description="):
        read_plugin(bare)
    silent = tmp_path / "silent.py"
    source = "class P:\n    @kernel_function(name='f')\n    def f(self) -> str:\n        return ''\n"
    silent.write_text(source)
    with pytest.raises(ValueError, match="literal description"):
        read_plugin(silent)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("tools: {functions: [calc-nothing]}", "unknown plugin functions"),
        ("tools: {functions: [calc-evaluate], choice: sometimes}", "tools.choice"),
        ("tools: {functions: [calc-evaluate], limits: {max_steps: 0}}", "tools.limits.max_steps"),
        ("tools: {functions: [calc-evaluate], limits: {max_steps: 2.5}}", "tools.limits.max_steps"),
        ("tools: {functions: [calc-evaluate], limits: {max_cost_usd: 100}}", "tools.limits.max_cost_usd"),
        ("tools: {functions: [calc-evaluate], limits: {retries: 1}}", "may set only"),
        ("tools: {functions: []}", "tools.functions"),
        ("tools: {functions: [calc-evaluate], extra: 1}", "tools must be"),
    ],
)
def test_a_malformed_tools_block_fails_the_catalog_load(tmp_path: Path, block: str, message: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(f"name: f\ntemplate: hi\n{block}\n")
    with pytest.raises(ValueError, match=message):
        load_spec(path, plugin="p")


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("(17.5 * 3) / 4 + 2 ** 10", "1037.125"),
        ("0.1 + 0.2", "0.3"),
        ("2 ^ 100", str(2**100)),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("sqrt(2) * sqrt(2)", "2"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("round(pi, 4)", "3.1416"),
        ("1e3 / 8", "125"),
        ("3 \u00d7 4 \u00f7 2", "6"),
    ],
)
def test_calc_evaluates_arithmetic(expression: str, value: str) -> None:
    assert CalcPlugin().evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "unsupported"),
        ("open('/etc/passwd')", "unsupported"),
        ("(1).__class__", "unsupported"),
        ("x + 1", "unsupported"),
        ("True + 1", "unsupported"),
        ("'a' * 3", "unsupported"),
        ("[1, 2]", "unsupported"),
        ("9 ** 9 ** 9", "too large"),
        ("10.0 ** 400", "too large"),
        ("1 / 0", "division by zero"),
        ("sqrt(1, 2)", "bad function call"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty"),
        ("1+" * 300 + "1", "longer than"),
        ("-" * 80 + "1", "nested too deeply"),
        ("round(2.5, ndigits=1)", "unsupported"),
    ],
)
def test_calc_refuses_anything_but_arithmetic_quickly(expression: str, message: str) -> None:
    started = datetime.now(UTC)
    with pytest.raises(ValueError, match=message):
        evaluate(expression)
    assert (datetime.now(UTC) - started).total_seconds() < 0.5


integers = st.integers(min_value=-1000, max_value=1000)


def expressions() -> st.SearchStrategy[str]:
    operators = st.sampled_from(["+", "-", "*"])
    return st.recursive(
        integers.map(lambda n: f"({n})"),
        lambda inner: st.tuples(inner, operators, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        max_leaves=12,
    )


@given(expressions())
@example("((-1000) * (-1000)) - ((1) + (0))")
def test_calc_agrees_with_python_on_integer_arithmetic(expression: str) -> None:
    # Python's own evaluation of the same parsed tree is the oracle (no eval of text).
    expected = _python_value(ast.parse(expression, mode="eval").body)
    assert evaluate(expression) == expected


def _python_value(node: ast.AST) -> int:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int)
        return node.value
    if isinstance(node, ast.UnaryOp):
        return -_python_value(node.operand)
    assert isinstance(node, ast.BinOp)
    left, right = _python_value(node.left), _python_value(node.right)
    return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (5, "mi", "km", 8.04672),
        (1, "kg", "lb", 2.2046226218),
        (70, "F", "C", 21.1111111111),
        (0, "celsius", "kelvin", 273.15),
        (1, "GiB", "MB", 1073.741824),
        (100, "km/h", "mph", 62.1371192237),
        (1, "acre", "m2", 4046.8564224),
        (2, "cups", "ml", 473.176473),
        (90, "min", "h", 1.5),
    ],
)
def test_units_convert(value: float, source: str, target: str, expected: float) -> None:
    assert convert(value, source, target) == pytest.approx(expected, rel=1e-9)


@given(st.floats(min_value=-1e6, max_value=1e6), st.sampled_from(["km", "mi", "ft", "nmi", "in"]))
def test_a_conversion_and_back_is_the_identity(value: float, unit: str) -> None:
    assert convert(convert(value, "m", unit), unit, "m") == pytest.approx(value, rel=1e-12, abs=1e-9)


def test_units_refuse_what_does_not_match() -> None:
    with pytest.raises(ValueError, match="cannot convert length"):
        convert(1, "km", "kg")
    with pytest.raises(ValueError, match="unknown unit"):
        convert(1, "furlong", "m")
    with pytest.raises(ValueError, match="cannot convert temperature"):
        convert(1, "C", "m")
    assert UnitsPlugin().convert(5, "mi", "km") == "8.04672 km"


def test_clock_keeps_wall_clock_time_across_daylight_saving() -> None:
    clock = ClockPlugin(now=lambda: datetime(2026, 3, 29, 0, 30, tzinfo=UTC))
    assert clock.now("Europe/Paris") == "2026-03-29T01:30:00+01:00"
    assert clock.add("2026-03-28T09:00", days=1, timezone="Europe/Paris") == "2026-03-29T09:00:00+02:00"
    back = clock.add("2026-03-29T09:00+02:00", hours=-24, timezone="Europe/Paris")
    assert back == "2026-03-28T09:00:00+01:00"
    # Between two instants: the night of the change is 23 hours long.
    assert clock.difference("2026-03-28T09:00", "2026-03-29T09:00", "hours", "Europe/Paris") == "23 hours"
    assert clock.difference("2026-01-01", "2026-12-24", "weeks") == "51 weeks"
    assert clock.convert("2026-12-06T12:00", "Asia/Tokyo") == "2026-12-06T21:00:00+09:00"
    assert clock.weekday("2026-12-24") == "Thursday"


def test_clock_refuses_unknown_zones_and_bad_dates() -> None:
    clock = ClockPlugin()
    with pytest.raises(ValueError, match="unknown time zone"):
        clock.now("Mars/Olympus")
    with pytest.raises(ValueError, match="unknown time zone"):
        clock.now("../../etc/passwd")
    with pytest.raises(ValueError, match="ISO 8601"):
        clock.add("yesterday", days=1)
    with pytest.raises(ValueError, match="too large"):
        clock.add("2026-01-01", days=10**9)
    with pytest.raises(ValueError, match="out of the supported range"):
        clock.add("9999-12-31", days=1)
    with pytest.raises(ValueError, match="unit must be"):
        clock.difference("2026-01-01", "2026-01-02", "fortnights")
    assert math.isfinite(float(clock.difference("2026-01-01", "2026-01-02", "seconds").split()[0]))


def test_a_kernel_without_tool_functions_imports_no_plugin(tmp_path: Path) -> None:
    # Cold start unchanged: the kernel of a catalog whose functions call no tools does
    # not import a single plugin module; the shipped catalog's kernel imports them once.
    plain = tmp_path / "prompts"
    shutil.copytree(PROMPTS / "text", plain / "text")
    code = f"""
        import json, sys
        from pathlib import Path
        from sk_core.catalog import Catalog
        from sk_core.model import build_runtime
        from sk_core.settings import Settings
        settings = Settings(model_provider="openai_compatible", model_base_url="http://127.0.0.1:9/v1",
                            model_id="m", model_prices='{{"m": {{"input": 1, "output": 2}}}}',
                            storage_connection_string="UseDevelopmentStorage=true")
        plugins = lambda: sorted(m for m in sys.modules if m.startswith("sk_core.plugins."))
        plain = build_runtime(settings, Catalog.load(Path({str(plain)!r})))
        before = plugins()
        full = build_runtime(settings, Catalog.load())
        print(json.dumps({{"plain": [before, plain.toolbox is None], "full": plugins()}}))
    """
    result = run_fresh_python(code)
    assert result == {
        "plain": [[], True],
        "full": ["sk_core.plugins.calc", "sk_core.plugins.clock", "sk_core.plugins.units"],
    }
    assert Catalog.load(plain).get("text", "summarize") is not None
