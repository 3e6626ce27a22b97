"""The commands that measure and explain a checkpoint or a run: eval, plot, analyze, calibrate,
robustness and report.

Each handler parses its arguments into one library call (keywords only) and prints the result.
"""

from __future__ import annotations

import argparse
import csv

from cifarkit.cli.options import (
    add_device_option,
    add_inference_options,
    add_logit_adjust_option,
    add_precision_option,
    add_tta_option,
    json_line,
    seed_int,
)

PLOT_OUT = "curves.png"


def cmd_eval(a: argparse.Namespace) -> int:
    """`cifarkit eval`: top-1, top-5 and loss of a checkpoint, as one line or --json.

    --predictions also writes each image's predicted class (index, id, name) to a new CSV.

    Raises:
        CifarkitError: the --predictions file already exists.
    """
    from cifarkit.infer.inference import checkpoint_label, describe, evaluate_checkpoint
    from cifarkit.safecsv import csv_row

    if a.predictions:  # a new file in a writable place, checked before the evaluation
        from cifarkit.safepath import check_apart, output_file

        output_file(path=a.predictions, flag=None, option="--predictions")
        check_apart(out=a.predictions, inputs=[a.data], option="--predictions")  # not among the images
    exclude = None
    if a.exclude:
        from cifarkit.audit.audit import leaked_images

        leaked = leaked_images(duplicates_csv=a.exclude)  # a bad file fails before the model is loaded
        exclude = lambda split: leaked.get(split, {})  # noqa: E731  the split is known once the checkpoint is read
    m = evaluate_checkpoint(ckpt=a.checkpoint, data=a.data, split=a.split, tta=a.tta, device=a.device,
                            logit_adjust=a.logit_adjust, precision=a.precision, exclude=exclude)
    predicted = m.pop("predictions")
    if a.predictions:
        with open(a.predictions, "x", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["index", "predicted_id", "predicted"])
            w.writerows(csv_row([i, p, m["classes"][p]]) for i, p in enumerate(predicted))
    m.pop("classes")
    if a.json:
        print(json_line(m))
    else:
        print(f"{checkpoint_label(m)}  {m['split']} ({m['n']} images, {describe(m)}): "
              f"top1 {m['top1']:.2f}  top5 {m['top5']:.2f}  loss {m['loss']:.4f}")
        if "without_excluded" in m:
            w = m["without_excluded"]
            print(f"  without the {m['excluded']} images {a.exclude} pairs with another split ({w['n']} images): "
                  f"top1 {w['top1']:.2f}  top5 {w['top5']:.2f}  loss {w['loss']:.4f}")
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    """`cifarkit plot`: overlay the curves of runs and logs."""
    from cifarkit.analysis.curves import plot_runs

    out = plot_runs(paths=a.logs, out=a.out, keys=a.keys, smooth_window=a.smooth, iters_per_epoch=a.iters_per_epoch,
                    overwrite=a.overwrite or a.out == PLOT_OUT)  # the default is refreshed; others need --overwrite
    print(f"wrote {out}")
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    """`cifarkit analyze`: confusion matrix, per-class metrics and calibration of a checkpoint."""
    from cifarkit.analysis.analyze import analyze
    from cifarkit.infer.inference import checkpoint_label, describe

    m = analyze(ckpt=a.checkpoint, out=a.out, data=a.data, split=a.split, device=a.device, tta=a.tta,
                overwrite=a.overwrite, logit_adjust=a.logit_adjust, precision=a.precision)
    print(f"{checkpoint_label(m)}  {m['split']} ({m['n']} images, {describe(m)}): "
          f"top1 {m['top1']:.2f}  top5 {m['top5']:.2f}  loss {m['loss']:.4f}  "
          f"ECE {m['ece'] * 100:.2f}%")
    shots = "  ".join(f"{k} {v:.2f}" for k, v in m["shot_accuracy"].items() if v is not None)
    print(f"balanced accuracy {m['balanced_accuracy']:.2f}" + (f"  (shots: {shots})" if shots else ""))
    for pair in m["most_confused"][:5]:
        print(f"  {pair['true']} -> {pair['predicted']}: {pair['count']}")
    print(f"wrote {a.out}/ (confusion_matrix.png/.csv, per_class.csv, misclassified.png, reliability.png, "
          "metrics.json, predictions.npz)")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    """`cifarkit calibrate`: temperature scaling into a new checkpoint (`infer.calibration`) and its
    reliability figure (`analysis.calibration_plot`)."""
    from cifarkit.analysis.calibration_plot import calibrate_with_figure

    r = calibrate_with_figure(ckpt=a.checkpoint, out=a.out, data=a.data, split=a.split, allow_test=a.allow_test,
                              device=a.device, tta=a.tta, precision=a.precision, overwrite=a.overwrite,
                              objective=a.objective)
    if a.json:
        print(json_line(r))
        return 0
    b, f = r["before"], r["after"]
    print(f"temperature {r['temperature']:.4f}, fitted ({r['objective']}) on {r['split']} ({r['n']} images, "
          f"tta {r['tta']}, {r['precision']}); top-1 {f['top1']:.2f} unchanged")
    print(f"           ECE      NLL     Brier\nbefore  {b['ece'] * 100:6.2f}%  {b['nll']:.4f}  {b['brier']:.4f}\n"
          f"after   {f['ece'] * 100:6.2f}%  {f['nll']:.4f}  {f['brier']:.4f}")
    print(f"wrote {r['checkpoint']}" + (f" and {r['figure']}" if r["figure"] else ""))
    return 0


