"""Untrusted input on the runs / config / CLI side (issue 12): every mistake ends in one `error:`
line naming the file, key or folder; runs never clobber each other; a command that did nothing
never exits 0. The hostile inputs are built by `hostile_runs` at test time."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cifarkit.config import config_from_dict, load_config
from cifarkit.engine.rundir import RunDirBusy, RunDirTaken
from cifarkit.engine.train import RunFinished, fit
from cifarkit.errors import ConfigError
from conftest import NARROW, cli_run, make_checkpoint
from hostile_runs import BAD_OVERRIDES, chattr_works, hostile_configs, hostile_logs, output_places, unwritable_dir
from test_cli_data import run

FAST = Path(__file__).resolve().parents[1] / "configs" / "cifar10_fast.yaml"


def one_error_line(r: subprocess.CompletedProcess, *names: str) -> str:
    """The run failed with exactly one stderr line, `error: ...`, naming every one of `names`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stdout
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-2000:]
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def tiny(root: Path, *extra: str):
    return load_config(FAST, [f"data.root={root}", "train.batch_size=100", "log.plots=false", "eval.tta=none",
                              "train.epochs=1", NARROW, *extra])


def train_args(root: Path, work: Path, *extra: str) -> list[str]:
    sets = [f"data.root={root}", "train.batch_size=100", "log.plots=false", "eval.tta=none", "train.max_iters=1",
            NARROW]
    return ["train", str(FAST), *[a for s in sets for a in ("--set", s)], "--work-dir", str(work), *extra]


# ---- config values and files -----------------------------------------------------------------
@pytest.mark.parametrize("item, key", BAD_OVERRIDES)
def test_bad_values_name_the_key(item: str, key: str):
    with pytest.raises(ConfigError, match=rf"^(--set )?{key.replace('.', '[.]')}: "):  # never the YAML file's name
        load_config(None, [item])


@pytest.mark.parametrize("name", ["folder", "huge", "list", "scalar", "aliases", "deep", "binary", "nan_epochs",
                                  "section_not_mapping", "python_tag"])
def test_hostile_config_files(name: str, tmp_path: Path):
    path, expect = hostile_configs(tmp_path)[name]
    with pytest.raises(ConfigError, match=expect) as e:
        load_config(path)
    assert str(path) in str(e.value) or name in ("nan_epochs", "section_not_mapping")


def test_model_kwargs_checked_against_the_constructor():
    with pytest.raises(ConfigError, match="model.kwargs: bogus not accepted by airnet; valid: head_unit_std, scale"):
        load_config(None, ["model.name=airnet", "model.kwargs.bogus=1"])
    assert load_config(None, ["model.name=airnet", "model.kwargs.whiten_width=12"]).model.kwargs == {"whiten_width": 12}
    with pytest.raises(ConfigError, match="not accepted by resnet18_cifar"):
        load_config(None, ["model.kwargs.widths=[1, 2, 3]"])


