"""``make lint``'s cycle check: it finds a cycle however it is closed, and sk_core has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scripts.check_cycles import strongly_connected

ROOT = Path(__file__).resolve().parent.parent


def test_every_cycle_is_found_and_nothing_else() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": {"d"},  # d <-> e, reached from the first cycle
        "f": {"a"},  # imports a cycle without being in one
        "g": set(),
    }
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_sk_core_has_no_import_cycle() -> None:
    # The script as make lint runs it (grimp's graph of the checkout, function-level
    # imports included): exit 0 and says so.
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_cycles.py")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no import cycles" in result.stdout
