"""Imbalanced data (issue #15): long-tail splits, class weights, samplers, logit adjustment,
MixUp/CutMix and the balanced/shot metrics of analyze."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train import small_cfg

from cifarkit.analysis.metrics import balanced_accuracy, shot_accuracy
from cifarkit.config import load_config
from cifarkit.data.loader import Augment, Mix, Preprocess, TensorLoader, mix_batch
from cifarkit.data.splits import build_data, load_train_split, long_tail_counts
from cifarkit.engine.losses import class_weights, weighted_cross_entropy
from cifarkit.engine.step import chunk_loss
from cifarkit.engine.train import fit
from cifarkit.errors import ConfigError
from cifarkit.infer.checkpoint import load_checkpoint
from cifarkit.infer.prior import log_prior
from conftest import cli_run
from test_cli_data import run

FAST = Path(__file__).resolve().parents[2] / "configs" / "cifar10_fast.yaml"


# ---- data.imbalance_ratio -----------------------------------------------------------------------
def test_long_tail_counts_are_the_cifar10_lt_profile():
    assert long_tail_counts([5000] * 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert long_tail_counts([5000] * 10, 1) == [5000] * 10 and long_tail_counts([7, 3], 0) == [7, 3]


def test_imbalance_ratio_keeps_the_first_images_of_each_class_and_not_the_test_split(cifar10_small: Path):
    cfg = load_config(None, [f"data.root={cifar10_small}", "data.imbalance_ratio=10"])
    full = load_config(None, [f"data.root={cifar10_small}"])
    train, all_train = load_train_split(cfg)[0], load_train_split(full)[0]
    assert list(train.class_counts().values()) == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]
    for c in range(10):  # the first images of each class, in file order
        first = all_train.indices[all_train.labels == c][: train.class_counts()[train.classes[c]]]
        assert np.array_equal(train.indices[train.labels == c], first)
    data = build_data(cfg, torch.device("cpu"))
    assert data.class_counts == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5] and data.num_train == 199
    assert len(data.eval_labels) == 100


# ---- train.class_weights / logit_adjust -------------------------------------------------------
def test_class_weights_balanced_effective_and_explicit():
    w = class_weights("balanced", [30, 10])
    assert torch.allclose(w, torch.tensor([0.5, 1.5]))  # 1/n normalised to mean 1
    beta = 0.9
    e = torch.tensor([(1 - beta) / (1 - beta ** 30), (1 - beta) / (1 - beta ** 10)], dtype=torch.float64)
    assert torch.allclose(class_weights("effective", [30, 10], beta), (2 * e / e.sum()).float())
    assert torch.allclose(class_weights([1.0, 3.0], [5, 5]), torch.tensor([0.5, 1.5]))
    assert class_weights("none", [1, 2]) is None


def test_weighted_loss_equals_the_hand_computed_value_and_differs_from_plain():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 1.5])
    loss, iw = weighted_cross_entropy(logits, y, w)
    ce = [np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-1.0)), np.log(2.0)]  # -log softmax of the target
    hand = (0.5 * ce[0] + 1.5 * ce[1] + 1.5 * ce[2]) / (0.5 + 1.5 + 1.5)
    assert float((loss * iw).sum() / iw.sum()) == pytest.approx(hand, rel=1e-6)
    assert float((loss * iw).sum() / iw.sum()) == pytest.approx(float(F.cross_entropy(logits, y, weight=w)))
    assert abs(hand - float(F.cross_entropy(logits, y))) > 1e-3
    # soft one-hot targets with label smoothing: exactly F.cross_entropy's smoothing
    loss, _ = weighted_cross_entropy(logits, F.one_hot(y, 2).float(), label_smoothing=0.2)
    assert float(loss.mean()) == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.2)))
    # a mixed target's weight is the same mix of its classes' weights
    _, iw = weighted_cross_entropy(logits[:1], torch.tensor([[0.25, 0.75]]), w)
    assert float(iw[0]) == pytest.approx(0.25 * 0.5 + 0.75 * 1.5)


def test_logit_adjusted_loss_is_ce_on_logits_plus_tau_log_prior():
    logits, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2])
    adjust = 1.0 * log_prior([60, 30, 10])
    assert torch.allclose(adjust, torch.tensor([0.6, 0.3, 0.1]).log())
    loss, _ = weighted_cross_entropy(logits, y, adjust=adjust)
    assert float(loss.mean()) == pytest.approx(float(F.cross_entropy(logits + adjust, y)))


def test_deferred_class_weights_start_at_their_epoch():
    cfg = load_config(None, ["train.class_weights=[0.5, 1.5]", "model.num_classes=2",
                             "train.class_weights_from_epoch=2"])
    t = SimpleNamespace(cfg=cfg, class_weights=torch.tensor([0.5, 1.5]), logit_adjust=None,
                        state=SimpleNamespace(epoch=1))
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    assert float(chunk_loss(t, logits, y, y)) == float(F.cross_entropy(logits, y))
    t.state.epoch = 2
    assert float(chunk_loss(t, logits, y, y)) == pytest.approx(
        float(F.cross_entropy(logits, y, weight=t.class_weights)))
    # micro-batches: the chunks' shares add up to the whole batch's weighted mean
    parts = chunk_loss(t, logits[:1], y[:1], y) + chunk_loss(t, logits[1:], y[1:], y)
    assert float(parts) == pytest.approx(float(chunk_loss(t, logits, y, y)))


# ---- data.sampler ----------------------------------------------------------------------------
def lt_loader(sampler: str, rank: int = 0, world: int = 1, mix: Mix | None = None, epoch: int = 0):
    counts = [400, 200, 100, 50, 25, 12, 6, 4, 2, 1]
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    images = torch.zeros(len(labels), 3, 4, 4, dtype=torch.uint8)
    images[:, 0] = labels[:, None, None].to(torch.uint8)  # the label is in the pixels
    ld = TensorLoader(images, labels, 80, Augment(flip="none"), Preprocess([0.0] * 3, [1.0] * 3, 4), seed=3,
                      rank=rank, world=world, sampler=sampler, mix=mix)
    ld.set_epoch(epoch)
    return ld


def test_balanced_sampler_batches_are_near_uniform_and_a_function_of_seed_and_epoch():
    hist = lambda ld: torch.bincount(torch.cat([y for _, y in ld]), minlength=10)  # noqa: E731
    uniform, balanced, sqrt = hist(lt_loader("uniform")), hist(lt_loader("balanced")), hist(lt_loader("sqrt"))
    assert uniform.sum() == balanced.sum() == sqrt.sum() == 800  # as many images per epoch
    assert uniform[0] == 400 and uniform[9] <= 1
    assert balanced.min() >= 50 and balanced.max() <= 110  # 80 expected per class
    assert sqrt[9] > uniform[9] and sqrt[0] < uniform[0] and sqrt[9] < balanced[9]
    a, b, c = lt_loader("balanced").order(), lt_loader("balanced").order(), lt_loader("balanced", epoch=1).order()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # torchrun: each rank its slice of the same draw
    ranks = [list(lt_loader("balanced", r, 2)) for r in range(2)]
    whole = list(lt_loader("balanced"))
    for k, (_, y) in enumerate(whole):
        assert torch.equal(torch.stack([ranks[0][k][1], ranks[1][k][1]], 1).flatten(), y)


# ---- data.mixup / data.cutmix ----------------------------------------------------------------------
def test_mixup_and_cutmix_soft_targets_are_deterministic_and_match_the_pixels():
    for mix in (Mix(mixup=0.4, num_classes=10), Mix(cutmix=1.0, num_classes=10), Mix(0.4, 1.0, 0.5, 10)):
        one, two = list(lt_loader("uniform", mix=mix)), list(lt_loader("uniform", mix=mix))
        for (x1, y1), (x2, y2) in zip(one, two):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
            assert y1.shape == (80, 10) and torch.allclose(y1.sum(1), torch.ones(80))
            # channel 0 holds the label: its image mean is the soft target's expected label
            assert torch.allclose(x1[:, 0].mean((1, 2)), y1 @ torch.arange(10.0), atol=1e-4)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    xm, ym = mix_batch(x, torch.tensor([0, 1]), Mix(0.4, 0.0, 0.0, 2), np.random.default_rng(0))
    assert torch.equal(xm, x) and torch.equal(ym, torch.eye(2))  # mix_prob 0: never mixed


# ---- validation, the CLI, resume ----------------------------------------------------------------
@pytest.mark.parametrize("setting, key", [
    ("data.imbalance_ratio=-1", "data.imbalance_ratio"), ("data.imbalance_ratio=0.5", "data.imbalance_ratio"),
    ("train.class_weights=[1, 2]", "train.class_weights"), ("train.class_weights=[1,1,1,1,1,1,1,1,1,-1]",
                                                            "train.class_weights"),
    ("train.class_weights=inverse", "train.class_weights"), ("train.logit_adjust=-1", "train.logit_adjust"),
    ("data.mixup=-0.2", "data.mixup"), ("data.cutmix=-1", "data.cutmix"), ("data.mix_prob=2", "data.mix_prob"),
    ("data.sampler=classaware", "data.sampler"), ("train.cb_beta=1", "train.cb_beta")])
def test_invalid_settings_name_their_key(setting: str, key: str):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [setting])


@pytest.mark.slow
@pytest.mark.parametrize("ratio", ["1e9", "51"])
def test_a_ratio_that_empties_a_class_is_one_error_line(ratio: str, cifar10_small: Path, tmp_path: Path):
    """cifar10_small has 50 training images per class: R above 50 leaves the last classes with none.
    Training, data stats and data export all refuse it, naming the class and the ratio; nothing is
    trained or written."""
    r = run("train", str(FAST), "--set", f"data.root={cifar10_small}", "--set", f"data.imbalance_ratio={ratio}",
            "--set", "train.class_weights=effective", "--set", "data.sampler=balanced",
            "--work-dir", str(tmp_path / "r"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: data.imbalance_ratio "), r.stderr
    assert "truck" in lines[0] and "no training image" in lines[0] and "at most 50" in lines[0]
    assert not (tmp_path / "r" / "last.pt").exists()
    for cmd in (["data", "stats", str(cifar10_small)], ["data", "export", str(cifar10_small), str(tmp_path / "x")]):
        r = run(*cmd, "--imbalance-ratio", ratio)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and "--imbalance-ratio" in lines[0] and "truck" in lines[0]
    assert not (tmp_path / "x").exists()
    run_ok = run("data", "stats", str(cifar10_small), "--imbalance-ratio", "50", "--json")  # the edge still works
    assert run_ok.returncode == 0 and list(json.loads(run_ok.stdout)["class_counts"]["train"].values())[-1] == 1


def test_cli_reports_one_error_line_naming_the_key(tmp_path: Path):
    r = run("train", str(FAST), "--set", "data.sampler=classaware", "--work-dir", str(tmp_path / "r"))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "data.sampler" in lines[0]


@pytest.mark.slow
def test_cli_trains_long_tail_with_every_option_and_analyze_reports_shots(cifar10_small: Path, tmp_path: Path):
    work = tmp_path / "run"
    r = run("train", str(FAST), "--set", f"data.root={cifar10_small}", "--set", "train.batch_size=50",
            "--set", "train.epochs=2", "--set", "log.plots=false", "--set", "eval.batch_size=100",
            "--set", "data.imbalance_ratio=10", "--set", "train.class_weights=effective",
            "--set", "train.class_weights_from_epoch=1", "--set", "data.sampler=sqrt",
            "--set", "train.logit_adjust=1.0", "--set", "data.mixup=0.2", "--set", "data.cutmix=1.0",
            "--set", "data.mix_prob=0.5", "--work-dir", str(work))
    assert r.returncode == 0, r.stderr
    header = json.loads((work / "log.jsonl").read_text().splitlines()[0])
    assert header["class_counts"] == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5] and header["num_train"] == 199
    assert load_checkpoint(work / "last.pt")["class_counts"] == header["class_counts"]
    r = run("analyze", str(work / "last.pt"), "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "balanced accuracy" in r.stdout
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    recall = [row["recall"] for row in m["per_class"][:10]]
    assert m["balanced_accuracy"] == pytest.approx(100 * np.mean(recall))
    assert m["shot_accuracy"]["many"] is None and m["shot_accuracy"]["few"] is not None  # 5..50 per class


def test_balanced_and_shot_accuracy():
    cm = np.array([[8, 2, 0], [1, 1, 0], [0, 5, 5]])
    assert balanced_accuracy(cm) == pytest.approx(100 * (0.8 + 0.5 + 0.5) / 3)
    assert shot_accuracy(cm, [500, 50, 5]) == {"many": 80.0, "medium": 50.0, "few": 50.0}
    assert shot_accuracy(cm, None) == {"many": None, "medium": None, "few": None}


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["data.sampler=balanced", "data.imbalance_ratio=5"],
                                   ["data.mixup=0.4", "data.cutmix=1.0", "train.class_weights=balanced"]])
def test_resume_is_bitwise_identical_with_a_sampler_and_with_mixing(extra: list[str], cifar10_small: Path,
                                                                   tmp_path: Path):
    cfg = lambda *more: small_cfg(cifar10_small, "train.epochs=2", *extra, *more)  # noqa: E731
    fit(cfg(), work_dir=tmp_path / "a", quiet=True)
    n = load_checkpoint(tmp_path / "a" / "last.pt")["iter"]
    fit(cfg(f"train.max_iters={n // 2 + 1}"), work_dir=tmp_path / "b", quiet=True)  # stops mid-epoch
    fit(cfg(), work_dir=tmp_path / "b", resume=True, quiet=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    val = lambda run: [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())  # noqa: E731
                       if r["type"] == "val"]
    assert val(tmp_path / "a")[-1]["loss"] == val(tmp_path / "b")[-1]["loss"]


# ---- label smoothing with logit adjustment, post-hoc adjustment ------------------------------------
def test_label_smoothing_with_logit_adjustment_smooths_toward_the_prior():
    """The adjusted loss's optimum keeps the raw logits of the non-target classes equal (balanced):
    with uniform smoothing the rarest class's raw logit would rise by -log prior."""
    eps, adjust = 0.2, log_prior([5000, 500, 50])
    y = torch.tensor([0, 1, 2])
    target = (1 - eps) * F.one_hot(y, 3).float() + eps * adjust.softmax(0)
    z = (target.log() - adjust).requires_grad_()  # softmax(z + adjust) == target: the optimum
    loss, _ = weighted_cross_entropy(z, y, adjust=adjust, label_smoothing=eps)
    loss.sum().backward()
    assert float(z.grad.abs().max()) < 1e-5
    for i in range(3):  # every non-target raw logit is log(eps): no class is favoured
        others = z.detach()[i][torch.arange(3) != i]
        assert torch.allclose(others, torch.full_like(others, float(np.log(eps))), atol=1e-5)
    # without adjustment, smoothing stays exactly F.cross_entropy's uniform smoothing
    logits = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    plain, _ = weighted_cross_entropy(logits, y, label_smoothing=eps)
    assert float(plain.mean()) == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=eps)))


