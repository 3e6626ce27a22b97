"""Hostile output places (issue #33, classes 1 and 2): an output never replaces a device, FIFO,
socket, folder or link; an output folder never overlaps the data; `--overwrite` removes only what
cifarkit itself wrote (`safepath.OUTPUTS_RECORD`); output places are checked before any work; and
Windows device names in the data never reach the file system unescaped. Every hostile place is
built here at test time and driven through the real CLI (`cli_run`: the parser, handlers and the
top-level error handling of `python -m cifarkit`)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarkit.safepath import OUTPUTS_RECORD, safe_component
from conftest import NARROW, cli_run, make_checkpoint, make_cifar10
from test_hostile_runs import one_error_line


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained but complete checkpoint: the output checks come before any of its work."""
    return make_checkpoint("airnet", tmp_path_factory.mktemp("ck") / "ck.pt")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return make_cifar10(tmp_path_factory.mktemp("c10"), per_batch=10, test=10)


def make_folder(root: Path, classes: list[str], n: int = 3, split: str = "train") -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: what must be untouched."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[Path]:
    """A FIFO at `path` with a reader open, so that code wrongly writing into it fails the test
    (the FIFO would still be one, with bytes in it) instead of hanging it."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield path
        assert stat.S_ISFIFO(os.lstat(path).st_mode), f"{path} was replaced"
        with contextlib.suppress(BlockingIOError):
            assert os.read(fd, 1) == b"", f"something was written into {path}"
    finally:
        os.close(fd)


def char_device(path: Path) -> Path:
    """A character device node like /dev/null (1, 3), made in tmp_path: a test must never risk
    the real /dev/null. Creating one needs root (CAP_MKNOD), which the suite runs as."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    return path


def assert_device(path: Path) -> None:
    st = os.lstat(path)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3), f"{path} is no longer the device"


# ---- class 1: --out onto a device, a FIFO, a link ----------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_calibrate_and_export_refuse_a_fifo(ckpt: Path, tmp_path: Path, overwrite: bool):
    flag = ["--overwrite"] if overwrite else []
    with fifo(tmp_path / "cal.pt") as f:
        one_error_line(cli_run("calibrate", str(ckpt), "--out", str(f), *flag), str(f), "FIFO")
    assert not (tmp_path / "cal_reliability.png").exists()
    with fifo(tmp_path / "model.onnx") as f:
        one_error_line(cli_run("export", str(ckpt), "--out", str(f), *flag), str(f), "FIFO")


@pytest.mark.parametrize("overwrite", [False, True])
def test_calibrate_and_export_refuse_a_device(ckpt: Path, tmp_path: Path, overwrite: bool):
    flag = ["--overwrite"] if overwrite else []
    dev = char_device(tmp_path / "null")
    one_error_line(cli_run("calibrate", str(ckpt), "--out", str(dev), *flag), str(dev), "device")
    assert_device(dev)
    assert not (tmp_path / "null_reliability.png").exists()
    one_error_line(cli_run("export", str(ckpt), "--out", str(dev), "--format", "torchscript", *flag), str(dev),
                   "device")
    assert_device(dev)


def test_calibrate_checks_the_derived_figure_name(ckpt: Path, tmp_path: Path):
    """--out cal.pt also writes cal_reliability.png: a FIFO or link there is refused before any work."""
    with fifo(tmp_path / "cal_reliability.png") as f:
        one_error_line(cli_run("calibrate", str(ckpt), "--out", str(tmp_path / "cal.pt"), "--overwrite"), str(f))
    target = tmp_path / "precious.txt"
    target.write_text("keep\n")
    (tmp_path / "c2_reliability.png").symlink_to(target)
    one_error_line(cli_run("calibrate", str(ckpt), "--out", str(tmp_path / "c2.pt"), "--overwrite"),
                   "symbolic link")
    assert target.read_text() == "keep\n" and (tmp_path / "c2_reliability.png").is_symlink()
    assert not (tmp_path / "cal.pt").exists() and not (tmp_path / "c2.pt").exists()


def test_other_file_outputs_refuse_special_files(ckpt: Path, cifar: Path, tmp_path: Path):
    """data show, plot and report replace a regular file but never a device or FIFO."""
    dev = char_device(tmp_path / "grid.png")
    one_error_line(cli_run("data", "show", str(cifar), "--out", str(dev)), str(dev), "device")
    assert_device(dev)
    with fifo(tmp_path / "preds.csv") as f:
        one_error_line(cli_run("eval", str(ckpt), "--data", str(cifar), "--predictions", str(f)), str(f), "FIFO")