def test_checkpoint_config_goes_through_the_same_validation():
    with pytest.raises(ConfigError, match="train.epochs: nan is not a finite number"):
        config_from_dict({"train": {"epochs": float("nan")}})
    with pytest.raises(ConfigError, match="data.std: must be greater than 0"):
        config_from_dict({"data": {"std": [1.0, 0.0, 1.0]}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


@pytest.mark.slow
def test_cli_negative_max_iters_fails_instead_of_training_nothing(tmp_path: Path):
    r = run("train", str(FAST), "--set", "train.max_iters=-1", "--work-dir", str(tmp_path / "w"))
    one_error_line(r, "train.max_iters")
    r = run("train", str(tmp_path), "--work-dir", str(tmp_path / "w"))  # a folder as the config file
    one_error_line(r, str(tmp_path), "is a folder")
    assert not (tmp_path / "w" / "log.jsonl").exists()


# ---- run directories: lock, force, finished runs ---------------------------------------------
HOLD = ("import sys, time; from pathlib import Path; from cifarkit.engine.rundir import locked\n"
        "with locked(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()")


@pytest.mark.slow
def test_locked_run_dir_refuses_a_second_run(cifar10_small: Path, tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(work)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = run(*train_args(cifar10_small, work))
        one_error_line(r, str(work), f"pid {holder.pid}", "another cifarkit run")
        assert not (work / "log.jsonl").exists()  # the second run wrote nothing
        with pytest.raises(RunDirBusy):
            fit(tiny(cifar10_small, "train.max_iters=1"), work_dir=work, quiet=True)
    finally:
        holder.kill()  # SIGKILL: the OS drops the flock of a crashed holder
        holder.wait()
    r = run(*train_args(cifar10_small, work))
    assert r.returncode == 0, r.stderr
    assert (work / "last.pt").is_file()


@pytest.mark.slow
def test_two_concurrent_cli_runs_one_wins(cifar10_small: Path, tmp_path: Path):
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "cifarkit", *train_args(cifar10_small, work)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results  # one trained; the other was refused (locked, or found the first's run)
    err = next(e for rc, e in results if rc == 2).strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(work) in err[0]
    recs = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]  # not torn
    assert sum(r["type"] == "header" for r in recs) == 1 and recs[-1]["type"] == "summary"


@pytest.mark.slow
def test_fresh_run_over_an_earlier_one_needs_force(cifar10_small: Path, tmp_path: Path):
    work = tmp_path / "w"
    fit(tiny(cifar10_small, "train.epochs=2", "train.max_iters=5", "checkpoint.interval=1"), work_dir=work,
        quiet=True)  # one full epoch of two: epoch_1.pt
    before = {p.name: p.stat().st_mtime_ns for p in work.iterdir() if not p.name.startswith(".")}
    assert "epoch_1.pt" in before
    with pytest.raises(RunDirTaken, match="holds an earlier run .*--resume.*--force"):
        fit(tiny(cifar10_small, "train.max_iters=2"), work_dir=work, quiet=True)
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir() if not p.name.startswith(".")} == before
    r = run(*train_args(cifar10_small, work))
    one_error_line(r, str(work), "--force")
    r = run(*train_args(cifar10_small, work, "--force"))
    assert r.returncode == 0, r.stderr
    (moved,) = work.glob(".replaced-*")
    assert {p.name for p in moved.iterdir()} == set(before)  # the old run, whole, set aside
    assert not (work / "epoch_1.pt").exists()  # the new run (1 iteration) is not mixed with the old one
    ck = json.loads((work / "log.jsonl").read_text().splitlines()[-1])
    assert ck["type"] == "summary" and ck["iters"] == 1
    with pytest.raises(ConfigError, match="choose one"):
        fit(tiny(cifar10_small), work_dir=work, resume=True, force=True, quiet=True)


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing_then_continues_with_more_epochs(cifar10_small: Path,
                                                                                   tmp_path: Path):
    work = tmp_path / "w"
    fit(tiny(cifar10_small), work_dir=work, quiet=True)
    log = (work / "log.jsonl").read_bytes()
    with pytest.raises(RunFinished, match=r"already finished \(1 epochs, 5 iterations\).*raise train.epochs"):
        fit(tiny(cifar10_small), work_dir=work, resume=True, quiet=True)
    assert (work / "log.jsonl").read_bytes() == log  # summary kept, not rewritten with final_top1: null
    r = run("train", str(FAST), "--set", f"data.root={cifar10_small}", "--set", "train.batch_size=100",
            "--set", "log.plots=false", "--set", "eval.tta=none", "--set", "train.epochs=1", "--set", NARROW,
            "--work-dir", str(work), "--resume")
    one_error_line(r, "already finished", "train.epochs")
    assert (work / "log.jsonl").read_bytes() == log
    s = fit(tiny(cifar10_small, "train.epochs=2"), work_dir=work, resume=True, quiet=True)
    assert s["iters"] == 10 and s["epochs"] == 2
    summary = json.loads((work / "log.jsonl").read_text().splitlines()[-1])
    assert summary["type"] == "summary" and summary["final_top1"] is not None


# ---- OS errors and output places through the real CLI ------------------------------------------
def test_os_errors_become_one_line(monkeypatch, capsys, tmp_path: Path):
    from cifarkit import cli
    from cifarkit.cli import analysis as cli_analysis

    def full(a):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.png"))

    monkeypatch.setattr(cli_analysis, "cmd_plot", full)
    assert cli.main(["plot", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'out.png'}: No space left on device; the disk is full; free some space or "
                   "choose another place"]
    with pytest.raises(OSError):
        cli.main(["--debug", "plot", "x"])
    monkeypatch.setattr(cli_analysis, "cmd_plot", lambda a: (_ for _ in ()).throw(OSError("no path")))
    with pytest.raises(OSError):  # an OSError about no path of the user's is a bug: traceback kept
        cli.main(["plot", "x"])


@pytest.fixture(scope="module")
def use_inputs(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    from conftest import make_cifar10

    root = tmp_path_factory.mktemp("places")
    img = root / "cat.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    return {"ckpt": make_checkpoint("airnet", root / "ck.pt"), "img": img,
            "data": make_cifar10(root / "c", per_batch=10, test=10),
            "run": hostile_logs(root / "logs")["null_lr"]}


def command(name: str, out: Path, i: dict[str, Path]) -> list[str]:
    return {
        "predict": ["predict", str(i["ckpt"]), str(i["img"]), "--out", str(out)],
        "cam": ["cam", str(i["ckpt"]), str(i["img"]), "--out", str(out)],
        "analyze": ["analyze", str(i["ckpt"]), "--data", str(i["data"]), "--out", str(out)],
        "report": ["report", str(i["run"]), "--out", str(out)],
        "plot": ["plot", str(i["run"]), "--out", str(out)],
        "data export": ["data", "export", str(i["data"]), str(out)],
        "data show": ["data", "show", str(i["data"]), "--out", str(out)],
        "data stats": ["data", "stats", str(i["data"]), "--out", str(out)],
        "export": ["export", str(i["ckpt"]), "--out", str(out)],
        "train": train_args(i["data"], out)[:-2] + ["--set", "train.batch_size=10", "--work-dir", str(out)],
        "lr-find": ["lr-find", "fast", "--set", f"data.root={i['data']}", "--set", "train.batch_size=10",
                    "--steps", "3", "--out", str(out)],
    }[name]


FOLDER_OUT = ["predict", "cam", "analyze", "data export", "data stats", "train", "lr-find"]  # --out: a folder
FILE_OUT = ["report", "plot", "data show", "export"]  # --out names a file


@pytest.mark.parametrize("name", FOLDER_OUT + FILE_OUT)
def test_read_only_output_place(name: str, use_inputs, tmp_path: Path):
    """An immutable folder (chattr +i: refuses root too, unlike chmod) as the output's parent."""
    if not chattr_works(tmp_path / "probe"):
        pytest.skip("chattr +i does not work on this file system")
    with unwritable_dir(tmp_path / "ro") as ro:
        out = ro / ("out" if name in FOLDER_OUT else "out.png")
        one_error_line(cli_run(*command(name, out, use_inputs)), str(ro))
    assert not out.exists()


@pytest.mark.parametrize("name", FOLDER_OUT + FILE_OUT)
def test_output_of_the_wrong_kind(name: str, use_inputs, tmp_path: Path):
    """A file where a folder is expected, a folder where a file is expected."""
    places = output_places(tmp_path)
    out = places["file"] if name in FOLDER_OUT else places["folder"]
    one_error_line(cli_run(*command(name, out, use_inputs)), str(out))
    assert places["file"].read_text() == "not a folder\n" and not any(places["folder"].iterdir())


@pytest.mark.parametrize("name", ["predict", "data stats", "report"])
def test_output_under_a_file(name: str, use_inputs, tmp_path: Path):
    """A file where a parent folder of the output should be (through a real `python -m cifarkit` process)."""
    out = output_places(tmp_path)["file"] / ("sub" if name in FOLDER_OUT else "sub.png")
    one_error_line(run(*command(name, out, use_inputs)), str(output_places(tmp_path)["file"]))


# ---- logs with wrongly typed fields --------------------------------------------------------------
LOGS = ["string_loss", "list_epoch", "null_lr", "dict_iter", "string_top1", "bool_values", "non_object", "huge_line",
        "deep_line", "header_not_mapping", "nan_strings", "huge_numbers"]


@pytest.mark.parametrize("name", LOGS)
def test_plot_and_report_skip_malformed_log_records(name: str, tmp_path: Path, capsys):
    from cifarkit.analysis.curves import plot_runs
    from cifarkit.analysis.report import write_report

    d = hostile_logs(tmp_path)[name]
    assert plot_runs([d], tmp_path / "c.png").stat().st_size > 0
    html = write_report(d, tmp_path / "r.html", analysis=False).read_text()
    assert "50.00%" in html  # the good val record still reads
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith(f"warning: {d / 'log.jsonl'}: ") for line in err)
    assert len(err) == (0 if name in ("null_lr", "huge_line") else 2)  # one per command, never a traceback


def test_cli_plot_and_report_on_a_malformed_log(tmp_path: Path):
    d = hostile_logs(tmp_path)["string_loss"]
    for args in (["plot", str(d), "--out", str(tmp_path / "c.png")], ["report", str(d)]):
        r = run(*args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        expect = f"warning: {d / 'log.jsonl'}: ignored wrongly typed fields in 1 records"
        assert r.stderr.strip().splitlines() == [expect]


def test_resume_with_a_model_of_other_shape_is_one_error_line(cifar10_small: Path, tmp_path: Path):
    """--resume under a config whose model.kwargs build other shapes (a narrow run resumed with
    the full recipe): one line naming the checkpoint and what to do, not a size-mismatch traceback."""
    work = tmp_path / "w"
    fit(tiny(cifar10_small, "train.epochs=2", "train.max_iters=2"), work_dir=work, quiet=True)
    r = run("train", str(FAST), "--set", f"data.root={cifar10_small}", "--set", "train.batch_size=100",
            "--set", "log.plots=false", "--set", "train.epochs=2", "--work-dir", str(work), "--resume")
    one_error_line(r, "last.pt", "do not fit", "config.yaml")