@pytest.fixture(scope="module")
def lt_run(cifar10_small: Path, tmp_path_factory) -> Path:
    """A 1-epoch long-tail run (R = 10) whose evaluation uses post-hoc logit adjustment tau = 1."""
    run_dir = tmp_path_factory.mktemp("lt") / "run"
    fit(small_cfg(cifar10_small, "train.epochs=1", "data.imbalance_ratio=10", "eval.logit_adjust=1.0",
                  "eval.tta=none"), work_dir=run_dir, quiet=True)
    return run_dir


@pytest.mark.slow
def test_posthoc_logit_adjustment_in_eval_analyze_predict_and_export(lt_run: Path, tmp_path: Path):
    from cifarkit.infer.inference import Inference, eval_data

    ckpt = str(lt_run / "last.pt")
    raw = Inference.from_checkpoint(ckpt, device="cpu", logit_adjust=0)
    images, labels, _ = eval_data(raw, None, None)
    counts = raw.meta["class_counts"]
    assert counts == long_tail_counts([50] * 10, 10)
    by_hand = (raw.logits(images) - log_prior(counts)).argmax(1)  # Menon et al.: argmax f(x) - tau log prior
    def evaluate(*extra: str) -> tuple[dict, list[int]]:
        out = tmp_path / f"pred{len(list(tmp_path.iterdir()))}.csv"
        r = run("eval", ckpt, "--json", "--predictions", str(out), *extra)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout), [int(row.split(",")[1]) for row in out.read_text().splitlines()[1:]]

    m1, p1 = evaluate()  # the run's eval.logit_adjust = 1
    assert m1["logit_adjust"] == 1.0 and p1 == by_hand.tolist()
    m0, p0 = evaluate("--logit-adjust", "0")
    assert m0["logit_adjust"] == 0.0 and p0 == raw.logits(images).argmax(1).tolist()
    assert sum(x >= 5 for x in p1) > sum(x >= 5 for x in p0)  # the rare classes gain predictions
    # training's per-epoch evaluation used the same adjustment
    val = [json.loads(x) for x in (lt_run / "log.jsonl").read_text().splitlines() if '"val"' in x][-1]
    assert val["top1"] == pytest.approx(m1["top1"])
    # analyze reports it; an exported ONNX model bakes it into its graph (the parity check compares)
    r = run("analyze", ckpt, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["logit_adjust"] == 1.0
    pytest.importorskip("onnxruntime")
    r = run("export", ckpt, "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    onnx = Inference.from_onnx(tmp_path / "m.onnx")
    assert onnx.logit_adjust == 1.0 and onnx.logits(images).argmax(1).tolist() == by_hand.tolist()
    img = str(tmp_path / "a" / "misclassified.png")
    r = run("predict", str(tmp_path / "m.onnx"), img, "--logit-adjust", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--logit-adjust" in r.stderr
    # predict says and records the adjustment, and agrees with the checkpoint's own
    r = run("predict", str(tmp_path / "m.onnx"), img, "--json")
    assert r.returncode == 0, r.stderr
    via_onnx = json.loads(r.stdout)
    from cifarkit.predict import load

    want = load(ckpt, device="cpu").predict(img)
    assert via_onnx["logit_adjust"] == 1.0 and want.logit_adjust == 1.0 and via_onnx["label"] == want.label
    r = run("predict", ckpt, img)
    assert r.returncode == 0 and "logit-adjust 1" in r.stderr, r.stderr
    r = run("export", ckpt, "--out", str(tmp_path / "raw.onnx"), "--logit-adjust", "0")
    assert r.returncode == 0, r.stderr
    assert Inference.from_onnx(tmp_path / "raw.onnx").logit_adjust == 0.0


@pytest.mark.parametrize("args", [["eval", "x.pt", "--logit-adjust", "-1"], ["eval", "x.pt", "--logit-adjust", "nan"],
                                  ["data", "stats", "d", "--imbalance-ratio", "0.5"],
                                  ["data", "export", "d", "o", "--imbalance-ratio", "-3"]])
def test_bad_tau_and_ratio_are_one_error_line(args: list[str], tmp_path: Path):
    r = run(*args, cwd=tmp_path)
    assert r.returncode != 0 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1, r.stderr
    assert ("--logit-adjust" if "eval" in args else "--imbalance-ratio") in r.stderr
    assert not (tmp_path / "o").exists()


# ---- data stats / data export --imbalance-ratio -------------------------------------------------
def test_data_stats_and_export_show_and_write_the_long_tail_profile(cifar10_dir: Path, tmp_path: Path):
    want = long_tail_counts([10] * 10, 10)
    r = cli_run("data", "stats", str(cifar10_dir), "--imbalance-ratio", "10", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert list(s["class_counts"]["train"].values()) == want and s["imbalance_ratio"] == 10
    assert s["imbalance"]["train"] == 10 / want[-1] and s["imbalance"]["test"] == 1.0
    text = cli_run("data", "stats", str(cifar10_dir), "--imbalance-ratio", "10").stdout
    assert "imbalance 10.0" in text and f"truck {want[-1]}" in text and "imbalance 1.0" in text
    r = run("data", "export", str(cifar10_dir), str(tmp_path / "out"), "--imbalance-ratio", "10")
    assert r.returncode == 0, r.stderr
    classes = list(s["class_counts"]["train"])
    assert [len(list((tmp_path / "out" / "train" / c).iterdir())) for c in classes] == want
    assert sum(1 for _ in (tmp_path / "out" / "test").rglob("*.png")) == 40  # the test split stays balanced
    # its manifest has the splits too: stats reads them as export does (the profile cut again is the same)
    r = cli_run("data", "stats", str(tmp_path / "out" / "manifest.csv"), "--imbalance-ratio", "10", "--json")
    assert r.returncode == 0, r.stderr
    assert list(json.loads(r.stdout)["class_counts"]["train"].values()) == want
    # the exported folder is the same long-tail train split a run trains on
    cfg = load_config(None, [f"data.root={cifar10_dir}", "data.imbalance_ratio=10"])
    assert list(load_train_split(cfg)[0].class_counts().values()) == want