def test_an_output_folder_that_is_a_fifo(ckpt: Path, cifar: Path, tmp_path: Path):
    with fifo(tmp_path / "out") as f:
        one_error_line(cli_run("data", "export", str(cifar), str(f), "--overwrite"), str(f))
        one_error_line(cli_run("analyze", str(ckpt), "--data", str(cifar), "--out", str(f), "--overwrite"), str(f))


def test_a_regular_file_is_still_replaced_with_overwrite(ckpt: Path, cifar: Path, tmp_path: Path):
    """The control: what is allowed still works (an old export replaced with --overwrite)."""
    out = tmp_path / "m.ts"
    out.write_bytes(b"old")
    one_error_line(cli_run("export", str(ckpt), "--out", str(out), "--format", "torchscript"), "--overwrite")
    r = cli_run("export", str(ckpt), "--out", str(out), "--format", "torchscript", "--data", str(cifar),
                "--overwrite")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() != b"old" and stat.S_ISREG(os.lstat(out).st_mode)


def test_view_outputs_replace_only_their_own_file_unless_told(trained_run: Path, cifar10_small: Path,
                                                              tmp_path: Path):
    """report, plot and data show replace an existing file only with --overwrite (their defaults are
    refreshed): `report --out` could turn a dataset image or the run's checkpoint into HTML."""
    victim = tmp_path / "keep.png"
    victim.write_bytes(b"mine")
    for args in (["report", str(trained_run), "--out", str(tmp_path / "keep.html")],
                 ["plot", str(trained_run), "--out", str(victim)],
                 ["data", "show", str(cifar10_small), "--out", str(victim)]):
        if args[0] == "report":
            Path(args[-1]).write_bytes(b"mine")
        one_error_line(cli_run(*args), "--overwrite")
    assert victim.read_bytes() == b"mine" and (tmp_path / "keep.html").read_bytes() == b"mine"
    before = (trained_run / "best.pt").read_bytes()
    one_error_line(cli_run("report", str(trained_run), "--out", str(trained_run / "best.pt"), "--overwrite"),
                   ".html")
    assert (trained_run / "best.pt").read_bytes() == before
    data_page = cifar10_small / "page.html"  # inside the run's data.root
    one_error_line(cli_run("report", str(trained_run), "--out", str(data_page)), "inside the input")
    assert not data_page.exists()


# ---- class 2: output folders and the data; --overwrite removes only our own files ----------------
@pytest.fixture
def folds_data(tmp_path: Path) -> Path:
    """An image folder dataset with a class named `folds` (the audit's own subfolder name)."""
    data = make_folder(tmp_path / "data", ["cat", "folds"])
    return make_folder(data, ["cat", "folds"], split="test")


