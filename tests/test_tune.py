"""`cifarkit tune` through the real CLI on tiny data: a search end to end (best.yaml reproduces its
trial), rerun continues the study, two workers on one storage, kill -9 of a worker, pruning that
really stops a trial, and bad space files as one error line before any training."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import NARROW, cli_run

optuna = pytest.importorskip("optuna")


def sets(root: Path, *extra: str) -> list[str]:
    out = []
    for s in (f"data.root={root}", "train.batch_size=100", "eval.tta=none", "eval.batch_size=100",
              "train.device=cpu", "eval.interval=1", "log.plots=false", "train.epochs=3", NARROW, *extra):
        out += ["--set", s]
    return out


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarkit", "tune", "fast", *args]


def run_tune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(tune_cmd(*args), cwd=cwd, capture_output=True, text=True, timeout=900)


def rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "trials.csv").open()))


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SGD_MUON = ("optim.lr", "optim.head_lr", "optim.muon_lr")  # the fast recipe's three learning rates
SPACE = "optim.lr: {log_uniform: [1.0e-3, 0.5]}\ntrain.label_smoothing: {uniform: [0, 0.3]}\n"


@pytest.mark.slow
def test_search_end_to_end_best_yaml_reproduces_and_rerun_continues(cifar10_small: Path, tmp_path: Path):
    space = write_space(tmp_path / "space.yaml", SPACE)
    args = ["--space", str(space), "--pruner", "none", "--metric", "loss", "--seed", "1", *sets(cifar10_small)]
    r = run_tune(*args, "--trials", "3", "--out", "search", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "search"
    got = rows(out)
    assert [x["state"] for x in got] == ["COMPLETE"] * 3 and len({x["optim.lr"] for x in got}) == 3
    assert {"best.yaml", "trials.csv", "history.png", "importance.png", "study.journal"} <= {p.name for p in
                                                                                           out.iterdir()}
    for x in got:  # each trial is an ordinary run directory whose config holds its values
        run = Path(x["run_dir"])
        cfg = json.loads((run / "log.jsonl").read_text().splitlines()[0])["config"]
        assert cfg["optim"]["lr"] == pytest.approx(float(x["optim.lr"]))
        assert (run / "last.pt").is_file() and json.loads((run / "trial.json").read_text())["state"] == "COMPLETE"
    best = min(got, key=lambda x: float(x["loss"]))
    assert f"best: trial {best['number']}, loss" in r.stdout
    # best.yaml is the full config of the best trial: training it again gives the same result
    t = subprocess.run([sys.executable, "-m", "cifarkit", "train", str(out / "best.yaml"), "--work-dir", "again"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert t.returncode == 0, t.stderr[-3000:]
    summary = json.loads((tmp_path / "again" / "log.jsonl").read_text().splitlines()[-1])
    trial_summary = json.loads((Path(best["run_dir"]) / "log.jsonl").read_text().splitlines()[-1])
    assert summary["final_top1"] == trial_summary["final_top1"]
    last_val = [json.loads(x) for x in (tmp_path / "again" / "log.jsonl").read_text().splitlines()
                if '"type": "val"' in x][-1]
    assert last_val["loss"] == pytest.approx(float(best["loss"]), rel=1e-6)
    # rerunning the command with a larger --trials continues the same study
    r = run_tune(*args, "--trials", "5", "--out", "search", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x["number"] for x in rows(out)] == ["0", "1", "2", "3", "4"]
    assert "5 trials (5 complete" in r.stdout and "2 run by this worker" in r.stdout
    assert len({x["optim.lr"] for x in rows(out)}) == 5  # the same --seed did not propose the first values again
    # the study remembers what it searches: another metric, space or storage is refused, nothing touched
    before = (out / "trials.csv").read_text()
    for extra, message in ((["--metric", "top1"], "was started with another --metric"),
                           (["--space", str(write_space(tmp_path / "other.yaml", "optim.lr: {uniform: [0.1, 0.2]}\n"))],
                            "was started with another --space"),
                           (["--storage", str(tmp_path / "elsewhere.journal")], "its search lives in")):
        argv = list(args)
        for flag in ("--metric", "--space"):
            if flag in extra:
                i = argv.index(flag)
                del argv[i:i + 2]
        e = cli_run("tune", "fast", *argv, *extra, "--trials", "6", "--out", str(out))
        assert e.returncode == 2 and message in e.stderr and len(e.stderr.strip().splitlines()) == 1, e.stderr
    assert (out / "trials.csv").read_text() == before and not (tmp_path / "elsewhere.journal").exists()


@pytest.mark.slow
def test_two_workers_share_one_storage_without_running_a_trial_twice(cifar10_small: Path, tmp_path: Path):
    space = write_space(tmp_path / "space.yaml", SPACE)
    storage = tmp_path / "shared" / "study.journal"
    storage.parent.mkdir()
    workers = [subprocess.Popen(tune_cmd("--space", str(space), "--trials", "6", "--storage", str(storage),
                                         "--study", "shared", "--out", f"w{i}", "--pruner", "none",
                                         *sets(cifar10_small, "train.epochs=2")),
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    dirs = sorted(Path(t.user_attrs["run_dir"]).relative_to(tmp_path).as_posix() for t in trials)
    assert len(set(dirs)) == 6  # six distinct trials, each run once, by one worker or the other
    assert all((tmp_path / d / "last.pt").is_file() for d in dirs)
    # both workers' trials.csv show the whole study
    assert len(rows(tmp_path / "w0")) == len(rows(tmp_path / "w1")) == 6


@pytest.mark.slow
def test_killed_worker_leaves_a_failed_trial_and_the_study_goes_on(cifar10_small: Path, tmp_path: Path):
    space = write_space(tmp_path / "space.yaml", SPACE)
    args = ["--space", str(space), "--trials", "2", "--out", "search", "--pruner", "none",
            *sets(cifar10_small, "train.epochs=30")]
    victim = subprocess.Popen(tune_cmd(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    log = tmp_path / "search" / "trials" / "0000" / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and '"type": "val"' in log.read_text()):
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    r = run_tune(*args[:-2], *sets(cifar10_small, "train.epochs=2"), cwd=tmp_path)  # shorter trials from now on
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trial 0: its worker died; marked failed, to be run again" in r.stdout
    got = rows(tmp_path / "search")
    assert [x["state"] for x in got] == ["FAIL", "COMPLETE", "COMPLETE"]  # the study is not stuck
    assert got[0]["note"] == "worker died (no heartbeat)"


@pytest.mark.slow
def test_asha_really_stops_a_hopeless_trial(cifar10_small: Path, tmp_path: Path):
    # two trials in a known order: the recipe's lrs, then all lrs 0 (nothing learns); at the first rung ASHA
    # keeps only the best third, so the second is stopped after its first epoch of four
    storage = tmp_path / "study.journal"
    study = optuna.create_study(study_name="prune", direction="minimize", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    good, frozen = {"optim.lr": 0.053, "optim.head_lr": 0.67, "optim.muon_lr": 0.24}, dict.fromkeys(SGD_MUON, 0.0)
    study.enqueue_trial(good)
    study.enqueue_trial(frozen)
    space = write_space(tmp_path / "space.yaml", "".join(f"{k}: {{choice: [{good[k]}, 0.0]}}\n" for k in SGD_MUON))
    r = run_tune("--space", str(space), "--trials", "2", "--storage", str(storage), "--study", "prune",
                 "--out", "search", "--metric", "loss", "--pruner", "asha", *sets(cifar10_small, "train.epochs=4"),
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = rows(tmp_path / "search")
    assert [(x["optim.lr"], x["state"]) for x in got] == [("0.053", "COMPLETE"), ("0.0", "PRUNED")]
    assert got[1]["epochs"] == "1" and got[1]["note"].startswith("pruned by the search at epoch 1")
    pruned = Path(got[1]["run_dir"])
    recs = [json.loads(x) for x in (pruned / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in recs if x["type"] == "val"] == [1]  # fewer epochs than its config's 4
    assert any(x["type"] == "stopped" and x["reason"].startswith("pruned") for x in recs)
    assert recs[-1]["type"] == "summary" and recs[-1]["stopped"].startswith("pruned")
    assert json.loads((pruned / "trial.json").read_text())["state"] == "PRUNED"
    full = [json.loads(x) for x in (Path(got[0]["run_dir"]) / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in full if x["type"] == "val"] == [1, 2, 3, 4]


@pytest.mark.parametrize("space, message", [
    ("optim.lrr: {log_uniform: [1.0e-3, 1.0]}\n", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("optim.lr: {uniform: [0.5, 0.1]}\n", "optim.lr: the range [0.5, 0.1] is empty"),
    ("optim.lr: {log_uniform: [-1, 1]}\n", "optim.lr: a log range needs low > 0"),
    ("train.amp: {choice: [none, fp64]}\n", "train.amp: the value 'fp64' is not valid for it"),
    ("model.name: {choice: [airnet, nonet]}\n", "model.name: 'nonet' is not a model cifarkit knows"),
    ("optim.momentum: {uniform: [0.5, 1.5]}\n", "optim.momentum: the value 1.5 is not valid for it"),
    ("train.batch_size: {uniform: [64, 512]}\n", "train.batch_size: takes whole numbers; use {int: [64, 512]}"),
    ("train.amp: {uniform: [0, 1]}\n", "train.amp: is not a number; use {choice: [...]}"),
    ("optim.lr: {normal: [0, 1]}\n", "optim.lr: expected one of"),
    ("optim.lr: 0.1\n", "optim.lr: expected one of"),
    ("", "a search space is a non-empty mapping"),
    ("- optim.lr\n", "a search space is a non-empty mapping"),
    ("optim.lr: {log_uniform: [1.0e-3, .inf]}\n", "optim.lr: inf is not a finite number"),
    ("train.epochs: {int: [1, 5], step: 0}\n", "train.epochs: step 0 must be above 0"),
])
def test_bad_space_is_one_error_line_before_any_training(space: str, message: str, cifar10_small: Path,
                                                         tmp_path: Path):
    f = write_space(tmp_path / "space.yaml", space)
    r = cli_run("tune", "fast", "--space", str(f), "--trials", "2", "--out", str(tmp_path / "search"),
                *sets(cifar10_small))
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "search").exists()  # nothing ran, nothing written


def test_bad_arguments_are_one_line(cifar10_small: Path, tmp_path: Path):
    f = write_space(tmp_path / "space.yaml", SPACE)
    base = ["tune", "fast", "--space", str(f), *sets(cifar10_small)]
    r = cli_run(*base, "--trials", "0", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "--trials must be at least 1" in r.stderr
    r = cli_run(*base, "--trials", "2", "--out", str(tmp_path / "a"), "--pruner", "hyperband")
    assert r.returncode == 2 and "invalid choice: 'hyperband'" in r.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = cli_run(*base, "--trials", "2", "--out", str(tmp_path / "other"))
    assert r.returncode == 2 and "is not a cifarkit tune folder" in r.stderr
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]
    r = cli_run("tune", "fast", "--space", str(tmp_path / "nope.yaml"), "--trials", "2")
    assert r.returncode == 2 and "nope.yaml: no such search space file" in r.stderr


def test_missing_optuna_is_one_line(cifar10_small: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    f = write_space(tmp_path / "space.yaml", SPACE)
    r = cli_run("tune", "fast", "--space", str(f), "--trials", "2", "--out", str(tmp_path / "s"), *sets(cifar10_small))
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: cifarkit tune needs the optuna package, which is not installed: "
                                "pip install 'cifarkit[tune]'")
    assert not (tmp_path / "s").exists()


def test_space_values_reach_the_config_exactly():
    from cifarkit.config import load_config
    from cifarkit.tune import parse_dist

    d = parse_dist("train.batch_size", {"int": [128, 512], "step": 128}, "")
    assert (d.kind, d.low, d.high, d.step) == ("int", 128, 512, 128)
    trial = optuna.trial.FixedTrial({"train.batch_size": 384})
    assert d.suggest(trial, "train.batch_size") == 384
    assert load_config(None, ["train.batch_size=384"]).train.batch_size == 384


def test_values_that_pass_each_end_but_not_together_fail_the_trial_and_count(cifar10_small: Path, tmp_path: Path):
    # data.imbalance_ratio takes 0 or >= 1: both ends of [0, 4] are valid, 0.5 inside is not
    storage = tmp_path / "s.journal"
    study = optuna.create_study(study_name="imb", direction="maximize", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    study.enqueue_trial({"data.imbalance_ratio": 0.5})
    space = write_space(tmp_path / "space.yaml", "data.imbalance_ratio: {uniform: [0, 4]}\n")
    r = cli_run("tune", "fast", "--space", str(space), "--trials", "1", "--storage", str(storage), "--study", "imb",
                "--out", str(tmp_path / "search"), *sets(cifar10_small))
    assert r.returncode == 0, r.stderr
    (row,) = rows(tmp_path / "search")
    assert row["state"] == "FAIL" and "data.imbalance_ratio" in row["note"]  # counted: the study is done
    assert "1 trials (0 complete, 0 pruned, 1 failed" in r.stdout


def test_a_trial_without_a_finite_score_counts_so_the_search_ends(tmp_path: Path, monkeypatch):
    # a run that ends with a NaN loss (train.nan_policy=skip_batch, a huge lr) is a finished trial
    # of those values: it must count (before, it never counted and was no error: trials forever)
    import cifarkit.tune as tunemod
    from cifarkit.config import load_config

    calls = []

    def nan_fit(cfg, work_dir, **kw):
        calls.append(work_dir)
        Path(work_dir).mkdir(parents=True)
        return {"final": {"loss": float("nan"), "top1": 10.0}}

    monkeypatch.setattr("cifarkit.tune.study.fit", nan_fit)
    base = load_config("fast", [f"data.root={tmp_path}"])
    space = tunemod.load_space(write_space(tmp_path / "space.yaml", SPACE), base)
    r = tunemod.tune(base, space, 3, tmp_path / "search", metric="loss", pruner="none", quiet=True)
    assert len(calls) == 3 and (r.trials, r.failed) == (3, 3)
    assert all(x["note"] == "no finite final loss (nan)" for x in rows(tmp_path / "search"))


def test_bad_storage_is_one_line_and_writes_nothing(cifar10_small: Path, tmp_path: Path):
    f = write_space(tmp_path / "space.yaml", SPACE)
    r = cli_run("tune", "fast", "--space", str(f), "--trials", "2", "--storage", "foo://nowhere",
                "--out", str(tmp_path / "search"), *sets(cifar10_small))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "error: --storage foo://nowhere: cannot open the study there" in r.stderr
    assert not (tmp_path / "search").exists()


def test_worker_gone_trusts_the_process_only_when_it_is_the_same_one():
    from cifarkit.tune.liveness import process_identity, worker_gone

    me = process_identity()
    if me is None:
        pytest.skip("no /proc here")
    now = time.time()
    # this very process: alive, however old its heartbeat stamp
    assert not worker_gone({"process": me, "heartbeat": now - 10_000, "heartbeat_s": 1}, now, 1)
    # a process that has exited (its pid gone), or a reused pid (another start time): gone at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    boot_ns = me.rsplit("/", 2)[0]
    assert worker_gone({"process": f"{boot_ns}/{dead.pid}/123", "heartbeat": now}, now, 30)
    assert worker_gone({"process": f"{boot_ns}/{os.getpid()}/1", "heartbeat": now}, now, 30)
    # killed but not yet reaped by its parent (a zombie): gone too
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        ident = process_identity(zombie.pid)
        assert ident is not None and not worker_gone({"process": ident}, now, 30)
        zombie.kill()
        time.sleep(0.5)  # exited, not waited for
        assert worker_gone({"process": ident, "heartbeat": time.time()}, time.time(), 30)
    finally:
        zombie.wait()
    # another machine (other boot id): judged by its own heartbeat interval, not this worker's
    other = {"process": "another-boot/1/42/99", "heartbeat": now - 100, "heartbeat_s": 600}
    assert not worker_gone(other, now, 1)
    assert worker_gone({**other, "heartbeat": now - 1801}, now, 1)
    assert worker_gone({"heartbeat": now - 91}, now, 30) and not worker_gone({"heartbeat": now - 89}, now, 30)


def test_values_reach_the_config_as_they_are():
    from cifarkit.config import config_to_dict, load_config
    from cifarkit.tune.space import set_values

    base = config_to_dict(load_config("fast"))
    cfg = set_values(base, {"model.kwargs.scale": 1e-05, "optim.lr": 2e-05, "train.batch_size": 384})
    assert cfg.model.kwargs["scale"] == 1e-05 and isinstance(cfg.model.kwargs["scale"], float)
    assert cfg.optim.lr == 2e-05 and cfg.train.batch_size == 384


def test_space_accepts_what_yaml_reads_as_strings_and_refuses_equal_choices(tmp_path: Path):
    from cifarkit.config import load_config
    from cifarkit.errors import ConfigError
    from cifarkit.tune import load_space

    base = load_config("fast")
    sp = load_space(write_space(tmp_path / "a.yaml", "optim.lr: {log_uniform: [1e-4, 1e1]}\n"), base)
    assert (sp["optim.lr"].low, sp["optim.lr"].high) == (1e-4, 10.0)
    for text in ("train.ema: {choice: [1, true]}\n", "optim.lr: {choice: [100, 100.0]}\n"):
        with pytest.raises(ConfigError, match="lists a value twice"):
            load_space(write_space(tmp_path / "b.yaml", text), base)


def test_a_trial_left_running_without_a_word_does_not_hold_the_search_forever(tmp_path: Path, monkeypatch):
    # a worker killed between asking for its trial and stamping it leaves a RUNNING trial with no
    # heartbeat at all: it must go stale from its start (before: waited on forever)
    import signal as sig

    import cifarkit.tune as tunemod
    from cifarkit.config import load_config

    def fake_fit(cfg, work_dir, **kw):
        Path(work_dir).mkdir(parents=True)
        return {"final": {"top1": 50.0, "loss": 1.0}}

    monkeypatch.setattr("cifarkit.tune.study.fit", fake_fit)
    base = load_config("fast", [f"data.root={tmp_path}"])
    space = tunemod.load_space(write_space(tmp_path / "space.yaml", SPACE), base)
    storage = tmp_path / "s.journal"
    tunemod.tune(base, space, 1, tmp_path / "a", storage=str(storage), study="s", quiet=True)
    orphan = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage)))).ask()  # and nothing more
    sig.signal(sig.SIGALRM, lambda *_: pytest.fail("the search waited on the orphan forever"))
    sig.alarm(60)
    try:
        r = tunemod.tune(base, space, 3, tmp_path / "b", storage=str(storage), study="s", heartbeat=1, quiet=True)
    finally:
        sig.alarm(0)
    left = {t["number"]: t for t in rows(tmp_path / "b")}[str(orphan.number)]
    assert left["state"] == "FAIL" and left["note"] == "worker died (no heartbeat)"
    assert r.complete == 3


def test_what_no_value_changes_is_checked_once_before_any_trial(cifar10_small: Path, tmp_path: Path):
    f = write_space(tmp_path / "space.yaml", SPACE)
    r = cli_run("tune", "fast", "--space", str(f), "--trials", "2", "--out", str(tmp_path / "a"),
                *sets(cifar10_small, f"data.root={tmp_path / 'nowhere'}"))
    assert r.returncode == 2 and "no such dataset" in r.stderr and not (tmp_path / "a").exists()
    r = cli_run("tune", "fast", "--space", str(f), "--trials", "2", "--out", str(tmp_path / "b"),
                *sets(cifar10_small, f"log.mlflow={tmp_path / 'mlruns'}"))
    assert r.returncode == 2 and "folder stores" in r.stderr and not (tmp_path / "b").exists()
    # an --out holding the user's own files, even with names like the search's, is refused
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "trials.csv").write_text("mine")
    r = cli_run("tune", "fast", "--space", str(f), "--trials", "2", "--out", str(tmp_path / "c"), *sets(cifar10_small))
    assert r.returncode == 2 and "is not a cifarkit tune folder" in r.stderr
    assert (tmp_path / "c" / "trials.csv").read_text() == "mine"


def _open_together(url: str, barrier, results) -> None:
    """One of several processes that open the same new RDB study at the same instant."""
    from cifarkit.tune import Dist
    from cifarkit.tune.study import open_study

    barrier.wait()
    try:
        open_study(url, "together", {"optim.lr": Dist("log_uniform", 1e-3, 0.5)}, "top1", "none", None)
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        results.put(f"{type(e).__name__}: {e}")


def test_workers_opening_a_new_sqlite_storage_at_once_all_get_the_study(tmp_path: Path):
    """Four processes released by one barrier each create the schema of a new sqlite storage: the
    losers of that race (UNIQUE constraint failed: alembic_version..., table ... already exists)
    retry and load the winner's study. Without the retry, one in two rounds here lost a worker."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for i in range(2):
        url = f"sqlite:///{tmp_path / f'study{i}.db'}"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_together, args=(url, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert got == ["ok"] * 4, got
        assert len(optuna.get_all_study_names(url)) == 1


def test_two_tune_workers_started_together_on_a_new_sqlite_storage(cifar10_small: Path, tmp_path: Path):
    space = write_space(tmp_path / "space.yaml", SPACE)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    workers = [subprocess.Popen(tune_cmd("--space", str(space), "--trials", "4", "--storage", url, "--study", "rdb",
                                         "--out", f"w{i}", "--pruner", "none",
                                         *sets(cifar10_small, "train.epochs=1", "train.max_iters=1")),
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="rdb", storage=url).get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4
