"""Untrusted input, round four: the files and values a user names.

Every user-named input (config, search space, recipe, `eval --exclude`, manifest, tune journal,
MLflow sqlite store, `predict -` on stdin) goes through `cifarkit.userfile`: a FIFO or a device
is one `error:` line instead of a hang or a MemoryError. Config floats have ranges, so overflow
(3.5e38, 1e300) is one line naming the key; negative seeds, unavailable devices, a damaged
journal, a class emptied by the validation split, a NaN temperature and the other small ones of
the issue are one line each, never a traceback. The hostile inputs are made at test time; cases
that would hang on a regression run in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import NARROW, cli_run, make_checkpoint
from test_bounded_input import PEAK_WRAPPER

GIB = 2**30


def one_error_line(r: subprocess.CompletedProcess, *names: str) -> str:
    """The command failed with exactly one stderr line, `error: ...`, naming every one of `names`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stdout[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr[-2000:]
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_checkpoint("airnet", tmp_path_factory.mktemp("inputs") / "model.pt")


# Each case runs `cifarkit.cli.main(argv)` in one child process (one interpreter start for all);
# a regression that blocks on a FIFO or reads /dev/zero for ever makes the child time out and the
# test fail instead of hanging the suite.
BATCH = """
import contextlib, io, json, sys
from cifarkit.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def test_fifos_and_devices_named_as_inputs_are_one_line_each_without_opening(tmp_path: Path, model: Path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {log_uniform: [1.0e-3, 0.5]}\n")
    tune = ["tune", "fast", "--space", str(space), "--trials", "1", "--out", str(tmp_path / "t"),
            "--set", f"data.root={tmp_path}"]
    cases = {  # argv -> (the path the line names, what it says it is)
        ("train", str(fifo)): "named pipe",
        ("train", "/dev/zero"): "a device",
        ("eval", str(model), "--exclude", str(fifo)): "named pipe",
        ("eval", str(model), "--exclude", "/dev/zero"): "a device",
        ("tune", "fast", "--space", str(fifo), "--trials", "1"): "named pipe",
        ("tune", "fast", "--space", "/dev/zero", "--trials", "1"): "a device",
        ("data", "audit", str(tmp_path), "--out", str(tmp_path / "a"), "--recipe", str(fifo)): "named pipe",
        (*tune, "--storage", str(fifo)): "named pipe",
        (*tune, "--storage", "/dev/zero"): "a device",
        ("train", "fast", "--set", f"data.root={tmp_path}", "--set", f"log.mlflow=sqlite:///{fifo}",
         "--work-dir", str(tmp_path / "w")): "named pipe",
    }
    r = subprocess.run([sys.executable, "-c", BATCH, json.dumps([list(c) for c in cases])], capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    for (argv, kind), (code, err) in zip(cases.items(), json.loads(r.stdout)):
        path = next(a.split("sqlite:///")[-1] for a in argv if str(fifo) in a or a == "/dev/zero")
        one_error_line(subprocess.CompletedProcess(argv, code, "", err), path, kind)
    assert not (tmp_path / "w").exists() and not (tmp_path / "t").exists()


def test_a_manifest_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)
    code = ("from cifarkit.data.folder import read_manifest\n"
            "from cifarkit.errors import DataError\n"
            f"try:\n    read_manifest({str(fifo)!r})\nexcept DataError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "named pipe" in r.stdout and str(fifo) in r.stdout, r.stdout + r.stderr


def test_user_files_are_size_bounded(tmp_path: Path):
    from cifarkit.errors import DataError
    from cifarkit.userfile import read_user_bytes, read_user_lines

    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(DataError, match="larger than 4,096 bytes"):
        read_user_bytes(big, "list", 4096)
    assert read_user_bytes(big, "list", 5000) == b"x" * 5000
    with open("/dev/zero") as endless, pytest.raises(DataError, match="a line longer than 4,096"):
        read_user_lines(endless, "stdin", max_lines=10)
    with open(big, "w") as f:
        f.write("a\n\n b \n" * 10)
    with open(big) as f, pytest.raises(DataError, match="more than 5 lines"):
        read_user_lines(f, "stdin", max_lines=5)
    with open(big) as f:
        assert read_user_lines(f, "stdin", max_lines=20) == ["a", "b"] * 10


# peak of `predict MODEL -` fed from /dev/zero: torch + the model ~0.7 GiB here; before the fix the
# endless "line" grew to 4.9 GB (the issue) and ended in a MemoryError traceback
STDIN_PEAK_LIMIT = 1.5 * GIB


def test_predict_paths_from_dev_zero_on_stdin_is_one_line_in_bounded_memory(model: Path):
    with open("/dev/zero", "rb") as zero:
        r = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, "predict", str(model), "-"], stdin=zero,
                           capture_output=True, text=True, timeout=120)
    peak = [int(x.split()[1]) * 1024 for x in r.stderr.splitlines() if x.startswith("PEAK_KB ")]
    err = "\n".join(x for x in r.stderr.splitlines() if not x.startswith("PEAK_KB "))
    one_error_line(subprocess.CompletedProcess(r.args, r.returncode, r.stdout, err), "stdin", "longer than")
    assert peak and peak[0] < STDIN_PEAK_LIMIT, peak


# ---- tracebacks that are now one line --------------------------------------------------------------
@pytest.mark.parametrize("value, key", [
    ("optim.lr=3.5e38", "optim.lr"), ("optim.lr=1e39", "optim.lr"), ("optim.lr=1e300", "optim.lr"),
    ("optim.weight_decay=1e308", "optim.weight_decay"), ("data.mean=[1e300,0,0]", "data.mean"),
    ("optim.grad_clip=3.5e38", "optim.grad_clip"),
])
def test_float_overflow_in_a_config_is_one_line_naming_the_key_and_range(value: str, key: str, tmp_path: Path):
    line = one_error_line(cli_run("train", "fast", "--set", value, "--set", f"data.root={tmp_path}"), key)
    assert "must be at most" in line and "valid:" in line


def test_a_tiny_lr_whose_per_lr_weight_decay_overflows_is_one_line(tmp_path: Path):
    # the fast recipe has optim.wd_per_lr: each group's decay is weight_decay / lr, 4e297 here
    one_error_line(cli_run("train", "fast", "--set", "optim.lr=1e-300", "--set", f"data.root={tmp_path}"),
                   "optim.lr", "wd_per_lr")


def test_space_ranges_and_choices_are_checked_cheaply_and_strictly(tmp_path: Path):
    from cifarkit.config import load_config
    from cifarkit.errors import ConfigError
    from cifarkit.tune import load_space

    base = load_config("fast", ["optim.wd_per_lr=false"])  # with it, the low end 1e-300 is refused first
    spaces = {
        "optim.lr: {log_uniform: [1.0e-300, 1.0e+300]}\n": "optim.lr: the value 1e+300 is not valid",
        "optim.lr: {choice: [" + ", ".join(f"{i + 1}.0e-5" for i in range(40_000)) + "]}\n": "more than 1,000",
        "optim.lr: {log_uniform: [1.0e-3, 0.5]}\ntrain.label_smoothing: {uniform: [0, 0.3]}\n"
        "optim.lr: {log_uniform: [1.0e-4, 0.1]}\n": "the key 'optim.lr' is given twice (lines 1 and 3)",
    }
    for text, message in spaces.items():
        p = tmp_path / "space.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_space(p, base)
    # the same duplicate in a config file: refused, naming the key
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n")
    one_error_line(cli_run("train", str(cfg)), "the key 'lr' is given twice")


@pytest.mark.parametrize("argv", [
    ("data", "audit", "DATA", "--out", "OUT", "--seed", "-1"),
    ("robustness", "MODEL", "--seed", "-1"),
    ("tune", "fast", "--space", "S", "--trials", "1", "--seed", "-3"),
    ("lr-find", "fast", "--diverge", "0"), ("lr-find", "fast", "--diverge", "-1"),
    ("lr-find", "fast", "--diverge", "nan"),
])
def test_negative_seeds_and_bad_diverge_are_refused_at_parse_time(argv: tuple[str, ...]):
    one_error_line(cli_run(*argv), "--seed" if "--seed" in argv else "--diverge")


@pytest.mark.parametrize("command", ["calibrate", "robustness", "eval", "analyze"])
def test_an_unavailable_device_is_one_line(command: str, model: Path, cifar10_dir: Path, tmp_path: Path):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    extra = ["--out", str(tmp_path / "o")] if command in ("analyze", "robustness") else []
    r = cli_run(command, str(model), "--data", str(cifar10_dir), "--split", "test", "--device", "mps", *extra)
    one_error_line(r, "device 'mps'", "not available")


def test_a_journal_with_a_cut_off_last_line_is_one_line(tmp_path: Path):
    pytest.importorskip("optuna")
    from cifarkit.tune import Dist
    from cifarkit.tune.study import open_study

    journal = tmp_path / "study.journal"
    space = {"optim.lr": Dist("log_uniform", 1e-3, 0.5)}
    open_study(str(journal), "fast", space, "top1", "none", None)
    whole = journal.read_bytes()
    open_study(str(journal), "fast", space, "top1", "none", None)  # a whole journal opens again
    spec = tmp_path / "space.yaml"
    spec.write_text("optim.lr: {log_uniform: [1.0e-3, 0.5]}\n")
    for damaged in (whole + b'{"op_code": 5, "worker_id": "x", "study_id": 0, "user_attr', whole[:-7]):
        journal.write_bytes(damaged)
        r = cli_run("tune", "fast", "--space", str(spec), "--trials", "1", "--storage", str(journal),
                    "--out", str(tmp_path / "t"), "--set", f"data.root={tmp_path}")
        one_error_line(r, str(journal), "last line is cut off", "sed -i")


# ---- 9: a class with no training image --------------------------------------------------------------
@pytest.mark.parametrize("sets, names", [
    (["data.val_fraction=0.99"], ["data.val_fraction=0.99", "lower data.val_fraction"]),
    (["data.subset_per_class=1", "data.val_fraction=0.5"], ["data.subset_per_class=1", "raise data.subset_per_class"]),
    (["data.imbalance_ratio=10", "data.val_fraction=0.5", "data.val_seed=0"],
     ["data.imbalance_ratio=10", "class 'truck'", "lower data.imbalance_ratio"]),
])
def test_a_split_that_leaves_a_class_without_training_images_is_refused(sets: list[str], names: list[str],
                                                                       cifar10_dir: Path, tmp_path: Path):
    args = ["train", "fast", "--set", f"data.root={cifar10_dir}", "--set", "train.epochs=1", "--set", NARROW,
            "--work-dir", str(tmp_path / "run")]
    for s in sets:
        args += ["--set", s]
    one_error_line(cli_run(*args), "with no training image", *names)
    assert not (tmp_path / "run" / "last.pt").exists()


# ---- 11: the smaller ones ------------------------------------------------------------------------
def test_a_checkpoint_temperature_outside_what_calibrate_fits_is_refused(model: Path, tmp_path: Path):
    for bad in (1e-300, 1e-3, 1e6):
        ck = torch.load(model, weights_only=True)
        ck["temperature"] = bad
        torch.save(ck, tmp_path / "t.pt")
        one_error_line(cli_run("eval", str(tmp_path / "t.pt"), "--json"), "t.pt", "temperature", "[0.05, 20]")


def test_json_output_never_holds_nan():
    from cifarkit.cli.options import json_line

    text = json_line({"top1": float("nan"), "x": [float("inf"), 1.5], "n": 3, "p": Path("a")})
    assert json.loads(text) == {"top1": None, "x": [None, 1.5], "n": 3, "p": "a"}
    assert "NaN" not in text and "Infinity" not in text


@pytest.mark.parametrize("store", ["sqlite:////proc/cifarkit-test.db", "sqlite:///{tmp}"])
def test_an_mlflow_sqlite_store_that_cannot_work_fails_before_training(store: str, tmp_path: Path):
    pytest.importorskip("mlflow")
    r = cli_run("train", "fast", "--set", f"data.root={tmp_path}", "--set", f"log.mlflow={store.format(tmp=tmp_path)}",
                "--work-dir", str(tmp_path / "run"))
    one_error_line(r, "log.mlflow")
    assert not (tmp_path / "run").exists()


def test_calibrate_with_data_but_no_split_names_data(model: Path, cifar10_dir: Path, tmp_path: Path):
    ck = torch.load(model, weights_only=True)
    ck["config"]["data"]["val_fraction"] = 0.2
    torch.save(ck, tmp_path / "v.pt")
    line = one_error_line(cli_run("calibrate", str(tmp_path / "v.pt"), "--data", str(cifar10_dir)), "--data",
                          "--split")
    assert "val_fraction is 0" not in line


def test_audit_json_prints_only_the_json_on_stdout(cifar10_dir: Path, tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "cifarkit", "data", "audit", str(cifar10_dir), "--out",
                        str(tmp_path / "a"), "--folds", "2", "--set", NARROW, "--set", "train.epochs=2",
                        "--set", "train.batch_size=20", "--device", "cpu", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert s["folds"] == 2 and "fold 1/2" in r.stderr
    assert all(math.isfinite(v) for v in s["seconds"].values())


def test_a_journal_cut_off_while_the_search_runs_is_one_line(tmp_path: Path, monkeypatch):
    """Another worker killed mid-write damages the journal under a running worker: its next read
    is one ConfigError saying how to repair the file, not Optuna's JSONDecodeError traceback."""
    pytest.importorskip("optuna")
    import cifarkit.tune as tunemod
    from cifarkit.config import load_config
    from cifarkit.errors import ConfigError

    journal = tmp_path / "search" / "study.journal"

    def damaging_fit(cfg, work_dir, **kw):
        Path(work_dir).mkdir(parents=True)
        with open(journal, "ab") as f:  # a cut-off record, then a whole one after it, as an append would leave
            f.write(b'{"op_code": 5, "worker_id": "x", "tri\n{"op_code": 0}\n')
        return {"final": {"loss": 1.0, "top1": 10.0}}

    monkeypatch.setattr("cifarkit.tune.study.fit", damaging_fit)
    base = load_config("fast", [f"data.root={tmp_path}"])
    space = tunemod.load_space(write_space(tmp_path / "space.yaml"), base)
    with pytest.raises(ConfigError, match="last line is cut off"):
        tunemod.tune(base, space, 2, tmp_path / "search", pruner="none", quiet=True)


def write_space(path: Path) -> Path:
    path.write_text("optim.lr: {log_uniform: [1.0e-3, 0.5]}\n")
    return path
