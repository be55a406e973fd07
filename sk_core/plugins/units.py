"""Unit conversion: length, mass, volume, area, time, speed, data and temperature.

Each unit is a factor to its dimension's base unit (metre, kilogram, litre...), so a
conversion is two multiplications; temperature is affine and handled apart. Units are
matched case-insensitively by symbol or name (``km``, ``kilometre``, ``kilometer``).
"""

from __future__ import annotations

from typing import Annotated

from semantic_kernel.functions import kernel_function

from sk_core.plugins.calc import format_number

# dimension -> {unit aliases separated by "|": factor to the base unit}
_TABLE: dict[str, dict[str, float]] = {
    "length": {
        "m|metre|meter|metres|meters": 1.0,
        "km|kilometre|kilometer|kilometres|kilometers": 1000.0,
        "cm|centimetre|centimeter|centimetres|centimeters": 0.01,
        "mm|millimetre|millimeter|millimetres|millimeters": 0.001,
        "mi|mile|miles": 1609.344,
        "yd|yard|yards": 0.9144,
        "ft|foot|feet": 0.3048,
        "in|inch|inches": 0.0254,
        "nmi|nautical mile|nautical miles": 1852.0,
    },
    "mass": {
        "kg|kilogram|kilograms": 1.0,
        "g|gram|grams": 0.001,
        "mg|milligram|milligrams": 1e-6,
        "t|tonne|tonnes|metric ton": 1000.0,
        "lb|lbs|pound|pounds": 0.45359237,
        "oz|ounce|ounces": 0.028349523125,
        "st|stone|stones": 6.35029318,
    },
    "volume": {
        "l|litre|liter|litres|liters": 1.0,
        "ml|millilitre|milliliter|millilitres|milliliters": 0.001,
        "m3|cubic metre|cubic meter": 1000.0,
        "gal|gallon|gallons|us gallon": 3.785411784,
        "qt|quart|quarts": 0.946352946,
        "pt|pint|pints": 0.473176473,
        "cup|cups": 0.2365882365,
        "floz|fl oz|fluid ounce|fluid ounces": 0.0295735295625,
    },
    "area": {
        "m2|square metre|square meter": 1.0,
        "km2|square kilometre|square kilometer": 1e6,
        "ha|hectare|hectares": 1e4,
        "acre|acres": 4046.8564224,
        "ft2|square foot|square feet": 0.09290304,
    },
    "time": {
        "s|sec|second|seconds": 1.0,
        "min|minute|minutes": 60.0,
        "h|hr|hour|hours": 3600.0,
        "d|day|days": 86400.0,
        "wk|week|weeks": 604800.0,
    },
    "speed": {
        "m/s|metres per second|meters per second": 1.0,
        "km/h|kph|kilometres per hour|kilometers per hour": 1000 / 3600,
        "mph|miles per hour": 1609.344 / 3600,
        "kn|knot|knots": 1852 / 3600,
    },
    "data": {
        "b|byte|bytes": 1.0,
        "kb|kilobyte|kilobytes": 1e3,
        "mb|megabyte|megabytes": 1e6,
        "gb|gigabyte|gigabytes": 1e9,
        "tb|terabyte|terabytes": 1e12,
        "kib|kibibyte|kibibytes": 1024.0,
        "mib|mebibyte|mebibytes": 1024.0**2,
        "gib|gibibyte|gibibytes": 1024.0**3,
    },
}
_UNITS: dict[str, tuple[str, float]] = {
    alias: (dimension, factor)
    for dimension, units in _TABLE.items()
    for aliases, factor in units.items()
    for alias in aliases.split("|")
}
_TEMPERATURE = {
    "c": "C", "°c": "C", "celsius": "C",
    "f": "F", "°f": "F", "fahrenheit": "F",
    "k": "K", "kelvin": "K",
}  # fmt: skip


def _to_kelvin(value: float, unit: str) -> float:
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32, "K": value}[unit]


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``; ``ValueError`` if they do not match."""
    source, target = from_unit.strip().lower(), to_unit.strip().lower()
    if source in _TEMPERATURE and target in _TEMPERATURE:
        return _from_kelvin(_to_kelvin(value, _TEMPERATURE[source]), _TEMPERATURE[target])
    for unit in (source, target):
        if unit not in _UNITS and unit not in _TEMPERATURE:
            raise ValueError(f"unknown unit {unit!r}")
    (dimension, factor), (other, to_factor) = (
        _UNITS.get(source, ("temperature", 0)),
        _UNITS.get(target, ("temperature", 0)),
    )
    if dimension != other:
        raise ValueError(f"cannot convert {dimension} ({from_unit}) to {other} ({to_unit})")
    return value * factor / to_factor


class UnitsPlugin:
    """Conversions between units of one dimension."""

    @kernel_function(
        name="convert",
        description="Convert a quantity between units of length, mass, volume, area, time, speed, "
        "data size or temperature (e.g. 5 mi to km, 70 F to C).",
    )
    def convert(
        self,
        value: Annotated[float, "The quantity to convert"],
        from_unit: Annotated[str, "Its unit, by symbol or name (km, mile, lb, F, GiB...)"],
        to_unit: Annotated[str, "The unit to express it in"],
    ) -> str:
        """``value from_unit`` in ``to_unit``, as text with the unit."""
        return f"{format_number(round(convert(value, from_unit, to_unit), 10))} {to_unit.strip()}"
