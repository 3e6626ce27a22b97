"""The commands that make runs: models, train, tune, lr-find and configs.

Each handler parses its arguments into one library call (keywords only) and prints the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifarkit.cli.options import add_device_option, diverge_factor, seed_int
from cifarkit.errors import CifarkitError


def cmd_models(a: argparse.Namespace) -> int:
    """`cifarkit models`: each registered model's parameters, MACs at its input size and description.

    With --all every torchvision classifier too, listed at once by name; their parameters and MACs
    need a forward pass each (minutes for all), so they are counted with --macs only. Every count
    is cached (`models.model_stats`). --input-size overrides the size for the MACs."""
    from tqdm import tqdm

    from cifarkit.models import get_entry, list_models, model_stats

    names = list_models(include_torchvision=a.all)
    print(f"{'name':<22} {'params':>10} {'MACs':>10} {'input':>6}  description")
    rows = tqdm(names, desc="counting parameters and MACs", unit="model", leave=False) if a.macs else names
    uncounted = 0
    for n in rows:
        entry = get_entry(n)
        size = a.input_size or (entry.input_size if entry else 224)
        stats = model_stats(name=n, num_classes=a.num_classes, input_size=size, compute=entry is not None or a.macs)
        desc = entry.description if entry else "torchvision"
        if stats is None:
            uncounted += 1
            params = macs = "-"
        else:
            params, macs = f"{stats[0] / 1e6:.2f}M", f"{stats[1] / 1e6:.1f}M"
        line = f"{n:<22} {params:>10} {macs:>10} {size:>6}  {desc}"
        if a.macs:
            tqdm.write(line)
        else:
            print(line)
    if uncounted:
        print(f"({uncounted} torchvision models listed by name only: --macs counts their parameters and MACs, "
              "a forward pass each, then caches them)")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    """`cifarkit train`: load CONFIG (a file or a shipped recipe) with its --set overrides and `fit` it.

    Curves and the report are written after the run when `log.plots` is on; --list-keys prints
    every config key instead of training.

    Raises:
        ConfigError: no CONFIG was given (and no --list-keys), or the config is not valid.
    """
    from cifarkit.analysis.after_run import plot_writers, start_writers
    from cifarkit.config import describe_keys, load_config
    from cifarkit.engine.train import fit

    if a.list_keys:
        print(describe_keys())
        return 0
    if a.config is None:
        from cifarkit.errors import ConfigError

        raise ConfigError("cifarkit train needs a CONFIG file or a shipped recipe name (`cifarkit configs` "
                          "lists them), or --list-keys")
    cfg = load_config(path=a.config, overrides=a.set)  # a file or a shipped recipe's name
    resume = True if a.resume == "" else a.resume
    fit(cfg=cfg, work_dir=a.work_dir, resume=resume, device=a.device, force=a.force,
        after_run=plot_writers(plots=cfg.log.plots, calibrate=cfg.train.calibrate),
        before_run=start_writers(plots=cfg.log.plots))
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    """`cifarkit tune`: check CONFIG and the space, then run trials until the study has --trials."""
    from cifarkit.config import load_config
    from cifarkit.safepath import safe_component
    from cifarkit.tune import format_result, load_space, tune

    cfg = load_config(path=a.config, overrides=a.set)
    space = load_space(path=a.space, base=cfg)  # every key and range checked before any trial
    out = a.out or Path("work_dirs") / f"tune-{safe_component(cfg.name)}"
    r = tune(base=cfg, space=space, trials=a.trials, out=out, storage=a.storage, study=a.study, pruner=a.pruner,
             metric=a.metric, seed=a.seed, heartbeat=a.heartbeat, device=a.device)
    print(format_result(r=r, metric=a.metric))
    return 0


def cmd_lr_find(a: argparse.Namespace) -> int:
    """`cifarkit lr-find`: run the LR range test on CONFIG, print the suggested lr and how to train with it."""
    from cifarkit.analysis.lr_find_plot import plot_lr_find
    from cifarkit.config import load_config
    from cifarkit.engine.lr_find import lr_find

    cfg = load_config(path=a.config, overrides=a.set)
    r = lr_find(cfg=cfg, out_dir=a.out, start_lr=a.start_lr, end_lr=a.end_lr, steps=a.steps, diverge=a.diverge,
                device=a.device, overwrite=a.overwrite)
    plot_lr_find(res=r)
    print(f"swept {r.key} over {len(r.lrs)} steps ({r.lrs[0]:.2g} .. {r.lrs[-1]:.2g}); wrote {r.csv} and {r.png}")
    print(f"suggested {r.key}: valley {r.valley:.3g}, steepest descent {r.steepest:.3g}")
    print(f"use: cifarkit train {a.config} {' '.join('--set ' + s for s in a.set)} {r.set_line}".replace("  ", " "))
    return 0


def cmd_configs(a: argparse.Namespace) -> int:
    """`cifarkit configs`: list the shipped recipes with their descriptions, or print one (`show NAME`).

    Raises:
        CifarkitError: `show` without a NAME, or an action other than `list` or `show`.
    """
    from cifarkit.recipes import describe, resolve_config, shipped_configs

    if a.action == "show":
        if not a.name:
            raise CifarkitError("cifarkit configs show needs a recipe NAME (`cifarkit configs` lists them)")
        sys.stdout.write(resolve_config(name_or_path=a.name).read_text(encoding="utf-8"))
        return 0
    if a.action != "list":
        raise CifarkitError(f"cifarkit configs {a.action!r}: use `cifarkit configs` or `cifarkit configs show NAME`")
    shipped = shipped_configs()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        print(f"{name:<{width}}  {describe(path)}")
    print("\nrun one: cifarkit train NAME [--set key=value]; copy one: cifarkit configs show NAME > my.yaml")
    return 0


def add_models(sub) -> None:
    """Add `models` to the subparsers `sub`."""
    m = sub.add_parser("models", help="list registered models with parameters and MACs")
    m.add_argument("--input-size", type=int, default=None, help="input size for MACs [px]")
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--all", action="store_true", help="also every torchvision classifier (by name)")
    m.add_argument("--macs", action="store_true",
                   help="count parameters and MACs of every listed model (a forward pass each; cached)")
    m.set_defaults(fn=cmd_models)


def add_train(sub) -> None:
    """Add `train` to the subparsers `sub`."""
    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?", help="a YAML file, or a shipped recipe's name (see `cifarkit configs`)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--work-dir", default=None, help="run directory (default work_dirs/<config name>)")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from CKPT, or the newest valid checkpoint of the run directory")
    t.add_argument("--force", action="store_true", help="start afresh in a run directory that holds an earlier "
                   "run, moving its files into RUN_DIR/.replaced-<UTC time>/ (nothing is deleted)")
    add_device_option(t, "train.device")
    t.add_argument("--list-keys", action="store_true", help="print every config key with default and help")
    t.set_defaults(fn=cmd_train)


def add_tune(sub) -> None:
    """Add `tune` to the subparsers `sub`."""
    u = sub.add_parser("tune", help="hyperparameter search (Optuna TPE, ASHA pruning): one run per trial, shared "
                       "storage for several workers, best.yaml that `cifarkit train` reproduces")
    u.add_argument("config", help="a YAML file, or a shipped recipe's name: what every trial starts from")
    u.add_argument("--space", required=True, metavar="SPACE.yaml",
                   help="config keys -> distributions: {uniform: [lo, hi]}, {log_uniform: [lo, hi]}, "
                        "{int: [lo, hi], step: 1}, {choice: [a, b]}")
    u.add_argument("--trials", type=int, required=True, metavar="N",
                   help="total trials of the study, over every worker sharing it")
    u.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    u.add_argument("--out", default=None, help="the search's folder (default work_dirs/tune-<config name>)")
    u.add_argument("--storage", default=None, metavar="URL|FILE",
                   help="where the study lives, shared by workers: an RDB URL (postgresql://, mysql://, "
                        "sqlite:///) or a journal file (default OUT/study.journal)")
    u.add_argument("--study", default=None, help="study name (default: the config's name)")
    u.add_argument("--pruner", default="asha", choices=["asha", "median", "none"],
                   help="stop hopeless trials from their per-epoch evaluation (default asha)")
    u.add_argument("--metric", default="top1", choices=["top1", "loss"],
                   help="what a trial is scored by: its final evaluation's top1 (maximised) or loss (minimised)")
    u.add_argument("--seed", type=seed_int, default=None, help="seed of the TPE sampler (default: fresh per worker)")
    u.add_argument("--heartbeat", type=float, default=30.0, metavar="S",
                   help="seconds between a running trial's liveness stamps; a trial silent for 3x this is "
                        "marked failed and run again")
    add_device_option(u, "train.device")
    u.set_defaults(fn=cmd_tune)


def add_lr_find(sub) -> None:
    """Add `lr-find` to the subparsers `sub`."""
    f = sub.add_parser("lr-find", help="LR range test: sweep the lr exponentially, suggest one (no run directory)")
    f.add_argument("config", help="a YAML file, or a shipped recipe's name")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    f.add_argument("--out", default="lr_find", help="folder for lr_find.png and lr_find.csv (new or empty)")
    f.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    f.add_argument("--steps", type=int, default=200, help="sweep length [iterations]")
    f.add_argument("--start-lr", type=float, default=1e-6)
    f.add_argument("--end-lr", type=float, default=10.0)
    f.add_argument("--diverge", type=diverge_factor, default=4.0,
                   help="stop when the smoothed loss exceeds this x its minimum (above 1)")
    add_device_option(f, "train.device")
    f.set_defaults(fn=cmd_lr_find)


def add_configs(sub) -> None:
    """Add `configs` to the subparsers `sub`."""
    c = sub.add_parser("configs", help="list the shipped recipes, or print one (configs show NAME)")
    c.add_argument("action", nargs="?", default="list", help="list (default) | show")
    c.add_argument("name", nargs="?", help="recipe name for show, e.g. fast")
    c.set_defaults(fn=cmd_configs)
