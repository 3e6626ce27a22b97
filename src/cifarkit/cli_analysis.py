"""CLI handlers for understanding a run: plot, analyze, report, data stats."""

from __future__ import annotations

import argparse
import contextlib
import sys

from cifarkit.cli_use import add_device_option, json_line


def cmd_plot(a: argparse.Namespace) -> int:
    """`cifarkit plot`: overlay the curves of runs and logs."""
    from cifarkit.analysis.curves import plot_runs

    out = plot_runs(a.logs, a.out, a.keys, a.smooth, iters_per_epoch=a.iters_per_epoch)
    print(f"wrote {out}")
    return 0


def cmd_analyze(a: argparse.Namespace) -> int:
    """`cifarkit analyze`: confusion matrix, per-class metrics and calibration of a checkpoint."""
    from cifarkit.analysis.analyze import analyze
    from cifarkit.infer.inference import checkpoint_label, describe

    m = analyze(a.checkpoint, a.out, data=a.data, split=a.split, device=a.device, tta=a.tta, overwrite=a.overwrite,
                logit_adjust=a.logit_adjust, precision=a.precision)
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


def cmd_robustness(a: argparse.Namespace) -> int:
    """`cifarkit robustness`: the CIFAR-10-C table of a checkpoint (`analysis.robustness`)."""
    from pathlib import Path

    from cifarkit.analysis.robustness import TITLES, robustness
    from cifarkit.infer.inference import checkpoint_label, describe

    out = a.out or str(Path(a.checkpoint).parent / "robustness")
    r = robustness(a.checkpoint, out, data=a.data, split=a.split, corruptions=a.corruptions, severities=a.severities,
                   extra=a.extra, baseline=a.baseline, cifar10c=a.cifar10c, tta=a.tta, precision=a.precision,
                   device=a.device, seed=a.seed, overwrite=a.overwrite, limit=a.limit)
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