def test_audit_overwrite_replaces_its_own_results_and_keeps_yours(cifar: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["data", "audit", str(cifar), "--out", str(out), "--folds", "2", "--set", NARROW, "--set",
            "train.batch_size=10", "--set", "train.epochs=1", "--device", "cpu", "--json"]
    assert cli_run(*args).returncode == 0
    own = set(json.loads((out / OUTPUTS_RECORD).read_text())["outputs"])
    assert {"folds", "audit.json", "duplicates.csv"} <= own
    (out / "notes.txt").write_text("mine\n")
    (out / "folds" / "0" / "stale.txt").write_text("an earlier audit's fold: goes\n")
    r = cli_run(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "mine\n"
    assert not (out / "folds" / "0" / "stale.txt").exists() and (out / "folds" / "1").is_dir()


@pytest.mark.parametrize("where", ["data", "data/train", "parent"])
def test_audit_out_overlapping_the_data_is_refused(folds_data: Path, where: str):
    before = tree(folds_data)
    out = {"data": folds_data, "data/train": folds_data / "train", "parent": folds_data.parent}[where]
    line = one_error_line(cli_run("data", "audit", str(folds_data), "--out", str(out), "--overwrite",
                                  "--folds", "2"), str(out))
    assert "input" in line
    assert tree(folds_data) == before  # the class `folds` kept every image, nothing added


def test_data_export_into_its_own_data_is_refused(folds_data: Path, cifar: Path, tmp_path: Path):
    before = tree(folds_data)
    for out in (folds_data, folds_data / "train" / "cat"):
        one_error_line(cli_run("data", "export", str(folds_data), str(out), "--overwrite"), str(out), "input")
    assert tree(folds_data) == before
    one_error_line(cli_run("data", "export", str(cifar), str(cifar.parent), "--overwrite"), "holds the input")


def test_data_export_overwrite_keeps_files_it_did_not_write(cifar: Path, tmp_path: Path):
    out = tmp_path / "exp"
    assert cli_run("data", "export", str(cifar), str(out)).returncode == 0
    assert (out / OUTPUTS_RECORD).is_file()
    r = cli_run("data", "export", str(cifar), str(out), "--overwrite", "--format", "jpg")
    assert r.returncode == 0, r.stderr  # an earlier export: replaced
    assert any(out.rglob("*.jpg")) and not any(out.rglob("*.png"))
    (out / "train" / "notes.txt").write_text("mine\n")
    one_error_line(cli_run("data", "export", str(cifar), str(out), "--overwrite"), "train/notes.txt",
                   OUTPUTS_RECORD)
    assert (out / "train" / "notes.txt").read_text() == "mine\n"
    other = tmp_path / "other"  # a folder that no export wrote: never replaced
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "x.png").write_bytes(b"x")
    one_error_line(cli_run("data", "export", str(cifar), str(other), "--overwrite"), str(other))
    assert (other / "sub" / "x.png").read_bytes() == b"x"


def test_audit_overwrite_never_clears_a_folds_folder_it_did_not_write(cifar: Path, tmp_path: Path):
    out = tmp_path / "out"
    (out / "folds" / "0").mkdir(parents=True)
    (out / "folds" / "0" / "mine.txt").write_text("mine\n")
    (out / "audit.json").write_text("{}")
    line = one_error_line(cli_run("data", "audit", str(cifar), "--out", str(out), "--overwrite", "--folds", "2"))
    assert OUTPUTS_RECORD in line and ("folds" in line or "audit.json" in line)
    assert (out / "folds" / "0" / "mine.txt").read_text() == "mine\n" and (out / "audit.json").read_text() == "{}"


def test_robustness_overwrite_replaces_only_its_own_files(ckpt: Path, cifar: Path, tmp_path: Path):
    out = tmp_path / "rb"
    args = ["robustness", str(ckpt), "--data", str(cifar), "--split", "test", "--out", str(out), "--limit", "4",
            "--corruptions", "gaussian_noise", "--severities", "1", "--device", "cpu", "--precision", "fp32"]
    assert cli_run(*args).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    r = cli_run(*args, "--overwrite")
    assert r.returncode == 0, r.stderr  # its own robustness.json etc. replaced
    assert (out / "notes.txt").read_text() == "mine\n"
    assert "robustness.json" in json.loads((out / OUTPUTS_RECORD).read_text())["outputs"]
    foreign = tmp_path / "rb2"  # same names, written by someone else: refused, untouched
    foreign.mkdir()
    (foreign / "robustness.json").write_text("theirs\n")
    one_error_line(cli_run(*args[:7], str(foreign), *args[8:], "--overwrite"), "robustness.json", OUTPUTS_RECORD)
    assert (foreign / "robustness.json").read_text() == "theirs\n"


def test_analyze_overwrite_refuses_a_same_named_file_it_did_not_write(ckpt: Path, cifar: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"train": "mine"}')  # a run's own metrics.json
    one_error_line(cli_run("analyze", str(ckpt), "--data", str(cifar), "--out", str(out), "--overwrite"),
                   "metrics.json")
    assert (out / "metrics.json").read_text() == '{"train": "mine"}'


# ---- item 11: output places checked before the work ------------------------------------------------
@pytest.mark.parametrize("place", ["under_a_file", "proc"])
def test_audit_write_manifest_place_is_checked_before_training(cifar: Path, tmp_path: Path, place: str):
    (tmp_path / "a_file").write_text("x\n")
    manifest = tmp_path / "a_file" / "clean.csv" if place == "under_a_file" else Path("/proc/cifarkit/clean.csv")
    out = tmp_path / "out"
    one_error_line(cli_run("data", "audit", str(cifar), "--out", str(out), "--folds", "2", "--write-manifest",
                           str(manifest)), "--write-manifest")
    assert not out.exists()  # refused before the folds trained (or anything was written)


def test_calibrate_place_is_checked_before_the_checkpoint_is_read(tmp_path: Path):
    """A checkpoint that does not exist: the output place is refused first, in one line."""
    (tmp_path / "a_file").write_text("x\n")
    one_error_line(cli_run("calibrate", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a_file" / "c.pt")),
                   "a_file")


# ---- item 11: Windows device names ---------------------------------------------------------------
WINDOWS = ["CON", "aux", "nul.txt", "Com1", "LPT9", "prn.tar.gz", "con .txt", "COM\u00b9"]


def test_windows_device_names_are_escaped_injectively():
    out = [safe_component(n) for n in WINDOWS]
    bare = {"con", "prn", "aux", "nul", *(f"{p}{d}" for p in ("com", "lpt") for d in "123456789\u00b9\u00b2\u00b3")}
    assert all(o.split(".")[0].rstrip(" ").lower() not in bare for o in out), out
    assert len(set(out)) == len(out)
    assert len({safe_component(n) for n in [*WINDOWS, *out]}) == 2 * len(WINDOWS)  # escaped forms stay distinct
    for ordinary in ("cat", "console", "auxiliary", "COM0", "nullify.png", "icon", "truck"):
        assert safe_component(ordinary) == ordinary


def test_windows_device_names_round_trip_through_data_export(tmp_path: Path):
    classes = ["CON", "aux", "nul.txt", "cat"]
    data = make_folder(tmp_path / "data", classes, n=2)
    (data / "train" / "cat" / "0.png").rename(data / "train" / "cat" / "Nul.png")
    out = tmp_path / "exp"
    r = cli_run("data", "export", str(data), str(out))
    assert r.returncode == 0, r.stderr
    bare = {"con", "prn", "aux", "nul"}
    for p in out.rglob("*"):
        assert p.name.split(".")[0].rstrip(" ").lower() not in bare, p
    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["label_name"] for r in rows}) == sorted(classes)
    assert all((out / r["path"]).is_file() for r in rows)
    from cifarkit.data.sources import load_dataset

    back = load_dataset(str(out / "manifest.csv"), "train")  # the export reads back with the names as given
    assert sorted(back.classes) == sorted(classes) and len(back) == 2 * len(classes)


