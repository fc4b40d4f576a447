"""The package graph points one way (DESIGN.md §3): which part of mirasol imports which,
from every import statement in the source (module level and inside functions alike)."""

import ast
from collections import defaultdict
from pathlib import Path

import mirasol

PACKAGE = Path(mirasol.__file__).parent


def _part(module: str) -> str | None:
    """The subpackage or top-level module of mirasol that ``module`` names (None: the root
    package, whose __init__ only re-exports)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mirasol" else None


def import_graph() -> dict[str, set[str]]:
    """part -> the other parts it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        source = _part(".".join(rel.parts).removesuffix(".__init__"))
        if source is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "mirasol":  # from mirasol import reference, ...
                    names += [f"mirasol.{alias.name}" for alias in node.names]
            for name in names:
                target = _part(name)
                # mirasol.kernels is installed from the top-level kernels/ folder.
                if target is not None and target != source and (
                        target == "kernels" or (PACKAGE / target).is_dir()
                        or (PACKAGE / f"{target}.py").is_file()):
                    graph[source].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for node in sorted(graph):
        visit(node, [node])
    return cycles


def test_no_part_of_mirasol_imports_one_that_imports_it():
    graph = import_graph()
    assert graph["data"] >= {"model"}, "the synthetic data and media take the model's format"
    assert "data" not in graph["model"]
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"data": {"model"}, "model": {"layers", "data"}}) == [
        ["data", "model", "data"]]