def cmd_calibrate(a: argparse.Namespace) -> int:
    """`cifarkit calibrate`: temperature scaling into a new checkpoint (`infer.calibration`) and its
    reliability figure (`analysis.calibration_plot`)."""
    from cifarkit.analysis.calibration_plot import calibrate_with_figure

    r = calibrate_with_figure(a.checkpoint, a.out, data=a.data, split=a.split, allow_test=a.allow_test,
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


def cmd_report(a: argparse.Namespace) -> int:
    """`cifarkit report`: one self-contained HTML report of a run."""
    from cifarkit.analysis.report import write_report

    out = write_report(a.run_dir, a.out, data=a.data, precision=a.precision)
    print(f"wrote {out}")
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    """`cifarkit data stats`: class balance, mean/std, sizes and duplicates."""
    from cifarkit.data.stats import dataset_stats, format_stats

    s = dataset_stats(a.path, a.out, a.imbalance_ratio)
    print(json_line(s) if a.json else format_stats(s))
    return 1 if s["unreadable"] else 0


def cmd_audit(a: argparse.Namespace) -> int:
    """`cifarkit data audit`: near-duplicates, leakage, label issues and outliers (`audit.audit`)."""
    from cifarkit.audit.audit import audit

    # --json: stdout carries the JSON alone; the folds' progress lines (and their runs') go to stderr
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        s = audit(a.path, a.out, splits=a.splits, folds=a.folds, recipe=a.recipe, overrides=a.set,
                  near_threshold=a.near_threshold, seed=a.seed, device=a.device, overwrite=a.overwrite,
                  write_manifest=a.write_manifest, drop=a.drop, relabel=a.relabel)
    if a.json:
        print(json_line(s))
        return 0
    c = s["counts"]
    splits = ", ".join(f"{k or 'no split'} {v:,}" for k, v in s["splits"].items())
    print(f"audited {sum(s['splits'].values()):,} images ({splits}) "
          f"with {s['folds']} folds of {s['recipe']} ({s['fold_epochs']:.3g} epochs each, out-of-sample top-1 "
          f"{s['oos_top1']:.2f}%) in {s['seconds']['total']:.0f} s on {s['cpu_kind']} ({s['precision']})")
    for k, v in c["duplicate_pairs"].items():
        print(f"  duplicate pairs {k or 'within the data'}: {v['exact']} exact, {v['near']} near")
    for k, v in c["leaked"].items():
        if v:
            print(f"  {k}: {v} images with a copy in another split")
    print("  label issues: " + ", ".join(f"{k or 'all'} {v}" for k, v in c["label_issues"].items()))
    print("  outliers: " + ", ".join(f"{k or 'all'} {v}" for k, v in c["outliers"].items()))
    m = s.get("manifest")
    if m:
        per = "; ".join(f"{k or 'all'}: kept {v['kept']:,}, dropped {v['dropped']}, relabelled {v['relabelled']}"
                        for k, v in m["splits"].items())
        print(f"wrote {m['path']} ({per}); every change is listed in {m['changes']}")
    print(f"wrote {a.out}/ (duplicates.csv, label_issues.csv, outliers.csv, audit.html, audit.json, folds/)")
    return 0


def add_commands(sub, data_sub=None) -> None:
    """Add plot, analyze and report to `sub`, and stats to the `data` subparsers `data_sub`."""
    from cifarkit.cli_use import add_logit_adjust_option, add_precision_option, add_tta_option, seed_int

    p = sub.add_parser("plot", help="loss / accuracy / lr curves from runs or MMCls/MMEngine logs")
    p.add_argument("logs", nargs="+", help="log.jsonl, *.log.json, scalars.json or run directories")
    p.add_argument("--keys", nargs="+", default=["loss", "top1", "top5", "lr"])
    p.add_argument("--out", default="curves.png")
    p.add_argument("--smooth", type=int, default=0, help="moving-average window [records] (0 = auto)")
    p.add_argument("--iters-per-epoch", type=int, default=None,
                   help="MMCls 0.x logs: training iterations per epoch, when the log's header cannot tell")
    p.set_defaults(fn=cmd_plot)

    z = sub.add_parser("analyze", help="confusion matrix, per-class metrics, calibration, errors")
    z.add_argument("checkpoint")
    z.add_argument("--data", default=None)
    z.add_argument("--split", default=None)
    z.add_argument("--out", default="analysis", help="output folder (new or empty)")
    z.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    add_tta_option(z)
    add_logit_adjust_option(z)
    add_precision_option(z)
    add_device_option(z)
    z.set_defaults(fn=cmd_analyze)

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
    add_tta_option(c)
    add_precision_option(c)
    add_device_option(c)
    c.set_defaults(fn=cmd_calibrate)

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

    r = sub.add_parser("report", help="one self-contained HTML report of a run")
    r.add_argument("run_dir")
    r.add_argument("--out", default=None, help="default: RUN_DIR/report.html")
    r.add_argument("--data", default=None, help="dataset for the analysis (default: the run's)")
    add_precision_option(r)
    r.set_defaults(fn=cmd_report)

    if data_sub is not None:
        s = data_sub.add_parser("stats", help="class balance, mean/std, sizes, duplicates, unreadable files")
        s.add_argument("path")
        s.add_argument("--out", default=None, help="folder for stats.json and class_balance.png")
        s.add_argument("--imbalance-ratio", type=float, default=0.0, metavar="R",
                       help="describe the train split cut to the long-tail profile a run with data.imbalance_ratio "
                            "R trains on (0 = as it is)")
        s.add_argument("--json", action="store_true")
        s.set_defaults(fn=cmd_stats)

        au = data_sub.add_parser("audit", help="near-duplicates, train/test leakage, probable label errors and "
                                 "outliers (K-fold cross-validation + confident learning)")
        au.add_argument("path")
        au.add_argument("--out", required=True, help="output folder (new or empty)")
        au.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                        help="the splits to audit together (default: all the dataset has)")
        au.add_argument("--folds", type=int, default=5, help="K of the cross-validation (default 5)")
        au.add_argument("--recipe", default="fast", help="recipe the folds train (shipped name or YAML; default fast; "
                        "a fifth of its epochs in batches of at most 1000 unless --set train.epochs / batch_size)")
        au.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
        au.add_argument("--near-threshold", type=float, default=None, metavar="SIM",
                        help="pixel similarity (a correlation, 1 = the same picture) from which two images are "
                             "near-duplicates (default 0.95)")
        au.add_argument("--seed", type=seed_int, default=0, help="fold assignment and the folds' seeds (default 0)")
        au.add_argument("--write-manifest", default=None, metavar="CSV",
                        help="also write a cleaned manifest (what goes: --drop, --relabel; each change in "
                             "OUT/changes.csv)")
        au.add_argument("--drop", nargs="+", default=None, metavar="WHAT",
                        help="with --write-manifest: duplicates, labels, outliers (comma-separated; default "
                             "duplicates)")
        au.add_argument("--relabel", action="store_true",
                        help="with --write-manifest: give the label issues their suggested label")
        add_device_option(au, "the recipe's")
        au.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (and replace the manifest)")
        au.add_argument("--json", action="store_true", help="print audit.json's content")
        au.set_defaults(fn=cmd_audit)
