"""CLI handlers for models, train, eval and demo: parse, call the library, print."""

from __future__ import annotations

import argparse
import json


def cmd_models(a: argparse.Namespace) -> int:
    from cifarkit.models import count_macs, count_params, create_model, get_entry, list_models

    names = list_models(include_torchvision=a.all)
    print(f"{'name':<22} {'params':>10} {'MACs':>10} {'input':>6}  description")
    for n in names:
        entry = get_entry(n)
        size = a.input_size or (entry.input_size if entry else 224)
        m = create_model(n, a.num_classes)
        desc = entry.description if entry else "torchvision"
        print(f"{n:<22} {count_params(m) / 1e6:>9.2f}M {count_macs(m, size) / 1e6:>9.1f}M {size:>6}  {desc}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from cifarkit.config import describe_keys, load_config
    from cifarkit.engine.train import fit

    if a.list_keys:
        print(describe_keys())
        return 0
    if a.config is None:
        from cifarkit.errors import ConfigError

        raise ConfigError("cifarkit train needs a CONFIG file (see configs/), or --list-keys")
    cfg = load_config(a.config, a.set)
    resume = True if a.resume == "" else a.resume
    fit(cfg, work_dir=a.work_dir, resume=resume, device=a.device, force=a.force)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from cifarkit.engine.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(a.checkpoint, a.data, a.split, "flip_translate" if a.tta else None, a.device)
    if a.json:
        print(json.dumps(m))
    else:
        print(f"{m['checkpoint']}  {m['split']} ({m['n']} images, tta {m['tta']}): top1 {m['top1']:.2f}  "
              f"top5 {m['top5']:.2f}  loss {m['loss']:.4f}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from cifarkit.demo import run_demo

    run_demo(a.out, epochs=a.epochs, quick=a.quick)
    return 0


def add_commands(sub) -> None:
    m = sub.add_parser("models", help="list registered models with parameters and MACs")
    m.add_argument("--input-size", type=int, default=None, help="input size for MACs [px]")
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--all", action="store_true", help="also every torchvision classifier")
    m.set_defaults(fn=cmd_models)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", nargs="?")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--work-dir", default=None, help="run directory (default work_dirs/<config name>)")
    t.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from CKPT, or the newest valid checkpoint of the run directory")
    t.add_argument("--force", action="store_true", help="start afresh in a run directory that holds an earlier "
                   "run, moving its files into RUN_DIR/.replaced-<UTC time>/ (nothing is deleted)")
    t.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: train.device)")
    t.add_argument("--list-keys", action="store_true", help="print every config key with default and help")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint (top-1, top-5, loss)")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="dataset path (default: the run's data.root)")
    e.add_argument("--split", default=None, help="split (default: the run's evaluation split)")
    e.add_argument("--tta", action="store_true", help="flip + translate test-time augmentation")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)

    d = sub.add_parser("demo", help="the whole workflow on the sample shipped with cifarkit")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--epochs", type=float, default=12)
    d.add_argument("--quick", action="store_true", help="tiny training, for tests")
    d.set_defaults(fn=cmd_demo)