def cmd_robustness(a: argparse.Namespace) -> int:
    """`cifarkit robustness`: the CIFAR-10-C table of a checkpoint (`analysis.robustness`)."""
    from pathlib import Path

    from cifarkit.analysis.robustness import TITLES, robustness
    from cifarkit.infer.inference import checkpoint_label, describe

    out = a.out or str(Path(a.checkpoint).parent / "robustness")
    r = robustness(ckpt=a.checkpoint, out=out, data=a.data, split=a.split, corruptions=a.corruptions,
                   severities=a.severities, extra=a.extra, baseline=a.baseline, cifar10c=a.cifar10c, tta=a.tta,
                   precision=a.precision, device=a.device, seed=a.seed, overwrite=a.overwrite, limit=a.limit)
    if a.json:
        print(json_line(r))
        return 0
    sevs = [str(s) for s in r["severities"]]
    print(f"{checkpoint_label(r)}  {r['split']} ({r['n']} images x {len(r['corruptions'])} corruptions x "
          f"{len(sevs)} severities, {describe(r)}; {r['source']})")
    print(f"{'corruption':16s}" + "".join(f"{s:>7s}" for s in sevs) + "   mean")
    for c in r["corruptions"]:
        print(f"{TITLES.get(c, c):16s}" + "".join(f"{r['table'][c][s]:7.2f}" for s in sevs)
              + f"  {r['per_corruption'][c]:6.2f}")
    line = f"clean top1 {r['clean_top1']:.2f}  mean corruption accuracy {r['mca']:.2f}"
    if r.get("mca_extra") is not None:
        line += f" (the 4 extras apart: {r['mca_extra']:.2f})"
    b = r["baseline"]
    if b:
        mce = "n/a" if b["mce"] is None else f"{b['mce']:.1f}"
        rel = "n/a" if b["relative_mce"] is None else f"{b['relative_mce']:.1f}"
        line += f"  mCE {mce}  relative mCE {rel} (vs {b['checkpoint']}, clean {b['clean_top1']:.2f})"
    print(line)
    print(f"{r['seconds']:.0f} s ({r['images_per_s']:.0f} corrupted images/s, {r['cpu_kind']}); wrote {out}/ "
          "(robustness.json, robustness.png, robustness_samples.png, metrics.json)")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    """`cifarkit report`: one self-contained HTML report of a run."""
    from cifarkit.analysis.report import write_report

    out = write_report(run_dir=a.run_dir, out=a.out, data=a.data, precision=a.precision,
                       overwrite=True if a.overwrite else None)
    print(f"wrote {out}")
    return 0


def add_eval(sub) -> None:
    """Add `eval` to the subparsers `sub`."""
    e = sub.add_parser("eval", help="evaluate a checkpoint (top-1, top-5, loss)")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="dataset path (default: the run's data.root)")
    e.add_argument("--split", default=None, help="split (default: the run's evaluation split)")
    add_tta_option(e)
    add_logit_adjust_option(e)
    add_precision_option(e)
    e.add_argument("--predictions", default=None, metavar="CSV",
                   help="also write each image's predicted class (index in the split, id, name) to a new CSV")
    e.add_argument("--exclude", default=None, metavar="DUPLICATES_CSV",
                   help="also report the metrics without the split's images that this duplicates.csv (`cifarkit data "
                        "audit`) pairs with another split: accuracy without train/test leakage")
    add_device_option(e)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)


