"""Imports run one way: ``api`` may import ``tracer``, never the reverse, and no cycles.

How: every module under ``tracer/`` and ``api/`` is parsed (not imported)
and every import in it is found - at the top, inside functions, under
``if``/``try``, and ``importlib.import_module("x")``/``__import__("x")`` with
a literal name.

- **Layers.** No ``tracer`` module imports ``api``.  The tracer is what runs
  on every host; what it shares with the API (the record contract, the
  catalog's model and matcher) lives on the tracer side.
- **Cycles.** The graph of imports among project modules has no cycle;
  each one found is reported with the import lines that close it.  An
  import stands for the deepest project module it names (``from p import x``
  is ``p.x`` when that is a module, else ``p``): a package's ``__init__``
  runs before its submodules, but that alone makes no dependency.
- **One ClickHouse importer.** Only the store (``api/storage/``) imports a
  ClickHouse client (``chdb``, ``clickhouse_driver``).
- **Light entry point.** ``import api.commands.phobos`` and building ``phobos trace``'s
  options (in a subprocess) load no other ``api`` module and neither the
  store (pyarrow, chDB), numpy nor Flask.

The cycle finder is tested on small graphs first, so a pass means "no cycle",
not "the finder never finds one".
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("tracer", "api")
HEAVY = ("pyarrow", "chdb", "numpy", "flask", "clickhouse_driver", "networkx")
CLICKHOUSE_CLIENTS = ("chdb", "clickhouse_driver")
STORE_ROOM = "api.storage"
#: The ``phobos`` command (setup.cfg's entry point).
ENTRY = "api.commands.phobos"


# -- reading imports ------------------------------------------------------------------------------

def module_name(path: Path, root: Path = ROOT) -> str:
    """``api/simulation/simulate.py`` -> ``api.simulation.simulate``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the layers, by dotted name."""
    found = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path, root)] = path
    return found


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """What ``source`` imports, as (dotted name, line), wherever the import statement is.

    ``from p import x`` gives ``p.x`` (``x`` may be a module or a name in
    ``p``: ``resolve`` tells); relative imports are made absolute against
    ``module``.  Calls of ``importlib.import_module``/``__import__`` with a
    literal string count as imports too.
    """
    package = module if is_package else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.extend((f"{base}.{alias.name}" if alias.name != "*" else base, node.lineno)
                       for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append((node.args[0].value, node.lineno))
    return out


def resolve(name: str, modules: set[str]) -> str | None:
    """The deepest of ``modules`` that ``name`` is or is in (None for other libraries)."""
    parts = name.split(".")
    return next((m for m in (".".join(parts[:i]) for i in range(len(parts), 0, -1)) if m in modules), None)


def import_graph(modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Edges module -> project modules it imports, and the first line of each edge."""
    names = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    lines: dict[tuple[str, str], int] = {}
    for mod, path in modules.items():
        for name, line in imports_of(path.read_text(), mod, path.name == "__init__.py"):
            target = resolve(name, names)
            if target is not None and target != mod:
                graph[mod].add(target)
                lines[(mod, target)] = min(line, lines.get((mod, target), line))
    return graph, lines


# -- cycles ---------------------------------------------------------------------------------------

def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, each as a list of nodes.

    Tarjan's algorithm (iterative, so deep graphs do not hit the recursion
    limit) finds the components; within each, a shortest path back to its
    smallest node is the cycle shown.  Sorted, so the report is stable.

    Examples
    --------
    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(sorted(component))
    return sorted(_cycle_in(graph, set(c)) for c in components)


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's smallest node (breadth first)."""
    head = min(component)
    parents: dict[str, str] = {}
    frontier = [head]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == head:
                    path = [node]
                    while path[-1] != head:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if child in component and child not in parents:
                    parents[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {head}")  # pragma: no cover - a component always has one


def describe(cycle: list[str], lines: dict[tuple[str, str], int], modules: dict[str, Path]) -> str:
    steps = []
    for a, b in zip(cycle, [*cycle[1:], cycle[0]]):
        where = modules[a].relative_to(ROOT) if a in modules else a
        steps.append(f"  {where}:{lines.get((a, b), '?')} imports {b}")
    return " -> ".join(cycle + [cycle[0]]) + "\n" + "\n".join(steps)


# -- the finder on small graphs -------------------------------------------------------------------

def test_find_cycles_on_small_graphs():
    assert find_cycles({}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []  # a chain
    assert find_cycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []  # a diamond
    assert find_cycles({"a": {"a"}}) == [["a"]]  # a module importing itself
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}  # d only leads into the ring
    assert find_cycles(ring) == [["a", "b", "c"]]
    two = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}
    assert find_cycles(two) == [["a", "b"], ["c", "d"]]
    # The shortest way round is shown, not the whole component.
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": {"a"}}) == [["a", "c"]]
    long_chain = {f"m{i:05d}": {f"m{i + 1:05d}"} for i in range(5000)}
    long_chain["m05000"] = {"m00000"}
    assert len(find_cycles(long_chain)[0]) == 5001  # no recursion limit


