"""The package's import graph: no cycles, the library never imports the server, the notebook client stays light.

Every .py under future_lens/ is parsed with `ast` and every import statement counts wherever it stands: at module
level, inside a function, under `if TYPE_CHECKING:`. Relative imports are resolved against the importing module's
package; `from a.b import c` is an edge to module `a.b.c` where that is a module, else to `a.b`. Importing a module
also runs its parent packages' `__init__`; those implicit edges are left out (a package that imports its own
submodules to re-export their names would otherwise form a cycle with each of them).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "future_lens"
SERVER = "future_lens.server"

#: module -> {imported module of the package -> line of its first import}
Graph = dict[str, dict[str, int]]


def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module of `package` (a folder under `root`): dotted name -> (file, whether it is a package)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def imported(name: str, is_package: bool, tree: ast.AST, modules: set[str], package: str) -> dict[str, int]:
    """The modules of `package` that module `name`'s syntax tree imports, each with the line of its first import."""
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target == package or target.startswith(package + "."):
            found[target] = min(line, found.get(target, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node.lineno)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    modules = module_files(root, package)
    graph = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {target: line for target, line in imported(name, is_package, tree, set(modules), package).items()}
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, {}):
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def a_cycle(graph: Graph, component: list[str]) -> list[str]:
    """One concrete cycle through a strongly connected `component`: its first module, back to itself."""
    start, members = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:  # breadth first: a shortest cycle
        path = paths.pop(0)
        for target in sorted(graph[path[-1]]):
            if target == start:
                return [*path, start]
            if target in members and target not in seen:
                seen.add(target)
                paths.append([*path, target])
    raise AssertionError(f"{component} is not strongly connected")


def cycles(graph: Graph) -> list[str]:
    """Each import cycle, one per strongly connected component, as `a (line n) -> b (line m) -> ... -> a`."""
    shown = []
    for component in strongly_connected(graph):
        cycle = a_cycle(graph, component)
        steps = [f"{module} (line {graph[module][target]})" for module, target in pairwise(cycle)]
        shown.append(" -> ".join([*steps, cycle[-1]]) + f"  [component: {', '.join(component)}]")
    return shown


def server_imports(graph: Graph, server: str = SERVER) -> list[str]:
    """Imports of `server` (or its modules) by modules outside it, as `module:line imports target`."""

    def inside(module: str) -> bool:
        return module == server or module.startswith(server + ".")

    return [
        f"{module}:{line} imports {target}"
        for module, targets in sorted(graph.items())
        if not inside(module)
        for target, line in sorted(targets.items())
        if inside(target)
    ]


def write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_graph_resolves_every_kind_of_import(tmp_path) -> None:
    write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\n",
            "pkg/a.py": "from . import b\nfrom .sub import thing\nimport os\n",
            "pkg/b.py": "def later():\n    import pkg.sub.deep\n",
            "pkg/sub/__init__.py": "from .. import b\nfrom ..a import A\n",
            "pkg/sub/deep.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import thing\n"
                "from . import missing_name\n"
            ),
            "pkg/server/__init__.py": "",
            "pkg/server/web.py": "from pkg.a import A\n",
            "pkg/c.py": "from pkg.server.web import app\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg"] == {"pkg.a": 1}
    assert graph["pkg.a"] == {"pkg.b": 1, "pkg.sub": 2}  # `from . import b`: the module b; os is not ours
    assert graph["pkg.b"] == {"pkg.sub.deep": 2}  # inside a function
    assert graph["pkg.sub"] == {"pkg.b": 1, "pkg.a": 2}  # relative to the package itself
    assert graph["pkg.sub.deep"] == {"pkg.sub": 3}  # under TYPE_CHECKING; a name, not a module, of pkg.sub
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.deep"]]
    assert cycles(graph) == [
        "pkg.a (line 2) -> pkg.sub (line 2) -> pkg.a  [component: pkg.a, pkg.b, pkg.sub, pkg.sub.deep]"
    ]
    assert server_imports(graph, "pkg.server") == ["pkg.c:1 imports pkg.server.web"]  # not pkg.server.web's own


def test_the_graph_sees_this_package() -> None:
    graph = import_graph()
    assert "future_lens.lens.kv_cache" in graph["future_lens.lens.engine"]
    assert "future_lens.service" in graph["future_lens.client.session"]  # a function-level import


def test_no_module_of_the_package_is_part_of_an_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_library_never_imports_the_server() -> None:
    """Everything outside future_lens/server is the library: the server builds on it, never the other way."""
    found = server_imports(import_graph())
    assert not found, "the library imports the server:\n" + "\n".join(found)


def client_import_loads() -> list[str]:
    """The modules that `import future_lens.client` loads, in a fresh interpreter."""
    probe = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import future_lens.client\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    loaded = json.loads(done.stdout)
    assert "future_lens.client" in loaded
    return loaded


def test_importing_the_client_loads_no_torch() -> None:
    loaded = client_import_loads()
    assert not [name for name in loaded if name.split(".")[0] == "torch"], "importing future_lens.client loads torch"


def test_importing_the_client_loads_only_the_standard_library() -> None:
    """The notebook client's remote mode is stdlib only: importing it brings in no other package."""
    tops = {name.split(".")[0] for name in client_import_loads()}
    foreign = sorted(  # _sysconfigdata_<platform>: the standard library's, named per platform
        name for name in tops - {*sys.stdlib_module_names, PACKAGE} if not name.startswith("_sysconfigdata_")
    )
    assert not foreign, f"importing future_lens.client loads these packages: {foreign}"
