"""MkDocs hooks: pages generated at build time, so they cannot drift from the code.

A page asks for generated text with a marker comment on its own line:
- `<!-- generated: cli -->`: the CLI reference, from `cifarkit.cli.build_parser()` (every
  subcommand's `--help`, exactly as the command prints it);
- `<!-- generated: recipes -->`: the shipped recipes (from `cifarkit.recipes`) and the measured
  numbers from `benchmarks/results/*.json`;
- `<!-- generated: measured -->`: every other benchmark's numbers (CPU precision per CPU kind,
  `serve` under load, CIFAR-10-C robustness, the data audit, the hyperparameter search), read
  from `benchmarks/results/*.json` like the recipes' (a benchmark without a results file is left
  out);
- `<!-- generated: api-index -->`: the top-level `cifarkit` API (from `cifarkit._LAZY`), each
  name linked to its reference entry.

tests/test_docs.py checks that the generated numbers are the results files' numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


# ---- the other benchmarks ---------------------------------------------------------------------------
def _has(name: str) -> bool:
    return (ROOT / "benchmarks" / "results" / name).is_file()


def cpu_precision_section(name: str) -> list[str]:
    """`benchmarks/cpu_precision.py`'s table: images/s per model and mode, each variant as a ratio."""
    cp = _load(name)
    m = cp["machine"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in cp["rows"]:
        groups.setdefault((r["model"], r["mode"]), []).append(r)
    variants: list[str] = []
    for rows in groups.values():
        variants += [r["variant"] for r in rows if r["variant"] not in variants]
    head = "| model (batch) | mode | " + " | ".join(variants) + " |"
    out = [head, "|" + " --- |" * (2 + len(variants))]
    for (model, mode), rows in groups.items():
        by = {r["variant"]: r for r in rows}
        cells = []
        for v in variants:
            r = by.get(v)
            if r is None:
                cells.append("-")
            elif r["vs_baseline"] == 1.0 and v.startswith("baseline"):
                cells.append(f"{r['img_s']:,.1f} img/s, {r['gflops']:.0f} GFLOP/s ({r['peak_share']:.0%} of peak)")
            elif r["compiled"]:
                cells.append(f"x{r['vs_baseline']:.2f} (first step {r['first_step_s']:.0f} s)")
            else:
                cells.append(f"{r['img_s']:,.1f} img/s, x{r['vs_baseline']:.2f}" if v.startswith("auto")
                             else f"x{r['vs_baseline']:.2f}")
        out.append(f"| {model} ({rows[0]['batch']}) | {mode} | " + " | ".join(cells) + " |")
    return [f"## Precision and layout on one CPU kind: {cp['cpu_kind']}\n",
            f"`python benchmarks/cpu_precision.py` on {_machine(m)}, {cp['threads']} threads: images/s of one "
            "training step or inference batch after a warm-up step; each variant changes one thing and is "
            "given as a ratio to the first column. GFLOP/s as a share of the fp32 peak estimated from "
            f"the CPU ({cp['fp32_peak_gflops']:.0f} GFLOP/s: {cp['peak_note']}; a 2048^3 sgemm reached "
            f"{cp['sgemm_gflops']:.0f}, so shares above 100% mean the clock ran above the estimate).\n",
            "\n".join(out) + "\n"]


def serve_load_section() -> list[str]:
    """`benchmarks/serve_load.py`: requests/s and latency of `cifarkit serve`, batched vs one at a time."""
    sl = _load("serve_load.json")
    rows = ["| clients | mode | requests/s | p50 [ms] | p99 [ms] | errors |", "| --- | --- | --- | --- | --- | --- |"]
    for r in sl["rows"]:
        rows.append(f"| {r['clients']} | {r['mode']} | {r['rps']:,.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                    f"{r['errors']} |")
    return ["## `cifarkit serve` under load\n",
            f"`cd benchmarks && python serve_load.py --requests {sl['rows'][0]['requests']}` on "
            f"{_machine(sl['machine'])}: single 32x32 PNGs against an airnet checkpoint; each batched setting is "
            "followed by one-at-a-time requests (1 client, no batching) as its baseline.\n", "\n".join(rows) + "\n"]


def robustness_section() -> list[str]:
    """`benchmarks/robustness.py`: the recipes side by side on CIFAR-10-C, and the full table's speed."""
    rb = _load("robustness.json")
    sp = rb["speed"]
    rows = ["| row | overrides | train [s] | clean top-1 [%] | mCA [%] | mCE | relative mCE |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rb["rows"]:
        sets = ", ".join(f"`{s}`" for s in r["sets"]) or "-"
        rows.append(f"| {r['row']} (`{Path(r['config']).stem}`) | {sets} | {r['train_s']:.0f} | "
                    f"{r['clean_top1']:.2f} | {r['mca']:.2f} | {r['mce_vs_fast']:.1f} | "
                    f"{r['relative_mce_vs_fast']:.1f} |")
    command = re.sub(r"--data \S+", "--data DIR", rb["command"])
    out = ["## Robustness to corruptions (CIFAR-10-C)\n",
           f"`python {command}` on {_machine(rb['machine'])}. The fast recipe's whole 15 x 5 table "
           f"(750,000 corrupted images, generation included) took **{sp['table_s']:.0f} s** "
           f"({sp['images_per_s']:,.0f} images/s) against {sp['train_fast_s']:.0f} s to train it in the same run: "
           f"ratio **{sp['ratio']:.2f}** (the promise: at most 1). The recipes side by side, each on the same "
           f"{rb['rows'][0]['n']:,} test images, mCE with the fast recipe as the reference (100 = as fast, lower "
           "is better):\n", "\n".join(rows) + "\n"]
    if _has("robustness_fast_table.json"):
        ft = _load("robustness_fast_table.json")
        per = ", ".join(f"{c.replace('_', ' ')} {v:.1f}" for c, v in ft["per_corruption"].items())
        out.append(f"The fast recipe's full table ({ft['n']:,} test images, plain evaluation, {ft['precision']}): "
                   f"clean top-1 {ft['clean_top1']:.2f}%, **mCA {ft['mca']:.2f}%**; per corruption: {per}.\n")
    return out


def audit_section() -> list[str]:
    """`benchmarks/audit.py`: the audit of CIFAR-10 with planted label flips and near-copies."""
    au = _load("audit.json")
    sym, asym = au["stages"]["sym"], au["stages"].get("asym")
    rows = ["| measure | value |", "| --- | --- |",
            f"| whole audit, {sym['images']:,} images [s] | **{sym['seconds']:.0f}** vs {au['train_fast_seconds']:.0f} "
            f"for `cifarkit train fast` in the same run: **{sym['ratio_to_train_fast']:.2f}x** |",
            f"| peak memory [GB] | {sym['peak_rss_gb']:.1f} |",
            f"| uniform label flips ({sym['flipped']:,}) found in the top {sym['flipped']:,}: precision = recall | "
            f"**{sym['precision_at_k']:.2f}** |"]
    if asym:
        rows.append(f"| look-alike-class flips ({asym['flipped']:,}) found in the top {asym['flipped']:,} | "
                    f"**{asym['precision_at_k']:.2f}** |")
    alt = ", ".join(f"{k} {v:.0%}" for k, v in sym["dup_recall_by_alteration"].items())
    rows += [f"| planted near-copies ({sym['planted_pairs']}) found above the threshold | "
             f"**{sym['dup_recall_above_threshold']:.1%}** ({alt}) |",
             f"| planted near-copies among the {sym['planted_pairs']} most alike pairs | "
             f"{sym['dup_recall_at_500']:.0%} |"]
    return ["## Data audit of CIFAR-10\n",
            f"`python benchmarks/audit.py --data DIR` on {_machine(au['machine'])}: train + test with planted "
            f"problems ({au['noise']:.0%} of the training labels flipped, {au['copies']} altered copies of training "
            "images put into test).\n", "\n".join(rows) + "\n"]


def tune_section() -> list[str]:
    """`benchmarks/tune.py`: ASHA against no pruning, and the best values retrained at the shipped budget."""
    tu = _load("tune.json")
    s, b = tu["searches"], tu["search_budget"]
    rows = ["| search | wall time [s] | best validation top-1 [%] | trials complete / pruned |",
            "| --- | --- | --- | --- |"]
    for name, r in s.items():
        rows.append(f"| `--pruner {name}` | {r['wall_s']:.0f} | {r['best_val_top1']:.2f} | {r['complete']} / "
                    f"{r['pruned']} |")
    rt = tu["retrained"]

    def accs(d: dict) -> str:
        return f"{d['mean']:.2f}% ({', '.join(f'{x:.2f}' for x in d['top1'])})"

    return ["## Hyperparameter search\n",
            f"`python benchmarks/tune.py` on {_machine(tu['machine'])}: {tu['trials']} trials of the fast recipe over "
            f"{', '.join(f'`{k}`' for k in tu['space'])}, each on {b['train_images']:,} training / "
            f"{b['val_images']:,} validation images x {b['epochs']:g} epochs.\n", "\n".join(rows) + "\n",
            f"ASHA took **{s['asha']['time_vs_none']:.2f}x** the time of no pruning. The best values retrained at "
            f"the shipped budget (test top-1, TTA, {len(rt['tuned']['top1'])} seeds): tuned {accs(rt['tuned'])} "
            f"against the shipped recipe's {accs(rt['shipped'])}.\n"]


def measured_page() -> str:
    """The benchmarks the recipes page does not show, each from its results file."""
    out: list[str] = []
    for name in ("cpu_precision.json", "cpu_precision_amx.json"):
        if _has(name):
            out += cpu_precision_section(name)
    for name, make in (("serve_load.json", serve_load_section), ("robustness.json", robustness_section),
                       ("audit.json", audit_section), ("tune.json", tune_section)):
        if _has(name):
            out += make()
    return "\n".join(out)


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


GENERATORS = {"cli": cli_reference, "recipes": recipes_page, "measured": measured_page, "api-index": api_index}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each `<!-- generated: NAME -->` line with NAME's generated Markdown."""
    for name, make in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