# ---- the adversarial pass after the fixes: temporary names, NUL bytes, run folders, sizes -------
def test_a_link_planted_at_the_temporary_name_is_not_followed(ckpt: Path, tmp_path: Path):
    """Temporary files used to be named `.<stem>.<pid>.tmp<suffix>`: a symlink planted there made
    `predict --out` write its CSV outside the folder. Now the name is random and created exclusively."""
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "o"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (out / f".predictions.{os.getpid()}.tmp.csv").symlink_to(victim)  # cli_run runs in this process
    r = cli_run("predict", str(ckpt), str(img), "--out", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "mine"
    assert stat.S_ISREG(os.lstat(out / "predictions.csv").st_mode)
    from cifarkit.safepath import temp_beside

    a, b = temp_beside(out / "f.png"), temp_beside(out / "f.png")
    assert a != b and a.suffix == ".png" and stat.S_ISREG(os.lstat(a).st_mode)


def test_a_nul_byte_in_a_path_from_stdin_is_one_line(ckpt: Path):
    from test_cli_data import run

    r = run("predict", str(ckpt), "-", input="a\x00b\n")
    assert "Traceback" not in r.stderr and r.returncode != 0
    assert any(ln.startswith("error:") and "NUL" in ln for ln in r.stderr.splitlines()), r.stderr


def test_a_run_folder_inside_the_data_is_refused(cifar10_small: Path, tmp_path: Path):
    before = tree(cifar10_small)
    for work in (cifar10_small, cifar10_small / "cifar-10-batches-py" / "runx"):
        one_error_line(cli_run("train", "fast", "--set", f"data.root={cifar10_small}", "--set", NARROW,
                               "--work-dir", str(work)), "--work-dir", "inside the data")
    assert tree(cifar10_small) == before


@pytest.mark.parametrize("setting, key", [
    ("data.image_size=100000", "data.image_size"), ("train.threads=99999", "train.threads"),
    ("data.crop_padding=100000000", "data.crop_padding"), ("data.eval_crop=100000", "data.eval_crop"),
    ("data.rrc_size=100000", "data.rrc_size"), ("model.kwargs.widths=[]", "model.kwargs"),
    ("model.kwargs.widths=[0,0,0]", "model.kwargs"), ("model.kwargs.widths=[-1,2,3]", "model.kwargs"),
])
def test_sizes_and_model_arguments_are_bounded_before_work(cifar10_small: Path, tmp_path: Path, setting: str,
                                                           key: str):
    """Each was a traceback, a segmentation fault (threads) or 24 GB and the kernel's OOM killer (image_size)."""
    one_error_line(cli_run("train", "fast", "--set", f"data.root={cifar10_small}", "--set", setting,
                           "--work-dir", str(tmp_path / "run")), key)
