"""What `pip install cifarkit` gives: the wheel alone, in a fresh virtualenv, from an empty folder.

The wheel is built from this checkout and installed with pip into a new virtualenv that holds
only torch and torchvision (and what they themselves require), taken from the test environment
through a folder of links so nothing big is downloaded; pip then resolves everything else from
the wheel's own requirements, from the package index pip is configured with (on the CI machines
a local one). So a dependency missing from pyproject fails this test. Every command then runs
in an empty temporary folder with no PYTHONPATH, so neither the clone's `src/` nor its
`configs/` can help.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def torch_only(dest: Path) -> Path:
    """`dest`, a folder of links to torch, torchvision and their own requirements (recursively,
    markers evaluated, no extras) as installed here: what a user has after installing PyTorch."""
    from packaging.requirements import Requirement

    seen: dict[str, object] = {}
    todo = ["torch", "torchvision"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # an optional platform dependency that is not installed here
            continue
        seen[key] = dist
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    dest.mkdir()
    for dist in seen.values():
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            link = dest / top
            if not link.exists() and not top.endswith(".pth"):
                link.symlink_to(base / top)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh virtualenv with the wheel of this checkout installed."""
    tmp = tmp_path_factory.mktemp("install")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "wheel"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next((tmp / "wheel").glob("cifarkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cifarkit/configs/cifar10_fast.yaml", "cifarkit/sample/cifar10_sample.tar.gz"} <= set(names)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    site = subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch and torchvision only: a plain path line, so the linked folder's own .pth files do not run
    Path(site, "_torch_only.pth").write_text(str(torch_only(tmp / "torch_only")) + "\n")
    r = subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(vpy), "-c", "import onnx"], capture_output=True, text=True)
    assert r.returncode != 0  # the extras are not there: the base install is what is tested
    return venv / "bin"


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "cifarkit"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_wheel_gives_the_whole_tool(installed: Path, tmp_path: Path, cifar10_small: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([str(installed / "python"), "-c", "import cifarkit; print(cifarkit.__file__)"], cwd=empty,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, capture_output=True,
                       text=True)
    assert str(installed.parent) in r.stdout, r.stdout + r.stderr  # the wheel's copy, not the clone's src/

    r = _run(installed, empty, "configs")
    assert r.returncode == 0, r.stderr
    shipped = sorted(p.stem.removeprefix("cifar10_") for p in (ROOT / "src" / "cifarkit" / "configs").glob("*.yaml"))
    names = [line.split()[0] for line in r.stdout.splitlines()[:len(shipped)]]
    assert names == shipped and {"airbench94", "fast", "mobilenetv2_finetune", "resnet18"} <= set(names), r.stdout
    assert "airbench94_muon" in r.stdout  # each with its one-line description
    r = _run(installed, empty, "configs", "show", "fast")
    assert r.returncode == 0 and "name: cifar10_fast" in r.stdout and "optim:" in r.stdout

    r = _run(installed, empty, "train", "fast", "--set", f"data.root={cifar10_small}", "--set", "train.max_iters=2",
             "--set", "train.batch_size=100", "--set", "eval.tta=none", "--set", "log.plots=false",
             "--work-dir", "run")
    assert r.returncode == 0, r.stderr
    assert (empty / "run" / "last.pt").is_file()

    r = _run(installed, empty, "demo", "--quick", "--out", "demo")
    assert r.returncode == 0, r.stderr
    assert "demo finished" in r.stdout and (empty / "demo" / "run" / "best.pt").is_file()
    # the steps that need an extra are skipped, each with the line that says which one
    assert "Grad-CAM skipped: Grad-CAM needs the pytorch_grad_cam package" in r.stdout
    assert "pip install 'cifarkit[cam]'" in r.stdout and "pip install 'cifarkit[onnx]'" in r.stdout
    # robustness from the wheel: its package data (the frost textures) travels with it
    r = _run(installed, empty, "robustness", "run/last.pt", "--corruptions", "frost", "fog", "--severities", "3",
             "--limit", "20", "--out", "run/robustness")
    assert r.returncode == 0, r.stderr
    assert "frost" in r.stdout and (empty / "run" / "robustness" / "robustness.png").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["demo", "run"]  # nothing written elsewhere
