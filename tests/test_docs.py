"""The documentation: docstrings on the public API, the tutorial notebooks, the site.

Fast tests: every public function and class has a docstring (the top-level `cifarkit` names a
real one), the stored notebooks carry no outputs and match their source
(`examples/make_notebooks.py`), and the generated CLI reference and recipe numbers come from the
parser and the benchmark files. Slow tests execute both notebooks top to bottom and build the
site in strict mode.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import cifarkit

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "cifarkit"
EXAMPLES = ROOT / "examples"
NOTEBOOKS = ["cifar10_tutorial.ipynb", "own_folder.ipynb"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _undocumented(path: Path) -> list[str]:
    """Public top-level functions and classes of `path`, and their public methods, without a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = [] if ast.get_docstring(tree) else ["<module docstring>"]
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        if not ast.get_docstring(node):
            missing.append(node.name)
        if isinstance(node, ast.ClassDef):
            missing += [f"{node.name}.{m.name}" for m in node.body
                        if isinstance(m, ast.FunctionDef) and not m.name.startswith("_") and not ast.get_docstring(m)]
    return missing


@pytest.mark.parametrize("name", [n for n in cifarkit.__all__ if n != "__version__"])
def test_top_level_api_has_docstrings(name):
    obj = getattr(cifarkit, name)
    doc = inspect.getdoc(obj) or ""
    assert len(doc.split()) >= 5, f"cifarkit.{name} ({obj.__module__}) needs a docstring that says what it does"


def test_every_public_function_and_class_has_a_docstring():
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        module = _module_name(path)
        problems += [f"{module}.{n}" for n in _undocumented(path)]
    assert not problems, "public names without a docstring:\n  " + "\n  ".join(problems)


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _notebook_source():
    """examples/make_notebooks.py, the notebooks' source."""
    return _load(EXAMPLES / "make_notebooks.py")