def test_imports_are_found_wherever_they_are():
    source = '''
import json
import tracer.records
from tracer import sinks, spool as s
from . import metrics
from .bpf import loader

def later():
    from api.storage import open_store
    import importlib
    importlib.import_module("api.queries")
    __import__("tracer.kafka_sink")

try:
    import yaml
except ImportError:
    pass
'''
    found = sorted(imports_of(source, "tracer.agent"))
    assert found == [("api.queries", 11), ("api.storage.open_store", 9), ("importlib", 10), ("json", 2),
                     ("tracer.bpf.loader", 6), ("tracer.kafka_sink", 12), ("tracer.metrics", 5),
                     ("tracer.records", 3), ("tracer.sinks", 4), ("tracer.spool", 4), ("yaml", 15)]
    assert imports_of("from .. import x", "api.routes.build") == [("api.x", 1)]
    assert imports_of("from . import x", "api.routes", is_package=True) == [("api.routes.x", 1)]
    assert imports_of("from .common import *", "api.routes.build") == [("api.routes.common", 1)]
    names = {"api", "api.routes", "api.routes.common", "api.storage", "tracer", "tracer.sinks"}
    assert resolve("api.storage.open_store", names) == "api.storage"  # a name in a module
    assert resolve("api.routes.common", names) == "api.routes.common"  # a module in a package
    assert resolve("api.routes.BLUEPRINTS", names) == "api.routes"  # a name in a package
    assert resolve("yaml", names) is None


def test_the_layer_check_catches_a_function_level_import(tmp_path):
    (tmp_path / "tracer").mkdir()
    (tmp_path / "api").mkdir()
    (tmp_path / "tracer" / "__init__.py").write_text("")
    (tmp_path / "api" / "__init__.py").write_text("")
    (tmp_path / "api" / "storage.py").write_text("from tracer import agent\n")
    (tmp_path / "tracer" / "agent.py").write_text("def run():\n    from api.storage import open_store\n")
    modules = project_modules(tmp_path)
    assert set(modules) == {"tracer", "tracer.agent", "api", "api.storage"}
    assert layer_violations(modules) == [("tracer.agent", 2, "api.storage.open_store")]
    graph, _ = import_graph(modules)
    assert find_cycles(graph) == [["api.storage", "tracer.agent"]]


# -- the project ----------------------------------------------------------------------------------

def layer_violations(modules: dict[str, Path]) -> list[tuple[str, int, str]]:
    """(tracer module, line, what it imports) for every import of ``api`` in ``tracer``."""
    out = []
    for mod, path in sorted(modules.items()):
        if mod.split(".")[0] != "tracer":
            continue
        for name, line in imports_of(path.read_text(), mod, path.name == "__init__.py"):
            if name == "api" or name.startswith("api."):
                out.append((mod, line, name))
    return sorted(set(out))


def test_tracer_never_imports_api():
    modules = project_modules()
    assert "tracer.agent" in modules and ENTRY in modules  # the walk found the layers
    bad = layer_violations(modules)
    assert not bad, ("tracer/ must not import api/ (what both need lives on the tracer side):\n"
                     + "\n".join(f"  {modules[m].relative_to(ROOT)}:{line} imports {name}" for m, line, name in bad))


def test_only_the_store_imports_a_clickhouse_client():
    modules = project_modules()
    assert STORE_ROOM in modules  # the room exists under this name
    bad = sorted((mod, line, name) for mod, path in modules.items()
                 if mod != STORE_ROOM and not mod.startswith(STORE_ROOM + ".")
                 for name, line in imports_of(path.read_text(), mod, path.name == "__init__.py")
                 if name.split(".")[0] in CLICKHOUSE_CLIENTS)
    assert not bad, ("only api/storage/ may import a ClickHouse client:\n"
                     + "\n".join(f"  {modules[m].relative_to(ROOT)}:{line} imports {name}" for m, line, name in bad))


def test_no_import_cycles():
    modules = project_modules()
    graph, lines = import_graph(modules)
    assert graph[ENTRY], "the graph has edges"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among project modules:\n" + "\n".join(
        describe(c, lines, modules) for c in cycles)


def test_phobos_and_its_trace_command_load_nothing_heavy():
    probe = (f"import sys, {ENTRY}; first = sorted(sys.modules); "
             f"{ENTRY}.build_parser('trace').parse_args(['trace']); "
             "print(' '.join(first)); print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    at_import, for_trace = (set(line.split()) for line in out)
    for loaded, what in ((at_import, f"import {ENTRY}"), (for_trace, "phobos trace's options")):
        heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
        assert not heavy, f"{what} loads {heavy[:5]}"
        assert not {m for m in loaded if m.startswith("api.")} - {"api.commands", ENTRY}, what
