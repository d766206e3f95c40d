"""The package reads top to bottom: no import cycle, no import that runs back up the layers.

Layers, bottom first (docs/architecture.md): the package root, errors, files, registry, dist and trust;
config; data and models; engine, eval and synth; methods; app; the command line. A module may
import from its own package or from a lower layer, never from a higher one or a sibling package
of its own layer. argparse belongs to the application layer and the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crossregion

PACKAGE_DIR = Path(crossregion.__file__).parent
LAYERS = (
    ("crossregion", "errors", "files", "registry", "dist", "trust"),
    ("config",),
    ("data", "models"),
    ("engine", "eval", "synth"),
    ("methods",),
    ("app",),
    ("cli",),
    ("__main__",),
)
LAYER_OF = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit of a module: its subpackage or top-level module (``crossregion`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "crossregion"


def imports_of(source: str, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The crossregion modules that ``source`` (module ``module``) imports, function bodies included."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            found.update(name if name in modules else base for name in names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "crossregion" or name.startswith("crossregion.")} - {module}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    return {
        module: imports_of(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", set(paths))
        for module, path in paths.items()
    }


def bad_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import into a higher layer or a sibling package of the same layer."""
    return sorted(
        f"{module} -> {target}"
        for module, imported in graph.items()
        for target in imported
        if unit_of(target) != unit_of(module) and LAYER_OF[unit_of(target)] >= LAYER_OF[unit_of(module)]
    )


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One ``a -> b -> a`` line per back edge found by a depth-first search."""
    state: dict[str, str] = {}
    found: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target in graph and target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in import_graph()}
    assert units <= set(LAYER_OF), f"modules outside the layer table: {sorted(units - set(LAYER_OF))}"


def test_no_import_runs_up_or_sideways():
    violations = bad_imports(import_graph())
    assert not violations, "imports that run up or sideways:\n" + "\n".join(violations)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(found)


def test_argparse_only_in_the_application_layer():
    users = [
        module_name(path) for path in PACKAGE_DIR.rglob("*.py") if "import argparse" in path.read_text(encoding="utf-8")
    ]
    outside = [module for module in users if unit_of(module) not in ("app", "cli")]
    assert not outside, f"argparse outside app/ and cli.py: {outside}"


def test_the_checks_find_what_they_look_for():
    source = "from crossregion.methods.base import Method\nfrom . import labels\n"
    imported = imports_of(source, "crossregion.data.bad", False, {"crossregion.data.labels"})
    assert imported == {"crossregion.methods.base", "crossregion.data.labels"}
    assert bad_imports({"crossregion.data.bad": imported}) == ["crossregion.data.bad -> crossregion.methods.base"]
    assert cycles({"crossregion.a": {"crossregion.b"}, "crossregion.b": {"crossregion.a"}}) == [
        "crossregion.a -> crossregion.b -> crossregion.a"
    ]
