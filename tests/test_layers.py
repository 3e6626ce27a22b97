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
            # `from cifarkit import cli_train` imports the submodule cifarkit.cli_train
            names = [f"{node.module}.{a.name}" if (PKG / f"{a.name}.py").exists() or (PKG / a.name).is_dir()
                     else node.module for a in node.names] if node.module == "cifarkit" else [node.module]
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
