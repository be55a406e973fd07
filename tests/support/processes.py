"""Running code in a fresh interpreter, for properties of a whole process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_fresh_python(code: str) -> dict[str, Any]:
    """Run ``code`` in a new interpreter at the repo root; its last stdout line is JSON.

    For properties of a whole process (which modules an import loads, the GC state),
    which pytest's own long-lived process cannot show.
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True, text=True, check=True, timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m sk_core.admin ARGS`` with ``env`` over this environment, as an
    operator runs it (argument parsing, exit codes and output included)."""
    return subprocess.run(
        [sys.executable, "-m", "sk_core.admin", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
