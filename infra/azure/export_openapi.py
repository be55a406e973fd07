"""Write (or check) infra/azure/openapi.json: the document API Management imports.

It is exactly what the service serves at ``GET /api/openapi.json`` (generated from the
route table and the prompt files), so APIM's operations cannot drift from the code::

    .venv/bin/python infra/azure/export_openapi.py          # regenerate
    .venv/bin/python infra/azure/export_openapi.py --check  # exit 1 if stale (CI, tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(__file__).resolve().parent / "openapi.json"


def render() -> str:
    """The served OpenAPI document, serialized deterministically."""
    sys.path.insert(0, str(ROOT))
    from sk_core.catalog import Catalog
    from sk_core.http.openapi import build_openapi

    return json.dumps(build_openapi(Catalog.load()), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run python infra/azure/export_openapi.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