@cache
def _hooks():
    """scripts/mkdocs_hooks.py, which generates the CLI, recipe and API index pages."""
    return _load(ROOT / "scripts" / "mkdocs_hooks.py")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs_and_matches_its_source(name):
    nb = json.loads((EXAMPLES / name).read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for i, cell in enumerate(code):
        assert cell["outputs"] == [] and cell["execution_count"] is None, \
            f"{name}: code cell {i} holds outputs; clear them (or run examples/make_notebooks.py) before committing"
        assert "execution" not in cell.get("metadata", {}), f"{name}: code cell {i} holds execution timings"
    pytest.importorskip("nbformat", reason="nbformat is in the [docs] extra")
    built = _notebook_source().build(name)
    assert [c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in nb["cells"]] == \
        [c.source for c in built.cells], f"{name} differs from examples/make_notebooks.py; run it to regenerate"


def _all_parsers(parser, prog="cifarkit"):
    yield prog, parser
    for name, _, sub in _hooks()._subparsers(parser):
        yield from _all_parsers(sub, f"{prog} {name}")


def test_cli_reference_is_every_commands_help(monkeypatch):
    from cifarkit.cli import build_parser

    page = _hooks().cli_reference()
    monkeypatch.setenv("COLUMNS", _hooks().HELP_COLUMNS)
    progs = list(_all_parsers(build_parser()))
    assert len(progs) > 15
    for prog, parser in progs:
        assert f"`{prog}`" in page
        assert parser.format_help().rstrip() in page, f"{prog}: the CLI page differs from its --help"


def test_recipe_page_numbers_come_from_the_benchmark_files():
    page = _hooks().recipes_page()
    results = ROOT / "benchmarks" / "results"
    speed = json.loads((results / "train_speed.json").read_text())
    assert f"{speed['top1_tta_mean']:.2f} ± {speed['top1_tta_sd']:.2f}" in page
    for r in json.loads((results / "train_throughput.json").read_text())["results"].values():
        assert f"{r['img_per_s']:,.0f}" in page
    gpu = json.loads((results / "gpu_speed.json").read_text())["fast"]
    assert f"{gpu['timed_mean_s']:.2f}" in page
    for name in ("fast", "airbench94", "resnet18", "mobilenetv2_finetune", "lt100"):
        assert f"| `{name}` |" in page
    for name in ("train_speed.json", "train_speed_avx2.json"):  # the recipe per CPU kind, with its precision
        if (results / name).is_file():
            ts = json.loads((results / name).read_text())
            m = ts["machine"]
            assert f"| {m['cpu_kind']} | {ts.get('precision', m.get('precision'))} |" in page
            assert f"{ts['top1_tta_mean']:.2f} (" in page
    for f in results.glob("*.json"):  # every results file says on which CPU kind and in what precision
        d = json.loads(f.read_text())
        m = d.get("machine", {})
        assert m.get("cpu_kind") and (m.get("precision") or d.get("precision")), f.name
    lt = json.loads((results / "long_tail.json").read_text())["results"]
    recipe = [r["top1"] for r in lt["recipe (cifar10_lt100.yaml)"]]
    assert f"**{sum(recipe) / len(recipe):.2f} ± " in page


def _results(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def test_measured_numbers_come_from_the_benchmark_files():
    """The other benchmarks' numbers (recipes page, `<!-- generated: measured -->`) are their files'."""
    page = _hooks().measured_page()
    results = ROOT / "benchmarks" / "results"
    for name in ("cpu_precision.json", "cpu_precision_amx.json"):
        if (results / name).is_file():
            cp = _results(name)
            assert f"CPU kind: {cp['cpu_kind']}" in page
            for r in cp["rows"]:
                assert f"x{r['vs_baseline']:.2f}" in page or f"{r['img_s']:,.1f} img/s" in page, (name, r["variant"])
            for r in cp["rows"]:
                if r["variant"].startswith("baseline"):
                    assert f"{r['img_s']:,.1f} img/s, {r['gflops']:.0f} GFLOP/s ({r['peak_share']:.0%}" in page
    if (results / "serve_load.json").is_file():
        for r in _results("serve_load.json")["rows"]:
            assert f"| {r['clients']} | {r['mode']} | {r['rps']:,.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |" in page
    if (results / "robustness.json").is_file():
        rb = _results("robustness.json")
        assert f"**{rb['speed']['table_s']:.0f} s**" in page and f"**{rb['speed']['ratio']:.2f}**" in page
        for r in rb["rows"]:
            assert f"| {r['clean_top1']:.2f} | {r['mca']:.2f} | {r['mce_vs_fast']:.1f} |" in page, r["row"]
    if (results / "robustness_fast_table.json").is_file():
        assert f"**mCA {_results('robustness_fast_table.json')['mca']:.2f}%**" in page
    if (results / "audit.json").is_file():
        au = _results("audit.json")
        sym = au["stages"]["sym"]
        assert f"**{sym['ratio_to_train_fast']:.2f}x**" in page and f"**{sym['precision_at_k']:.2f}**" in page
        assert f"**{sym['dup_recall_above_threshold']:.1%}**" in page
    if (results / "tune.json").is_file():
        tu = _results("tune.json")
        for name, r in tu["searches"].items():
            assert f"| `--pruner {name}` | {r['wall_s']:.0f} | {r['best_val_top1']:.2f} |" in page
        assert f"tuned {tu['retrained']['tuned']['mean']:.2f}%" in page
    assert (ROOT / "docs" / "recipes.md").read_text().count("<!-- generated: measured -->") == 1


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))


def test_numbers_typed_in_the_docs_are_not_numbers_of_a_results_file():
    """A page may not retype what the generated pages read from the files: such a copy drifts unseen.

    The headline figures of each results file, formatted as the pages print them, must not occur in
    the hand-written Markdown (the generated text is added at build time, not stored)."""
    figures = []
    ts = _results("train_speed.json")
    figures += [f"{ts['top1_tta_mean']:.2f}% ± {ts['top1_tta_sd']:.2f}", f"{ts['mean_wall_s']:.0f} s (6.1 min)"]
    lt = _results("long_tail.json")["results"]["recipe (cifar10_lt100.yaml)"]
    figures.append(f"{sum(r['top1'] for r in lt) / len(lt):.2f}% ± ")
    cp = _results("cpu_precision.json")
    figures.append(f"{cp['rows'][0]['img_s']:.1f} img/s, {cp['rows'][0]['gflops']:.0f} GFLOP/s")
    text = _docs_text() + (ROOT / "README.md").read_text(encoding="utf-8")
    typed = [f for f in figures if f in text]
    assert not typed, f"retyped from benchmarks/results/: {typed}; use a <!-- generated: ... --> marker"


