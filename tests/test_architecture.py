"""The shape of the package: no import circles between files, arrows between layers point down, what importing
the distillation layer costs, and no module over 400 lines of code.

Reads the source with ``ast`` (no training, no import of the package except in the subprocess test), so it runs in
a second. ``docs/architecture.md`` states the same layer table in prose; change both together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "visiondistill"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

# What each layer may import besides itself. A layer is the first name under visiondistill/ (a sub-package or a
# top-level module: `visiondistill/cli.py` is layer "cli", `visiondistill/demo/` or `demo.py` is layer "demo").
# Arrows point down: core at the bottom, cli and demo on top. The root `visiondistill/__init__.py` (layer
# "__init__") holds the version only and may import nothing of ours.
BELOW_REPORTING = {"core", "models", "data", "distill", "explain", "tasks"}
ALLOWED_IMPORTS: dict[str, set[str]] = {
    "__init__": set(),
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "distill": {"core", "models"},
    "explain": {"core", "models"},
    "tasks": {"core", "models", "data"},
    "reporting": BELOW_REPORTING,
    "cli": BELOW_REPORTING | {"reporting"},
    "demo": BELOW_REPORTING | {"reporting", "cli"},
}

# The heavy dependencies that `visiondistill.distill` must not pull in (see test_distill_import_is_light).
HEAVY = ("matplotlib", "pytorch_grad_cam", "segmentation_models_pytorch", "pycocotools", "cv2")

MAX_CODE_LINES = 400


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``pkg.__init__`` is named ``pkg``)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _nearest_module(name: str) -> str | None:
    """The module that `name` (a module, or an attribute of one) lives in: its longest prefix that is a module."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module of ours, source text) for every import in `path`, module- and function-level alike."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from ..core import maps` in visiondistill/distill/losses.py
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name` imports the sub-module pkg.name when there is one, else an attribute of pkg.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for target in targets:
            resolved = _nearest_module(target) if target.split(".")[0] == PACKAGE else None
            if resolved and resolved != module:
                found.add((node.lineno, resolved, " ".join(ast.unparse(node).split())))
    return sorted(found)


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _relative(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE_DIR.parent))


def _is_own_child(importer: str, imported: str) -> bool:
    """A package __init__ re-exporting a module inside it: an edge that does not make a circle with that module."""
    return MODULES[importer].name == "__init__.py" and imported.startswith(importer + ".")


def _circles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Strongly connected components of more than one file (Tarjan): (their files, one closed path through them)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(component, _cycle_through(component, graph)) for component in components]


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One closed path inside a strongly connected component, starting from its first file (breadth-first)."""
    members, start = set(component), component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    return component  # unreachable for a strongly connected component


def _code_lines(path: Path) -> int:
    """Lines of code: not blank, not a comment, not part of a module/class/function docstring."""
    text = path.read_text()
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            docstring_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(
        1
        for number, line in enumerate(text.splitlines(), 1)
        if number not in docstring_lines and line.strip() and not line.strip().startswith("#")
    )


def test_the_walk_sees_the_package():
    # Guards the tests below against passing vacuously (a wrong path, a resolver that drops every import).
    assert {"visiondistill.core", "visiondistill.distill.losses", "visiondistill.cli"} <= set(MODULES)
    assert any(target.startswith("visiondistill.core") for _, target, _ in IMPORTS["visiondistill.distill.losses"])
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [(["a", "b", "c"], ["a", "b", "c", "a"])]


def test_no_import_circles_between_files():
    graph = {
        module: {target for _, target, _ in imports if not _is_own_child(module, target)}
        for module, imports in IMPORTS.items()
    }
    circles = [f"{', '.join(files)}; e.g. {' -> '.join(path)}" for files, path in _circles(graph)]
    assert not circles, "import circles between files:\n  " + "\n  ".join(circles)


def test_every_file_belongs_to_a_layer():
    unknown = sorted(_relative(m) for m in MODULES if _layer(m) not in ALLOWED_IMPORTS)
    assert not unknown, (
        f"files outside the layer table of {Path(__file__).name} (move them into a layer, or add the layer to "
        f"ALLOWED_IMPORTS and docs/architecture.md): {unknown}"
    )


def test_imports_point_down_the_layers():
    offences = []
    for module, imports in IMPORTS.items():
        layer = _layer(module)
        if layer not in ALLOWED_IMPORTS:
            continue  # reported by test_every_file_belongs_to_a_layer
        for line, target, source in imports:
            target_layer = _layer(target)
            if target_layer != layer and target_layer not in ALLOWED_IMPORTS[layer]:
                where = f"{_relative(module)}:{line}"
                offences.append(f"{where}: {layer} -> {target_layer}: {source}")
    assert not offences, "imports against the layer rule (ALLOWED_IMPORTS):\n  " + "\n  ".join(offences)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_has_at_most_400_lines_of_code(module):
    lines = _code_lines(MODULES[module])
    assert lines <= MAX_CODE_LINES, (
        f"{_relative(module)} has {lines} lines of code (docstrings, comments and "
        f"blanks not counted), over {MAX_CODE_LINES}: split it by job"
    )


def test_distill_import_is_light():
    # A user who imports LogitDistillation pays for Lightning, timm and torchmetrics, and nothing heavier. The
    # baseline is what those three load by themselves: when matplotlib is installed, torchmetrics' plotting module
    # imports it as soon as `pytorch_lightning` is imported, so matplotlib is in the baseline and cannot be blamed
    # on us. Anything of HEAVY beyond the baseline comes from visiondistill. One fresh interpreter measures both
    # (importing Lightning takes ~10 s of CPU): the baseline first, then what visiondistill.distill adds to it.
    probe = (
        "import sys\n"
        f"heavy = lambda: ' '.join(m for m in {HEAVY!r} if m in sys.modules)\n"
        "import pytorch_lightning, timm, torchmetrics\n"
        "print(heavy())\n"
        "import visiondistill.distill as distill\n"
        "distill.LogitDistillation\n"
        "print(heavy())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the import probe failed:\n{done.stderr[-2000:]}"
    baseline_line, loaded_line = done.stdout.splitlines()[-2:]
    baseline, loaded = set(baseline_line.split()), set(loaded_line.split())
    assert {"pytorch_grad_cam", "segmentation_models_pytorch", "pycocotools"}.isdisjoint(loaded), loaded
    assert loaded <= baseline, f"import visiondistill.distill loads {sorted(loaded - baseline)} beyond {baseline}"
