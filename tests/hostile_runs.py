"""Hostile inputs for the runs / config / CLI side, built at test time (nothing crafted is shipped).

- `hostile_configs`: YAML files and `--set` overrides that must each end in one `ConfigError`
  naming the key or file: non-finite and overflowing numbers, negative sizes, bad mean/std,
  unknown model kwargs, folders, oversized files, non-mappings, alias bombs, deep nesting;
- `hostile_logs`: log.jsonl files whose records have the wrong types (string losses, list
  epochs, null lr, non-object lines, a 10^6-character line);
- `unwritable_dir` / `output_places`: places an output cannot go *even for root* (the tests run as
  root, where chmod does not block anything): a folder made immutable with `chattr +i` (also
  blocks root; skipped where chattr does not work), an existing file where a folder is
  expected, and an existing folder where a file is expected.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

# --set overrides, each with the key its error line must name
BAD_OVERRIDES = [
    ("train.epochs=.nan", "train.epochs"),
    ("train.epochs=.inf", "train.epochs"),
    ("train.epochs=1e400", "train.epochs"),
    ("train.epochs=-1", "train.epochs"),
    ("optim.lr=-0.1", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.weight_decay=-1", "optim.weight_decay"),
    ("train.batch_size=-5", "train.batch_size"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("train.threads=-1", "train.threads"),
    ("data.workers=-2", "data.workers"),
    ("data.crop_padding=-4", "data.crop_padding"),
    ("data.subset_per_class=-1", "data.subset_per_class"),
    ("train.max_iters=-1", "train.max_iters"),
    ("data.std=[60, 0, 60]", "data.std"),
    ("data.std=[60, -1, 60]", "data.std"),
    ("data.std=[60, 60]", "data.std"),
    ("data.mean=[1, 2, 3, 4]", "data.mean"),
    ("model.kwargs.bogus=1", "model.kwargs"),
    ("train.seed=99999999999999999999999", "train.seed"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("train.label_smoothing=2", "train.label_smoothing"),
    ("data.rrc_scale=[0.9, 0.1]", "data.rrc_scale"),
    ("schedule.milestones=[-1]", "schedule.milestones"),
    ("data.root=a\x00b", "data.root"),
]


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: a few hundred bytes that expand to 10^levels strings."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def hostile_configs(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (config path, text its error must contain)."""
    root.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[Path, str]] = {}

    def put(name: str, text: str | bytes, expect: str) -> None:
        p = root / f"{name}.yaml"
        p.write_bytes(text.encode() if isinstance(text, str) else text)
        made[name] = (p, expect)

    (root / "folder.yaml").mkdir(exist_ok=True)
    made["folder"] = (root / "folder.yaml", "is a folder")
    put("huge", "name: x\n" + "# padding line\n" * 80_000, "larger than 1 MiB")
    put("list", "- data\n- model\n", "must be a mapping")
    put("scalar", "just a string\n", "must be a mapping")
    put("aliases", billion_laughs(), "aliases")
    put("deep", "a: " + "[" * 50_000 + "\n", "not valid YAML")
    put("binary", b"\xff\xfe\x00garbage", "not valid YAML")
    put("nan_epochs", "train:\n  epochs: .nan\n", "train.epochs")
    put("section_not_mapping", "train: 3\n", "train")
    put("python_tag", "name: !!python/object/apply:os.system ['true']\n", "not valid YAML")
    return made


def hostile_logs(root: Path) -> dict[str, Path]:
    """Run directories whose log.jsonl is malformed in one way each; every one still holds
    enough good records to plot, so a reader must skip the bad ones, not give up or crash."""
    header = {"type": "header", "config": {"name": "h", "model": {"name": "airnet"}}, "classes": ["a", "b"]}
    good = [{"type": "train", "epoch": 1, "iter": i, "lr": 0.1, "loss": 2.0 - i / 10} for i in range(1, 6)]
    good.append({"type": "val", "epoch": 1, "iter": 5, "loss": 1.5, "top1": 50.0, "top5": 90.0})
    bad_lines: dict[str, list[str]] = {
        "string_loss": [json.dumps({"type": "train", "epoch": 1, "iter": 6, "lr": 0.1, "loss": "high"})],
        "list_epoch": [json.dumps({"type": "train", "epoch": [1, 2], "iter": 7, "lr": 0.1, "loss": 1.0}),
                       json.dumps({"type": "val", "epoch": [1], "iter": 7, "top1": 40.0})],
        "null_lr": [json.dumps({"type": "train", "epoch": 1, "iter": 8, "lr": None, "loss": 1.0})],
        "dict_iter": [json.dumps({"type": "train", "epoch": 1, "iter": {"x": 1}, "lr": 0.1, "loss": 1.0})],
        "string_top1": [json.dumps({"type": "val", "epoch": 2, "iter": 10, "top1": "great", "top5": [1]})],
        "bool_values": [json.dumps({"type": "train", "epoch": True, "iter": True, "lr": True, "loss": False})],
        "non_object": ["[1, 2, 3]", "42", '"a string"', "null"],
        "huge_line": [json.dumps({"type": "train", "epoch": 1, "iter": 9, "loss": 1.0, "pad": "x" * 1_000_000})],
        "deep_line": ["[" * 100_000 + "]" * 100_000],
        "header_not_mapping": [json.dumps({"type": "header", "config": [1, 2], "classes": "abc"})],
        "nan_strings": [json.dumps({"type": "train", "epoch": 1, "iter": 11, "lr": "nan", "loss": "inf"})],
        "huge_numbers": [json.dumps({"type": "train", "epoch": 10**400, "iter": 10**400, "lr": 1e308, "loss": 1.0})],
    }
    made = {}
    for name, lines in bad_lines.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        recs = [json.dumps(header)] + [json.dumps(r) for r in good] + lines
        (d / "log.jsonl").write_text("\n".join(recs) + "\n", encoding="utf-8")
        made[name] = d
    return made


def chattr_works(probe: Path) -> bool:
    probe.mkdir(parents=True, exist_ok=True)
    try:
        ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    except OSError:
        return False
    if ok:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return ok


@contextlib.contextmanager
def unwritable_dir(path: Path) -> Iterator[Path]:
    """A folder nobody, root included, can create anything in (`chattr +i`), made writable again
    afterwards so pytest can remove it."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def output_places(root: Path) -> dict[str, Path]:
    """An existing file (where a folder is expected) and an existing folder (where a file is expected)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a_file").write_text("not a folder\n")
    (root / "a_folder.png").mkdir(exist_ok=True)
    return {"file": root / "a_file", "folder": root / "a_folder.png"}
