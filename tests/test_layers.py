"""Imports flow one way: base, options <- data, models, config <- infer <- engine <- analysis / audit /
predict / cam / export / serve <- demo <- cli. The test walks every module's imports with `ast` (module level and
inside functions, where an upward import used to hide) and fails on an edge to a higher layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cifarkit

PKG = Path(cifarkit.__file__).parent

# module prefix -> layer; the longest matching prefix wins
LAYERS = {
    "cifarkit": 0, "cifarkit.errors": 0, "cifarkit.extras": 0, "cifarkit.safepath": 0, "cifarkit.safecsv": 0,
    "cifarkit.safeload": 0, "cifarkit.recipes": 0, "cifarkit.saferead": 0, "cifarkit.userfile": 0,
    "cifarkit.options": 0,
    "cifarkit.logs": 1, "cifarkit.plotting": 1, "cifarkit.data": 1, "cifarkit.models": 1, "cifarkit.config": 1,
    "cifarkit.infer": 2,
    "cifarkit.engine": 3,
    "cifarkit.analysis": 4, "cifarkit.audit": 4, "cifarkit.predict": 4, "cifarkit.cam": 4, "cifarkit.export": 4,
    "cifarkit.serve": 4, "cifarkit.tune": 4,
    "cifarkit.demo": 5,
    "cifarkit.cli": 6,
    "cifarkit.__main__": 6,
}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cifarkit_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of cifarkit.*."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cifarkit import tune` / `from cifarkit.cli import data` import the submodule itself
            here = PKG.parent.joinpath(*node.module.split("."))
            names = [f"{node.module}.{a.name}" if (here / f"{a.name}.py").exists() or (here / a.name).is_dir()
                     else node.module for a in node.names]
        out += [(n, node.lineno, id(node) not in top) for n in names if n.split(".")[0] == "cifarkit"]
    return out


def all_edges():
    for path in sorted(PKG.rglob("*.py")):
        src = module_name(path)
        for dst, line, nested in cifarkit_imports(path):
            yield src, dst, f"{path.relative_to(PKG.parent)}:{line}", nested


def test_every_module_has_a_layer():
    unknown = [m for m in map(module_name, PKG.rglob("*.py")) if not any(m == p or m.startswith(p + ".")
                                                                          for p in LAYERS if p != "cifarkit")
               and m != "cifarkit"]
    assert not unknown, f"give these modules a layer in LAYERS: {unknown}"


def test_imports_never_point_up_a_layer():
    upward = [f"{where}: {src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
              for src, dst, where, _ in all_edges() if layer(dst) > layer(src)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_engine_and_infer_import_cifarkit_at_module_top():
    """The engine's and infer's dependency graphs are visible at the top of each file (no
    function-level cifarkit imports left to hide a cycle)."""
    nested = [where for src, _, where, inside in all_edges()
              if inside and src.startswith(("cifarkit.engine", "cifarkit.infer"))]
    assert not nested, nested


def test_the_walker_sees_a_function_level_upward_import(tmp_path: Path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef f():\n    from cifarkit.analysis.report import write_report\n")
    assert cifarkit_imports(f) == [("cifarkit.analysis.report", 4, True)]
    assert layer("cifarkit.analysis.report") > layer("cifarkit.engine.train")


def package(module: str) -> str:
    """A module's package: its first two dotted parts (`cifarkit.tune.study` -> `cifarkit.tune`)."""
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan): each is a set of nodes
    that reach each other, i.e. one or more import loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _loops(node) -> str:
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], list[str]] = {}
    for src, dst, at, _ in all_edges():
        a, b = node(src), node(dst)
        if a is not None and b is not None and a != b:
            graph.setdefault(a, set()).add(b)
            where.setdefault((a, b), []).append(at)
    return "\n".join(f"{' <-> '.join(comp)}: " + "; ".join(f"{a} -> {b} ({', '.join(where[a, b])})"
                                                         for a in comp for b in comp if (a, b) in where)
                     for comp in cycles(graph))


def test_no_import_loop_between_packages():
    """Packages import one way, also inside a layer: a loop (config -> models -> data -> config)
    means neither side can be read, tested or moved without the other."""
    loops = _loops(package)
    assert not loops, "import loops between packages:\n" + loops


def test_no_import_circle_between_files():
    """No circle of modules either, not even one dodged by a function-level import."""
    modules = {module_name(p) for p in PKG.rglob("*.py")}
    circles = _loops(lambda m: m if m in modules else None)
    assert not circles, "import circles between modules:\n" + circles


def private_imports(path: Path, module: str | None = None) -> list[str]:
    """`module.name` for every `_name` this file (module `module`, default its own name) imports
    from a cifarkit module of another package."""
    src = package(module or module_name(path))
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "cifarkit" and package(node.module) != src:
            out += [f"{node.module}.{a.name}" for a in node.names
                    if a.name.startswith("_") and not (a.name.startswith("__") and a.name.endswith("__"))]
    return out


def test_no_private_name_imported_from_another_package():
    """A `_name` is its package's own business: one that another package needs gets a public
    name and a docstring (or moves to where both can import it)."""
    bad = [f"{p.relative_to(PKG.parent)}: {n}" for p in sorted(PKG.rglob("*.py")) for n in private_imports(p)]
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_the_loop_and_private_checks_see_what_they_look_for(tmp_path: Path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert package("cifarkit.tune.study") == "cifarkit.tune" and package("cifarkit.config") == "cifarkit.config"
    f = tmp_path / "x.py"
    f.write_text("from cifarkit.config import _f, __version__\nfrom cifarkit.tune.study import _absolute\n")
    assert private_imports(f, "cifarkit.tune.x") == ["cifarkit.config._f"]
