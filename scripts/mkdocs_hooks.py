"""MkDocs hooks: pages generated at build time, so they cannot drift from the code.

A page asks for generated text with a marker comment on its own line:
- `<!-- generated: cli -->`: the CLI reference, from `cifarkit.cli.build_parser()` (every
  subcommand's `--help`, exactly as the command prints it);
- `<!-- generated: recipes -->`: the shipped recipes (from `cifarkit.recipes`) and the measured
  numbers from `benchmarks/results/*.json`;
- `<!-- generated: api-index -->`: the top-level `cifarkit` API (from `cifarkit._LAZY`), each
  name linked to its reference entry.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

HELP_COLUMNS = "100"  # argparse wraps at $COLUMNS; fixed so the page does not depend on the terminal


def _this_checkout() -> None:
    """Import `cifarkit` from this checkout's src/, not from wherever the venv installed it.

    Done at generation time, not at import: MkDocs drops `sys.path[0]` after loading a hook file.
    """
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    import cifarkit

    if Path(cifarkit.__file__).resolve().parent != SRC / "cifarkit":
        raise RuntimeError(f"cifarkit was imported from {cifarkit.__file__}, not {SRC}; the generated "
                           "pages would describe another copy")


# ---- CLI reference --------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each direct subcommand of `parser`, in definition order."""
    out = []
    for action in parser._actions:  # argparse has no public API to walk subcommands
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def cli_reference() -> str:
    """Every command's `--help`, depth first, as Markdown sections."""
    _this_checkout()
    from cifarkit.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parts: list[str] = []

        def walk(prog: str, help_line: str, parser: argparse.ArgumentParser, depth: int) -> None:
            parts.append(f"{'#' * min(depth, 4)} `{prog}`\n")
            if help_line:
                parts.append(help_line[0].upper() + help_line[1:] + ".\n")
            parts.append("```text\n" + parser.format_help().rstrip() + "\n```\n")
            for name, line, sub in _subparsers(parser):
                walk(f"{prog} {name}", line, sub, depth + 1)

        walk("cifarkit", "", build_parser(), 2)
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


