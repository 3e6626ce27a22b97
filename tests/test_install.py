"""What `pip install cifarkit` gives: the wheel alone, in a fresh virtualenv, from an empty folder.

The wheel is built from this checkout and installed with pip into a new virtualenv; torch and
the other dependencies come from the virtualenv running the tests (a .pth file), so nothing is
downloaded. Every command then runs in an empty temporary folder with no PYTHONPATH, so neither
the clone's `src/` nor its `configs/` can help.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


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
    # dependencies (torch, ...) from the test environment; a plain path line does not run that
    # environment's own .pth files, so its editable cifarkit stays invisible
    Path(site, "_cifarkit_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
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
    assert sorted(p.name for p in empty.iterdir()) == ["demo", "run"]  # nothing written elsewhere
