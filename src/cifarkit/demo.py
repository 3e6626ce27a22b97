"""`cifarkit demo`: the tutorial's whole workflow on the sample shipped inside the package.

Steps (each prints what it wrote): write the sample as official CIFAR python batches, inspect
them, draw sample grids, export to image folders + manifest, train the airbench94 recipe (airnet)
for DEMO_EPOCHS epochs on the 2,000 sample images, evaluate the checkpoint (plain and with TTA),
analyse it, predict the exported test images (checking predict == eval), draw Grad-CAM overlays and
export to ONNX.

Budget: at most 3 minutes on a 2-core CPU of any kind, which the slowest kind decides: on AVX2
(fp32, no hardware bf16) a training step of 256 images takes ~2.7 s (95 img/s) and the steps
around training take ~60 s, so the demo trains 5 epochs (35 steps) and evaluates plainly after
each epoch, using test-time augmentation once, for the final number (a 6-view TTA evaluation
costs as much as ~4 training steps there). Measured on a 2-core AMD EPYC (AVX2): 12 epochs took
290 s in all.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

from cifarkit.analysis.after_run import plot_writers, start_writers
from cifarkit.analysis.analyze import analyze
from cifarkit.cam import compute_cam, save_cam_figure
from cifarkit.config import load_config
from cifarkit.data.cifar import write_cifar_batches
from cifarkit.data.decode import open_image
from cifarkit.data.export import export_dataset
from cifarkit.data.imageset import ImageSet
from cifarkit.data.inspect import format_inspect, inspect_path
from cifarkit.data.show import show_grid
from cifarkit.data.sources import load_dataset
from cifarkit.engine.train import fit
from cifarkit.errors import CifarkitError
from cifarkit.export import export_model
from cifarkit.infer.inference import evaluate_checkpoint
from cifarkit.plotting import save
from cifarkit.predict import load, show_result
from cifarkit.recipes import shipped_configs

SAMPLE = "cifar10_sample.tar.gz"
DEMO_EPOCHS = 5


def read_sample() -> dict[str, ImageSet]:
    """The sample shipped in the package: 200 train and 50 test JPEGs per CIFAR-10 class.

    Returns:
        {"train": ImageSet, "test": ImageSet} of uint8 (N, 32, 32, 3) images, each shuffled with a
        fixed seed like the real batches.
    """
    found: dict[str, list] = {"train": [], "test": []}
    with resources.files("cifarkit").joinpath("sample", SAMPLE).open("rb") as fh, \
            tarfile.open(fileobj=fh, mode="r:gz") as tar:
        for m in tar:
            if m.isfile() and m.name.endswith(".jpg"):
                split, cls, fname = m.name.split("/")
                arr = np.asarray(open_image(io.BytesIO(tar.extractfile(m).read())).convert("RGB"))
                found[split].append((m.name, cls, fname, arr))
    classes = sorted({c for items in found.values() for _, c, _, _ in items})
    out = {}
    for split, items in found.items():
        items.sort()
        rng = np.random.default_rng(0 if split == "train" else 1)  # batches are shuffled, like the real ones
        items = [items[i] for i in rng.permutation(len(items))]
        out[split] = ImageSet(
            images=np.stack([a for *_, a in items]), labels=np.array([classes.index(c) for _, c, _, _ in items]),
            classes=classes, sources=[SAMPLE] * len(items), indices=np.arange(len(items)),
            filenames=[f"{c}_{f[:-4]}.png" for _, c, f, _ in items], origin=SAMPLE, split=split)
    return out


def demo_config(data_root: Path, epochs: float, quick: bool):
    """The airbench94 recipe scaled to the 2,000-image sample (batch 256), evaluated without TTA after
    each epoch (the demo's TTA evaluation is step 6's); `quick` stops after 3 steps."""
    cfg_path = shipped_configs()["airbench94"]  # package data: works from a wheel as from a clone
    overrides = [
        f"data.root={data_root}", f"train.epochs={epochs}",
        # 2,000 training images: batch 256 gives 7 steps per epoch. airbench's per-example lr is
        # batch-independent (summed loss); its wd scales with the batch: 0.0153 * 256 / 11.5.
        "train.batch_size=256", "optim.weight_decay=0.340591", "eval.interval=1", "log.interval=2",
        "checkpoint.interval=100", "name=demo", "eval.tta=none",
    ]
    if quick:
        overrides += ["train.max_iters=3"]
    return load_config(cfg_path, overrides)


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_demo(out: str | Path = "demo_out", epochs: float = DEMO_EPOCHS, quick: bool = False) -> dict:
    """Run the whole workflow on the shipped sample and print what each step wrote.

    Writes the sample as CIFAR batches, inspects them, draws grids, exports to folders, trains the
    airbench94 recipe, evaluates, analyses, predicts (checking predict == eval on every exported
    test image), draws Grad-CAM overlays and exports to ONNX (the last two skipped with a message
    when their packages are missing).

    Args:
        out: the output folder (created; a rerun replaces its earlier run).
        epochs: training length [epochs].
        quick: stop training after 3 steps and skip the TTA evaluation (a smoke test).

    Returns:
        A dict with the training summary ("train"), the evaluation ("eval") and the predict == eval
        check ("predict_equals_eval").

    Raises:
        CifarkitError: a step fails with a user-fixable problem (e.g. `out` is not writable).
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    _step("1. data: the shipped sample written as official CIFAR-10 python batches")
    sample = read_sample()
    root = write_cifar_batches(sample["train"], sample["test"], out / "data")
    print(f"wrote {root}")

    _step("2. inspect")
    info = inspect_path(root)
    print(format_inspect(info))
    (out / "inspect.json").write_text(json.dumps(info, indent=1))

    _step("3. show: the first 20 images (2x10) and 10 per class (10x10)")
    train = load_dataset(root, "train")
    for path in (show_grid(train, out / "samples_first20.png", first=20),
                 show_grid(train, out / "samples_per_class.png", per_class=10)):
        print(f"wrote {path}")

    _step("4. export to image folders + manifest.csv")
    res = export_dataset({s: load_dataset(root, s) for s in ("train", "test")}, out / "export", overwrite=True)
    print(f"wrote {res.out} ({res.counts}) and {res.manifest}")

    _step(f"5. train the airbench94 recipe (airnet) for {epochs} epochs on {len(train)} images")
    cfg = demo_config(root, epochs, quick)
    # a rerun redoes the demo (the old run moves aside); curves.png and report.html as `cifarkit train` writes them
    summary = fit(cfg, work_dir=out / "run", force=True,
                  after_run=plot_writers(cfg.log.plots, calibrate=cfg.train.calibrate),
                  before_run=start_writers(cfg.log.plots))
    results["train"] = summary

    _step("6. evaluate the last checkpoint on its own: plain (as after each epoch), then with TTA")
    m = evaluate_checkpoint(out / "run" / "last.pt")
    # the TTA evaluation runs 6 views of every image: left out of the --quick smoke test
    for e in (m,) if quick else (m, evaluate_checkpoint(out / "run" / "last.pt", tta="flip_translate")):
        print(f"last.pt (epoch {e['epoch']})  {e['split']} (tta {e['tta']}, {e['precision']}): top1 {e['top1']:.2f}  "
              f"top5 {e['top5']:.2f}  loss {e['loss']:.4f}")
        results["eval" if e["tta"] == "none" else "eval_tta"] = {k: v for k, v in e.items() if k != "predictions"}

    _step("7. understand: curves, confusion matrix, per-class metrics, calibration, report")
    a = analyze(out / "run" / "best.pt", out / "analysis")
    # two checkpoints, two numbers: last.pt is the final epoch, best.pt the epoch whose evaluation
    # during training scored highest (on the test split here, so its number is an optimistic pick)
    print(f"analysis of best.pt (epoch {a['epoch']}, the best of the per-epoch evaluations; last.pt is epoch "
          f"{m['epoch']}): {a['split']} top1 {a['top1']:.2f}, ECE {a['ece'] * 100:.2f}%, most confused "
          + ", ".join(f"{p['true']}->{p['predicted']}" for p in a["most_confused"][:3]))
    print(f"curves: {out / 'run' / 'curves.png'}; report: {out / 'run' / 'report.html'}")

    _step("8. use: predict test images, Grad-CAM, export to ONNX")
    clf = load(out / "run" / "last.pt")
    # predict == eval: every exported test PNG gets the label eval gave the same image
    with open(res.manifest, newline="", encoding="utf-8") as f:
        index = {str(out / "export" / r["path"]): int(r["index"]) for r in csv.DictReader(f) if r["split"] == "test"}
    preds = [p for _, p, _ in clf.predict_files(sorted(index))]
    same = sum(p.label_id == m["predictions"][index[p.path]] for p in preds)
    print(f"predicted the {len(preds)} exported test images (tta {clf.tta}, {clf.precision}): {same} of "
          f"{len(preds)} labels equal to eval's")
    results["predict_equals_eval"] = {"same": same, "n": len(preds), "tta": clf.tta}
    picks = sorted((out / "export" / "test").glob("*/*.png"))[::50][:6]
    (out / "predict").mkdir(exist_ok=True)
    for pred in clf.predict(picks):
        print(f"{Path(pred.path).parent.name + '/' + Path(pred.path).name:<28} -> {pred.label:<11} {pred.score:.2f}")
        save(show_result(pred.path, pred), out / "predict" / f"{Path(pred.path).stem}.png")
    try:
        for p in picks[:3]:
            res = compute_cam(clf, p)
            save_cam_figure(p, res, out / "cam" / f"{p.stem}_cam.png", true=p.parent.name)
        print(f"Grad-CAM images in {out / 'cam'}")
    except CifarkitError as e:
        print(f"Grad-CAM skipped: {e}")
    try:
        r = export_model(out / "run" / "best.pt", "onnx", out / "model.onnx")
        print(f"exported {r.path}: max abs diff {r.max_abs_diff:.1e}, top-1 agreement {r.top1_agreement:.0%}")
    except CifarkitError as e:
        print(f"ONNX export skipped: {e}")

    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; everything is under {out}/")
    print(f"look at it in your browser: cifarkit serve {out / 'run' / 'best.pt'} --runs {out}")
    return results