# ---- recipes and measured numbers -----------------------------------------------------------------
def _load(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def _machine(m: dict) -> str:
    """Where a figure was measured: CPU model and kind (AMX / AVX512-BF16 / AVX2), precision, cores, GPU."""
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    kind = f" ({m['cpu_kind']}, {m['precision']})" if m.get("cpu_kind") and m.get("precision") else ""
    return f"{m['cpu']}{kind}, {m['cores']} cores{gpu}; torch {m['torch']}; {m['date'][:10]}"


def precision_section() -> list[str]:
    """The speed recipe per CPU kind and on a GPU: precision `auto` chose, wall time, top-1."""
    rows = ["| machine | CPU kind | precision (`auto`) | `fast` wall time per run | TTA top-1 [%] |",
            "| --- | --- | --- | --- | --- |"]
    for name in ("train_speed.json", "train_speed_avx2.json"):
        path = ROOT / "benchmarks" / "results" / name
        if not path.is_file():
            continue
        ts = json.loads(path.read_text())
        m = ts["machine"]
        rows.append(f"| {m['cpu']}, {m['cores']} cores | {m['cpu_kind']} | {ts.get('precision', m.get('precision'))} | "
                    f"{ts['mean_wall_s'] / 60:.1f} min | {ts['top1_tta_mean']:.2f} ({len(ts['runs'])} seed(s)) |")
    gpu = _load("gpu_speed.json")
    rows.append(f"| {gpu['machine']['gpu']} | GPU | bf16 | {gpu['fast']['timed_mean_s']:.2f} s (airbench's timing) | "
                f"{gpu['fast']['top1_tta_mean']:.2f} ({len(gpu['fast']['runs'])} seeds) |")
    return ["## The speed recipe per CPU kind\n",
            "`train.amp: auto` trains in bf16 only where the CPU has it in hardware (AMX, AVX512-BF16) and in "
            "fp32 elsewhere. Each row is `python benchmarks/train_speed.py` on that machine (the GPU row: "
            "`benchmarks/gpu_speed.py`); the recipe reaches its final top-1 at its one, final evaluation, so the "
            "wall time is also its time to 90%.\n", "\n".join(rows) + "\n"]


def recipes_page() -> str:
    """The shipped recipes and a table of every benchmark result, numbers read from the JSON files."""
    _this_checkout()
    from cifarkit.recipes import shipped_configs

    lines = ["| recipe | file | what it is (the file's leading comment) |", "| --- | --- | --- |"]
    for name, path in shipped_configs().items():
        head = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            head.append(line.lstrip("# ").strip())
        lines.append(f"| `{name}` | `src/cifarkit/configs/{path.name}` | {' '.join(head)} |")
    out = ["## Shipped recipes\n", "\n".join(lines) + "\n"]

    tp = _load("train_throughput.json")
    rows = ["| config | model | batch | precision | images/s |", "| --- | --- | --- | --- | --- |"]
    for name, r in tp["results"].items():
        rows.append(f"| `{name}` | {r['model']} | {r['batch_size']} | {r['amp']} | {r['img_per_s']:,.0f} |")
    out += ["## Training throughput (CPU)\n",
            f"`python benchmarks/train_throughput.py` on {_machine(tp['machine'])}.\n", "\n".join(rows) + "\n"]

    out += precision_section()
    ts = _load("train_speed.json")
    accs = ", ".join(f"{r['top1_tta']:.2f}" for r in ts["runs"])
    out += ["## The speed recipe end to end (CPU)\n",
            f"`python benchmarks/train_speed.py` on {_machine(ts['machine'])}: `fast`, {len(ts['runs'])} seeds.\n",
            "| measure | value |\n| --- | --- |\n"
            f"| TTA top-1 [%] | **{ts['top1_tta_mean']:.2f} ± {ts['top1_tta_sd']:.2f}** ({accs}) |\n"
            f"| wall time per run [s] | {ts['mean_wall_s']:.0f} (mean) |\n"
            f"| plain eager airbench loop, 9.9 epochs [s] | {ts['plain_9_9_epochs_s']:.0f} |\n"
            f"| ratio to it | {ts['ratio']:.2f} (with the held allocator: {ts['ratio_vs_held']:.2f}) |\n"]

    gpu = _load("gpu_speed.json")
    fast = gpu["fast"]
    gaccs = ", ".join(f"{r['top1_tta']:.2f}" for r in fast["runs"])
    times = [r["timed_s"] for r in fast["runs"]]
    mn = _load("gpu_speed_mnv2.json")["mobilenetv2_throughput"]
    out += ["## On one GPU\n",
            f"`python benchmarks/gpu_speed.py --data DIR` on {_machine(gpu['machine'])}.\n",
            "| measure | value |\n| --- | --- |\n"
            f"| `fast`, timed as airbench times itself [s] | **{fast['timed_mean_s']:.2f}** mean "
            f"({min(times):.2f}-{max(times):.2f}, {len(times)} seeds) |\n"
            f"| `fast`, TTA top-1 [%] | **{fast['top1_tta_mean']:.2f} ± {fast['top1_tta_sd']:.2f}** ({gaccs}) |\n"
            f"| MobileNetV2 tutorial recipe, images/s | **{mn['cifarkit_img_s']:,.0f}** vs the tutorial's "
            f"pipeline {mn['tutorial_pipeline_img_s']['2']:,.0f} with 2 workers: "
            f"**{mn['ratio_vs_2_workers']:.2f}x** ({mn['ratio_vs_8_workers']:.2f}x against 8 workers) |\n"]
    for v, s in mn.get("cifarkit_variants_img_s", {}).items():
        if v != "default":
            out.append(f"With `--set {v}`: {s:,.0f} images/s.\n")

    ex, pr = _load("export_speed.json"), _load("predict_speed.json")
    out += ["## Data and prediction (CPU)\n",
            "| benchmark | cifarkit | plain loop | ratio |\n| --- | --- | --- | --- |\n"
            f"| export {ex['images']:,} images to PNG (`benchmarks/export_speed.py`) | "
            f"{ex['cifarkit_export_s']:.1f} s | {ex['plain_loop_s']:.1f} s | **{ex['ratio']:.1f}x** |\n"
            f"| predict {pr['images']:,} PNGs (`benchmarks/predict_speed.py`) | "
            f"{pr['images'] / pr['cifarkit_s']:,.0f} img/s | {pr['images'] / pr['plain_s']:,.0f} img/s | "
            f"**{pr['ratio']:.1f}x** ({pr['agreement']:.1%} same top-1) |\n",
            f"Both on {_machine(ex['machine'])}.\n"]
    out += long_tail_section(_load("long_tail.json"))
    return "\n".join(out)


def _mean_sd(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.2f} ± {sd:.2f}"


def long_tail_section(lt: dict) -> list[str]:
    """The CIFAR-10-LT table of `benchmarks/long_tail.py`'s results file."""
    rows = ["| method | top-1 [%] | balanced [%] | many-shot [%] | medium-shot [%] | train min / seed |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, runs in lt["results"].items():
        cols = [_mean_sd([r[k] for r in runs]) for k in ("top1", "balanced_accuracy", "many_shot", "medium_shot",
                                                          "train_minutes")]
        bold = name.startswith("recipe")
        rows.append(f"| {name} | " + " | ".join(f"**{c}**" if bold and i == 0 else c for i, c in enumerate(cols))
                    + " |")
    return ["## Long-tailed CIFAR-10 (CPU)\n",
            f"`python benchmarks/long_tail.py --data DIR --seeds {' '.join(map(str, lt['seeds']))}` on "
            f"{_machine(lt['machine'])}: CIFAR-10-LT, imbalance ratio 100 (12,406 training images, the "
            f"balanced 10,000-image test split), every method the `lt100` recipe with only its imbalance "
            f"handling changed, {lt['epochs']:g} epochs, mean ± sd over {len(lt['seeds'])} seeds. No class has "
            "fewer than 20 images at R = 100, so there is no few-shot column. Published anchors (clean "
            "images, ResNet-32, 200 epochs): cross-entropy 70.4%, LDAM-DRW 77.0% (Cao et al. 2019).\n",
            "\n".join(rows) + "\n"]


# ---- API index --------------------------------------------------------------------------------------
def api_index() -> str:
    """A table of `cifarkit`'s top-level names, each linked to its reference entry and summarised."""
    import importlib

    _this_checkout()
    import cifarkit

    rows = ["| name | defined in | what it does |", "| --- | --- | --- |"]
    for name, module in cifarkit._LAZY.items():
        doc = (getattr(importlib.import_module(module), name).__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else "(no docstring yet)"
        rows.append(f"| [`cifarkit.{name}`][{module}.{name}] | `{module}` | {summary} |")
    return "\n".join(rows) + "\n"


GENERATORS = {"cli": cli_reference, "recipes": recipes_page, "api-index": api_index}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each `<!-- generated: NAME -->` line with NAME's generated Markdown."""
    for name, make in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
