"""The `cifarkit data` commands, all seven: fetch, inspect, show, export, check, stats and audit.

Each handler parses its arguments into one library call (keywords only) and prints the result.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from cifarkit.cli.options import add_device_option, json_line, seed_int


def cmd_data_fetch(a: argparse.Namespace) -> int:
    """`cifarkit data fetch`: download and verify a dataset archive."""
    from cifarkit.data.fetch import fetch

    path = fetch(name=a.name, root=a.root, base_url=a.url)
    print(f"{path}: ready (md5 verified)")
    return 0


def cmd_data_inspect(a: argparse.Namespace) -> int:
    """`cifarkit data inspect`: describe batches, folders or manifests without decoding."""
    from cifarkit.data.inspect import format_inspect, inspect_path

    info = inspect_path(path=a.path)
    print(json_line(info) if a.json else format_inspect(info))
    return 0


def cmd_data_show(a: argparse.Namespace) -> int:
    """`cifarkit data show`: draw a sample grid."""
    from cifarkit.data.show import show_grid
    from cifarkit.data.sources import load_dataset
    from cifarkit.safepath import check_apart, output_file

    check_apart(out=a.out, inputs=[a.path])  # a grid written among the images would become one of them
    output_file(path=a.out, overwrite=a.overwrite)  # before the data is read; an existing file needs --overwrite
    ds = load_dataset(path=a.path, split=a.split)
    out = show_grid(ds=ds, out=a.out, first=a.first, per_class=a.per_class)
    print(f"wrote {out}")
    return 0


def cmd_data_export(a: argparse.Namespace) -> int:
    """`cifarkit data export`: write image folders and manifest.csv."""
    from tqdm import tqdm

    from cifarkit.data.export import check_export_out, export_dataset
    from cifarkit.data.folder import manifest_splits, splits_of
    from cifarkit.data.sources import describe_kind, load_dataset
    from cifarkit.data.splits import check_imbalance_ratio, long_tail_train

    check_imbalance_ratio(ratio=a.imbalance_ratio, what="--imbalance-ratio")  # before any reading
    # the output place too: not the data, not another's files
    check_export_out(out=a.out, overwrite=a.overwrite, inputs=[a.path])
    kind = describe_kind(path=a.path)
    if kind == "cifar":
        splits: list[str | None] = ["train", "test"]
    elif kind == "folder":
        splits = splits_of(root=a.path) or [None]  # a plain class folder is one split, "all"
    else:
        splits = manifest_splits(csv_path=a.path) or [None]  # "" is a split too: its rows are not dropped
    data = {"all" if s is None else s: load_dataset(path=a.path, split=s) for s in splits}
    # what data.imbalance_ratio R trains on
    data = long_tail_train(splits=data, ratio=a.imbalance_ratio, path=a.path)
    with tqdm(total=sum(len(d) for d in data.values()), unit="img", disable=None) as bar:
        res = export_dataset(splits=data, out=a.out, fmt=a.format, quality=a.quality, workers=a.workers,
                             overwrite=a.overwrite, progress=bar.update, png_level=6 if a.compress else 0,
                             inputs=[a.path])
    counts = ", ".join(f"{k} {v:,}" for k, v in res.counts.items())
    print(f"wrote {res.out} ({counts}) and {res.manifest}")
    return 0


def cmd_data_check(a: argparse.Namespace) -> int:
    """`cifarkit data check`: decode every image and report the unreadable ones; exit 1 if any."""
    from cifarkit.data.folder import check_files, splits_of
    from cifarkit.data.sources import describe_kind, list_files

    kind = describe_kind(path=a.path)
    if kind == "cifar":
        from cifarkit.data.inspect import inspect_path

        info = inspect_path(path=a.path)  # reading validates every batch
        print(f"{a.path}: OK, {info['total']:,} images in {len(info['batches'])} batches")
        return 0
    splits = ([a.split] if a.split else splits_of(root=a.path) or [None]) if kind == "folder" else [a.split]
    ok = True
    for s in splits:
        rep = check_files(files=list_files(path=a.path, split=s))
        label = f"{a.path}" + (f" [{s}]" if s else "")
        print(f"{label}: {rep.images:,} readable images, sizes "
              + ", ".join(f"{k}:{v}" for k, v in list(rep.sizes.items())[:8]))
        for _path, err in rep.unreadable:
            print(f"  unreadable: {err}")
        for c in rep.empty_classes:
            print(f"  empty class: {c}")
        if rep.non_images:
            print(f"  {len(rep.non_images)} non-image files ignored")
        if rep.outside:
            print(f"  {len(rep.outside)} links leading out of the folder ignored, e.g. {rep.outside[0]}")
        ok &= rep.ok
    if not ok:
        print("error: some images or classes are unusable (listed above); fix or remove them", file=sys.stderr)
    return 0 if ok else 1


def cmd_stats(a: argparse.Namespace) -> int:
    """`cifarkit data stats`: class balance, mean/std, sizes and duplicates."""
    from cifarkit.data.stats import dataset_stats, format_stats

    s = dataset_stats(path=a.path, out=a.out, imbalance_ratio=a.imbalance_ratio)
    print(json_line(s) if a.json else format_stats(s))
    return 1 if s["unreadable"] else 0


def cmd_audit(a: argparse.Namespace) -> int:
    """`cifarkit data audit`: near-duplicates, leakage, label issues and outliers (`audit.audit`)."""
    from cifarkit.audit.audit import audit

    # --json: stdout carries the JSON alone; the folds' progress lines (and their runs') go to stderr
    with contextlib.redirect_stdout(sys.stderr) if a.json else contextlib.nullcontext():
        s = audit(data=a.path, out=a.out, splits=a.splits, folds=a.folds, recipe=a.recipe, overrides=a.set,
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


def add_commands(sub) -> None:
    """Add `data` and its seven subcommands to the subparsers `sub`."""
    d = sub.add_parser("data", help="fetch, inspect, show, export and check datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download the official CIFAR archive (md5 verified)")
    f.add_argument("name", choices=["cifar10", "cifar100"])
    f.add_argument("--root", default="data", help="folder to download into (default: data)")
    f.add_argument("--url", default=None, help="mirror base URL (default: the dataset's home page)")
    f.set_defaults(fn=cmd_data_fetch)
    i = dsub.add_parser("inspect", help="batch files, shapes, class counts")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_data_inspect)
    s = dsub.add_parser("show", help="save a grid of sample images with class names")
    s.add_argument("path")
    s.add_argument("--out", required=True, help="image file: .png, .jpg, .pdf or .svg")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--split", default="train")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--first", type=int, default=None, help="the first N images (default 20)")
    g.add_argument("--per-class", type=int, default=None, help="N images of each class, a row per class")
    s.set_defaults(fn=cmd_data_show)
    e = dsub.add_parser("export", help="write split/<class>/<file> images and manifest.csv")
    e.add_argument("path")
    e.add_argument("out")
    e.add_argument("--format", default="png", choices=["png", "jpg"])
    e.add_argument("--quality", type=int, default=95, help="JPEG quality 1..100")
    e.add_argument("--workers", type=int, default=None)
    e.add_argument("--overwrite", action="store_true",
                   help="replace OUT when it holds an earlier export and nothing else")
    e.add_argument("--compress", action="store_true", help="deflate PNGs (~9%% smaller for CIFAR, ~3x slower)")
    e.add_argument("--imbalance-ratio", type=float, default=0.0, metavar="R",
                   help="write the train split cut to the long-tail profile of data.imbalance_ratio R (Cao et al. "
                        "2019: the first floor(n_max * R^(-i/(C-1))) images of class i; test untouched)")
    e.set_defaults(fn=cmd_data_export)
    c = dsub.add_parser("check", help="decode every image; exit 1 if anything is unusable")
    c.add_argument("path")
    c.add_argument("--split", default=None)
    c.set_defaults(fn=cmd_data_check)
    s = dsub.add_parser("stats", help="class balance, mean/std, sizes, duplicates, unreadable files")
    s.add_argument("path")
    s.add_argument("--out", default=None, help="folder for stats.json and class_balance.png")
    s.add_argument("--imbalance-ratio", type=float, default=0.0, metavar="R",
                   help="describe the train split cut to the long-tail profile a run with data.imbalance_ratio "
                        "R trains on (0 = as it is)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_stats)

    au = dsub.add_parser("audit", help="near-duplicates, train/test leakage, probable label errors and "
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