def add_plot(sub) -> None:
    """Add `plot` to the subparsers `sub`."""
    p = sub.add_parser("plot", help="loss / accuracy / lr curves from runs or MMCls/MMEngine logs")
    p.add_argument("logs", nargs="+", help="log.jsonl, *.log.json, scalars.json or run directories")
    p.add_argument("--keys", nargs="+", default=["loss", "top1", "top5", "lr"])
    p.add_argument("--out", default=PLOT_OUT, help=f"image file (default {PLOT_OUT}, replaced when it exists; "
                   "another existing file needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--smooth", type=int, default=0, help="moving-average window [records] (0 = auto)")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="MMCls 0.x logs: training iterations per epoch, when the log's header cannot tell")
    p.set_defaults(fn=cmd_plot)


def add_analyze(sub) -> None:
    """Add `analyze` to the subparsers `sub`."""
    z = sub.add_parser("analyze", help="confusion matrix, per-class metrics, calibration, errors")
    z.add_argument("checkpoint")
    z.add_argument("--data", default=None)
    z.add_argument("--split", default=None)
    z.add_argument("--out", default="analysis", help="output folder (new or empty)")
    z.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    add_inference_options(z, logit_adjust=True)
    z.set_defaults(fn=cmd_analyze)


def add_calibrate(sub) -> None:
    """Add `calibrate` to the subparsers `sub`."""
    c = sub.add_parser("calibrate", help="fit a softmax temperature on a held-out split (temperature scaling) "
                       "and write it into a new checkpoint")
    c.add_argument("checkpoint")
    c.add_argument("--out", default=None, help="the new checkpoint (default: CHECKPOINT_calibrated.pt next to it)")
    c.add_argument("--data", default=None, help="dataset holding --split (default: the run's data.root)")
    c.add_argument("--split", default=None, help="held-out split (default: the run's validation split)")
    c.add_argument("--allow-test", action="store_true",
                   help="accept the test split (its calibration numbers are then measured where T was fitted)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    c.add_argument("--json", action="store_true", help="print the result as one JSON object")
    c.add_argument("--objective", default="nll", choices=["nll", "ece"],
                   help="what T minimises on the held-out split: nll (Guo et al., default) or ece (15 bins)")
    add_inference_options(c)
    c.set_defaults(fn=cmd_calibrate)


def add_robustness(sub) -> None:
    """Add `robustness` to the subparsers `sub`."""
    rb = sub.add_parser("robustness", help="top-1 under the CIFAR-10-C corruptions (15 x 5 severities), "
                        "mean corruption accuracy, mCE against a reference model")
    rb.add_argument("checkpoint")
    rb.add_argument("--data", default=None, help="the clean dataset (default: the run's data.root)")
    rb.add_argument("--split", default=None, help="default: the run's test split")
    rb.add_argument("--out", default=None, help="output folder (default: robustness/ next to the checkpoint, "
                    "where `cifarkit report` finds it); other files in it are kept")
    rb.add_argument("--corruptions", nargs="+", default=None, metavar="NAME",
                    help="default: the protocol's 15 (gaussian_noise ... jpeg_compression)")
    rb.add_argument("--extra", action="store_true", help="add the 4 extra corruptions: speckle_noise, gaussian_blur, "
                    "spatter, saturate")
    rb.add_argument("--severities", nargs="+", type=int, default=None, metavar="S", help="1-5 (default all)")
    rb.add_argument("--baseline", default=None, metavar="CKPT",
                    help="reference checkpoint for mCE and relative mCE (the paper's CE: errors relative to it)")
    rb.add_argument("--cifar10c", default=None, metavar="DIR",
                    help="read a downloaded CIFAR-10-C folder (<corruption>.npy + labels.npy) instead of generating")
    add_tta_option(rb, "none", "none, the protocol's plain evaluation")
    add_precision_option(rb)
    rb.add_argument("--seed", type=seed_int, default=0, help="of the corruptions' random draws (default 0)")
    rb.add_argument("--limit", type=int, default=None, metavar="N",
                    help="only N test images, spread evenly over the split (a quick look)")
    rb.add_argument("--overwrite", action="store_true", help="replace robustness files already in --out")
    rb.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_device_option(rb)
    rb.set_defaults(fn=cmd_robustness)


def add_report(sub) -> None:
    """Add `report` to the subparsers `sub`."""
    r = sub.add_parser("report", help="one self-contained HTML report of a run")
    r.add_argument("run_dir")
    r.add_argument("--out", default=None, help="an .html file (default: RUN_DIR/report.html, refreshed each time; "
                   "another existing file needs --overwrite)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    r.add_argument("--data", default=None, help="dataset for the analysis (default: the run's)")
    add_precision_option(r)
    r.set_defaults(fn=cmd_report)
