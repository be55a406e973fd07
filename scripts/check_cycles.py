"""Fail on any import cycle among the modules of ``sk_core`` (``make lint`` runs this).

The graph is grimp's (what import-linter builds): every ``import`` statement counts,
those inside functions included, so a cycle hidden by a function-level import is still
a cycle. Imports under ``if TYPE_CHECKING:`` do not run and are left out. A package's
face (``__init__``) imports its private modules, so a private module that imports its
own package's face closes a cycle: private modules import their siblings directly.

Prints each cycle (a strongly connected component of the import graph) with the import
lines that close it, and exits 1; exits 0 when there is none.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

PACKAGE = "sk_core"
# The checkout's sk_core, whatever the working directory (scripts/ is not on the path).
ROOT = Path(__file__).resolve().parent.parent


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of ``graph`` with more than one module (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main() -> int:
    sys.path.insert(0, str(ROOT))
    imports = grimp.build_graph(PACKAGE, include_external_packages=False, exclude_type_checking_imports=True)
    graph = {module: set(imports.find_modules_directly_imported_by(module)) for module in imports.modules}
    cycles = strongly_connected(graph)
    for component in cycles:
        members = set(component)
        print(f"import cycle among {', '.join(component)}:")
        for importer in component:
            for imported in sorted(graph[importer] & members):
                for detail in imports.get_import_details(importer=importer, imported=imported):
                    print(f"  {importer}:{detail['line_number']}: {detail['line_contents']}")
    if cycles:
        return 1
    print(f"no import cycles among the {len(graph)} modules of {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