def test_readme_is_short_and_says_what_cifarkit_is_first():
    """Issue #34: the README is a front door (<= 8 KB), what cifarkit is in its first line, the two
    fresh-machine commands, links to the docs; measured numbers live in the generated docs pages."""
    import re

    raw = (ROOT / "README.md").read_bytes()
    assert len(raw) <= 8192, f"README.md is {len(raw)} bytes; move detail into docs/"
    text = raw.decode("utf-8")
    first = text.splitlines()[0]
    assert first.startswith("# cifarkit") and "CIFAR-10" in first and "classifier" in first
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh"):
        assert f"\n{command} " in text, command
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci  # CI runs the README's test command
    assert "## The workflow" in text and "## What it promises" in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):  # every docs link points at a page that exists
        assert (ROOT / link).is_file(), link
    for page in ("safety.md", "recipes.md", "getting-started.md", "workflow/training.md", "workflow/using.md"):
        assert f"(docs/{page}" in text, page
    assert not re.search(r"\d+(\.\d+)?% ± |\d+ min \d+ s|\d (img|images)/s", text), "a measured number in the README"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    for pkg in ("nbclient", "nbformat", "ipykernel", "pandas", "pytorch_grad_cam"):
        pytest.importorskip(pkg, reason=f"the notebooks need {pkg} (the [docs] extra)")
    monkeypatch.setenv("PYTHONPATH", str(SRC.parent))  # the kernel imports this checkout's cifarkit
    monkeypatch.setenv("CIFARKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CIFARKIT_FOLDER", raising=False)
    # one epoch instead of six: this checks the notebook runs, not how well it trains (on an AVX2
    # CPU in fp32, in one test worker's single thread, six epochs took 285 s per notebook)
    nb, seconds = _notebook_source().execute(EXAMPLES / name, tmp_path, replace={"train.epochs=6": "train.epochs=1"})
    assert all("train.epochs=6" not in c.source for c in nb.cells)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    # the tutorial shows 6: two sample grids, the curves, a prediction, Grad-CAM for "cat" and "dog"
    assert figures >= (6 if name == "cifar10_tutorial.ipynb" else 4), f"{name}: only {figures} figures shown"
    print(f"{name}: executed in {seconds:.0f} s")


@pytest.mark.slow
def test_site_builds_in_strict_mode(tmp_path):
    for pkg in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"the docs packages are not installed ({pkg} missing): pip install -e '.[docs]'")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(SRC.parent), "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "cifarkit data export" in cli and "--overwrite" in cli
    api = (site / "api" / "data" / "index.html").read_text(encoding="utf-8")
    assert "read_cifar" in api and "Raises" in api
    assert (site / "notebook" / "cifar10_tutorial.html").is_file()



def test_readme_and_home_page_show_the_generated_pictures():
    """Both open with the pictures of real outputs that scripts/readme_images.py makes from the demo."""
    import re

    images = ROOT / "docs" / "images"
    readme = (ROOT / "README.md").read_text()
    home = (ROOT / "docs" / "index.md").read_text()
    in_readme = set(re.findall(r"\]\(docs/images/([\w.]+\.png)\)", readme))
    in_home = set(re.findall(r"\]\(images/([\w.]+\.png)\)", home))
    made = {p.name for p in images.glob("*.png")}
    assert {"samples.png", "curves.png", "confusion_matrix.png", "cam.png", "report.png", "serve.png"} <= in_readme
    assert in_readme <= in_home == made  # every picture made is shown, none is missing
    assert readme.index("## What you get") < readme.index("## The workflow")
    assert sum(p.stat().st_size for p in images.glob("*.png")) < 3_000_000  # the repository stays small
    notes = (images / "README.md").read_text()
    assert "scripts/readme_images.py" in notes and "cifarkit demo" in notes
