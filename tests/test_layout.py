"""The package's layering: no import cycles inside `bench/`, read from the modules' own source
(every `import`, at the top or inside a function), so a new module or import is covered
without a hand-written list.

One kind of edge is left out: a module importing its own parent package (`bench.models.lstm`
-> `bench.models` for `register_model`). Python imports every parent package before a child
anyway, so that edge adds no order of its own; counting it would call timm's registry pattern
(the package loads its family modules, which register themselves) a cycle. The root package
`bench` itself must import nothing of ours, which the tests check separately."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bench"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports. `from bench.x import y` counts as importing
    `bench.x.y` when that is a module, else `bench.x`; relative imports are resolved."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import bench.x.y` names a module's parent
                name = name.rpartition(".")[0]
            if name and name != here and not here.startswith(name + "."):
                found.add(name)  # a parent package is not counted (see the module doc)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: imported_modules(path, root, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_no_import_cycles_inside_bench() -> None:
    graph = import_graph()
    assert len(graph) > 10 and "bench.search" in graph and graph["bench.search"]
    assert graph["bench"] == set()  # the root package imports nothing of ours
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in bench/: " + " -> ".join(cycle or [])


def test_trial_and_progress_code_never_import_the_driver() -> None:
    graph = import_graph()
    for worker_side in ("bench.trial", "bench.progress"):
        assert "bench.search" not in reachable(graph, worker_side), worker_side


def test_the_library_never_imports_its_tools() -> None:
    """bench/tools (benchmarks) sit beside the library: only the CLI reaches them."""
    graph = import_graph()
    for module, deps in graph.items():
        if module != "bench.cli" and not module.startswith("bench.tools"):
            assert not {d for d in deps if d.startswith("bench.tools")}, module


def test_the_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle hidden in a function body and closed through a relative
    import is found; the same package without that import has none."""
    pkg = tmp_path / "bench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from bench.b import g\n")
    (pkg / "b.py").write_text("import bench.sub.c\n")
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    (pkg / "d.py").write_text("import os\nfrom bench import sub\n")
    (pkg / "sub" / "e.py").write_text("from bench.sub import c\nfrom . import c\nimport bench\n")
    graph = import_graph(pkg)
    assert graph == {"bench": set(), "bench.sub": set(), "bench.a": {"bench.b"},
                     "bench.b": {"bench.sub.c"}, "bench.sub.c": {"bench.a"},
                     "bench.d": {"bench.sub"}, "bench.sub.e": {"bench.sub.c"}}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"bench.a", "bench.b", "bench.sub.c"}
    (pkg / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None
