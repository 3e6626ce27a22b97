"""Config loading: YAML, typed overrides, nearest-key suggestions, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cifarkit.config import all_keys, config_to_dict, describe_keys, load_config
from cifarkit.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["cifar10_fast", "cifar10_resnet18", "cifar10_mobilenetv2_finetune", "cifar10_lt100"])
def test_shipped_configs_load(name: str):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name and cfg.model.num_classes == 10


def test_tutorial_recipe_field_for_field():
    c = load_config(CONFIGS / "cifar10_mobilenetv2_finetune.yaml")
    assert (c.model.name, c.train.batch_size, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == \
        ("mobilenet_v2", 32, 0.005, 0.9, 4e-5)
    assert (c.schedule.name, c.schedule.gamma, c.schedule.step, c.train.epochs) == ("step", 0.98, 1, 10)
    assert (c.data.rrc_size, c.data.eval_resize, c.data.eval_crop) == (224, 256, 224)
    assert (c.eval.interval, c.checkpoint.interval, c.log.interval) == (1, 5, 10)
    assert c.data.mean == [123.675, 116.28, 103.53]
    assert (c.train.compile, c.train.compile_mode) == ("cuda", "reduce-overhead")  # ours, GPU only


def test_overrides_are_typed(tmp_path: Path):
    cfg = load_config(None, ["optim.lr=0.3", "train.epochs=2", "train.deterministic=true",
                             "data.mean=[1, 2, 3]", "data.root=some/path"])
    assert cfg.optim.lr == 0.3 and isinstance(cfg.train.epochs, float) and cfg.train.deterministic is True
    assert cfg.data.mean == [1.0, 2.0, 3.0] and cfg.data.root == "some/path"
    # train.compile was a bool: true/false (and YAML's on/off) still work, next to "cuda"
    assert [load_config(None, [f"train.compile={v}"]).train.compile for v in ("true", "false", "on", "cuda")] == \
        ["on", "off", "on", "cuda"]


@pytest.mark.parametrize("item, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    ("lr=1", "did you mean 'optim.lr'"),
    ("train.batch_size=abc", "train.batch_size: 'abc' is not a valid int"),
    ("train.deterministic=3", "not a valid bool"),
    ("optim.name=sgdd", "optim.name: 'sgdd' is not one of sgd, adamw, muon; did you mean 'sgd'"),
    ("train.batch_size=0", "train.batch_size: must be at least 1"),
    ("train.compile=gpu", "train.compile: 'gpu' is not one of off, on, cuda"),
    ("novalue", "expected key.sub=value"),
])
def test_bad_overrides(item: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(None, [item])


def test_bad_yaml_key_names_file(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'train.epocs'; did you mean 'train.epochs'"):
        load_config(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_every_key_documented():
    """Every key has a real help line in --list-keys, and every key a shipped recipe sets is a key."""
    import dataclasses
    import typing

    from cifarkit.config import Config
    from cifarkit.recipes import shipped_configs

    helps: dict[str, str] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                helps[prefix + f.name] = f.metadata.get("help", "")

    walk(Config, "")
    empty = [k for k, h in helps.items() if len(h.split()) < 2]
    assert not empty, f"keys without a help line: {empty}"
    lines = describe_keys().splitlines()
    assert [ln.split()[0] for ln in lines] == list(helps) == all_keys()
    for line, (key, text) in zip(lines, helps.items()):
        assert line.rstrip().endswith(text), key  # the help is printed, not just the key
    assert {"data.val_fraction", "train.max_iters", "eval.tta", "optim.lr"} <= set(helps)

    def flat(d: dict, prefix: str = "") -> list[str]:
        return [k for key, v in d.items() for k in
                (flat(v, f"{prefix}{key}.") if isinstance(v, dict) and key != "kwargs" else [prefix + key])]

    for name, path in shipped_configs().items():
        unknown = set(flat(yaml.safe_load(path.read_text()))) - set(helps)
        assert not unknown, f"{name}: {unknown}"
    d = config_to_dict(load_config(None))
    assert d["checkpoint"]["interval"] == 1


@pytest.mark.parametrize("item", ["optim.lr=abc", "train.epochs=[1]", "data.mean=3", "model.kwargs.widths={a: 1}"])
def test_a_bad_set_value_names_set_not_the_yaml_file(item: str):
    """The value came from --set, so the error says so; the recipe file never held it."""
    fast = Path(__file__).resolve().parents[1] / "configs" / "cifar10_fast.yaml"
    try:
        cfg = load_config(fast, [item])
    except ConfigError as e:
        assert str(e).startswith(f"--set {item.split('=')[0]}") and "cifar10_fast.yaml" not in str(e), str(e)
    else:
        assert item.startswith("model.kwargs.")  # a kwargs dict is checked against the model at build
        assert cfg.model.kwargs["widths"] == {"a": 1}


def test_a_bad_value_in_the_file_names_the_file(tmp_path: Path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("optim:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: optim\.lr"):
        load_config(bad, ["train.epochs=2"])


def test_train_amp_none_still_works_with_one_deprecation_line(capsys: pytest.CaptureFixture[str]):
    from cifarkit.options import PRECISIONS

    assert load_config(None, ["train.amp=fp32"]).train.amp == "fp32" and capsys.readouterr().err == ""
    assert load_config(None, ["train.amp=none"]).train.amp == "none"  # the old spelling of fp32 keeps working
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.amp: none is deprecated" in err and "train.amp: fp32" in err
    for p in PRECISIONS:
        assert load_config(None, [f"train.amp={p}"]).train.amp == p
    with pytest.raises(ConfigError, match="train.amp: 'fp64' is not one of auto, fp32, bf16, fp16, none"):
        load_config(None, ["train.amp=fp64"])
