"""The optional extras: the docs list exactly pyproject's, and a missing one is one error line.

A missing package is simulated by putting None in sys.modules (import then raises
ModuleNotFoundError), in-process, or by a `sitecustomize` that blocks it in a CLI subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cifarkit.extras import EXTRAS, MissingExtra, require

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def listed_extras() -> dict[str, str]:
    """The extras `docs/getting-started.md` lists between its `<!-- extras -->` markers."""
    text = (ROOT / "docs" / "getting-started.md").read_text()
    block = text[text.index("<!-- extras -->"):text.index("<!-- /extras -->")]
    return dict(re.findall(r"^- `\[([a-z]+)\]`: (.+)$", block, flags=re.M))


def test_docs_list_every_extra_of_pyproject_once_each():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    listed = listed_extras()
    assert sorted(listed) == sorted(declared) == sorted(EXTRAS)
    assert all(len(v) > 20 for v in listed.values())  # a line that says what it adds


def test_notebook_extra_installs_jupyterlab_and_the_docs_say_so():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("jupyterlab") for r in declared["notebook"])
    tutorial = (ROOT / "docs" / "tutorial.md").read_text()
    assert "pip install '.[notebook]'" in tutorial and "jupyter lab examples/" in tutorial


def test_require_names_the_step_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingExtra, match=r"^ONNX export needs the onnx package, which is not installed: "
                                           r"pip install 'cifarkit\[onnx\]'$"):
        require("onnx", "ONNX export")


def test_export_without_onnx_fails_before_any_work(monkeypatch, tmp_path):
    from cifarkit.export import export_model

    monkeypatch.setitem(sys.modules, "onnx", None)
    # the checkpoint does not even exist: the extra is checked first
    with pytest.raises(MissingExtra, match=r"cifarkit\[onnx\]"):
        export_model(tmp_path / "missing.pt", "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def _blocking_env(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment whose Python cannot import `modules` (a sitecustomize puts None in sys.modules)."""
    site = tmp_path / "block"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_cli_serve_without_its_extra_is_one_error_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cifarkit", "serve", "nothing.pt"], cwd=tmp_path,
                       env=_blocking_env(tmp_path, "fastapi"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: cifarkit serve needs the fastapi package, which is not installed: pip install 'cifarkit[serve]'"]


def test_cam_without_grad_cam_names_its_extra(monkeypatch):
    from cifarkit.cam import compute_cam

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(MissingExtra, match=r"^Grad-CAM needs the pytorch_grad_cam package.*cifarkit\[cam\]'$"):
        compute_cam(None, None)  # checked before the classifier or the image is looked at


def test_cli_safety_net_turns_an_extra_imported_deep_inside_into_one_line():
    from cifarkit.extras import extra_of_error

    assert "cifarkit[pandas]" in str(extra_of_error(ModuleNotFoundError("No module named 'pandas'", name="pandas")))
    assert extra_of_error(ModuleNotFoundError("No module named 'nope'", name="nope")) is None  # a real bug: traceback


def test_spatter_without_opencv_fails_before_any_work(monkeypatch, tmp_path):
    from cifarkit.analysis.robustness import robustness

    monkeypatch.setitem(sys.modules, "cv2", None)
    # the checkpoint does not even exist: the extra is checked first, not 60 table cells in
    with pytest.raises(MissingExtra, match=r"spatter corruption needs the cv2 package.*cifarkit\[robustness\]'$"):
        robustness(tmp_path / "missing.pt", tmp_path / "out", extra=True)
    assert list(tmp_path.iterdir()) == []
