"""Hypothesis fuzzing of the config validator: any override of any key either loads or raises
`ConfigError` (never another exception), and every loaded config round-trips unchanged."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarkit.config import all_keys, config_from_dict, config_to_dict, load_config
from cifarkit.errors import ConfigError

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=8)
keys = st.sampled_from(all_keys() + ["model.kwargs.width", "model.kwargs.scale", "nope", "train", "data.std.x"])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_or_config_error(overrides: list[str]):
    try:
        return load_config(None, overrides)
    except ConfigError:
        return None


@FUZZ
@given(st.lists(st.tuples(keys, values), max_size=3))
def test_typed_overrides_raise_only_config_error(pairs):
    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in pairs]
    cfg = _load_or_config_error(overrides)
    if cfg is not None:  # valid values round-trip through the dict a checkpoint stores
        assert config_from_dict(config_to_dict(cfg)) == cfg


@FUZZ
@given(keys, st.text(max_size=40))
def test_raw_text_overrides_raise_only_config_error(key, raw):
    _load_or_config_error([f"{key}={raw}"])


@FUZZ
@given(st.dictionaries(st.sampled_from(["train", "data", "optim", "model", "name", "x"]),
                       st.dictionaries(st.text(max_size=12), values, max_size=4) | values, max_size=4))
def test_stored_config_dicts_raise_only_config_error(d):
    try:
        cfg = config_from_dict(d)
    except ConfigError:
        return
    assert config_from_dict(config_to_dict(cfg)) == cfg



def _default(key: str):
    obj = load_config(None)
    for part in key.split("."):
        obj = getattr(obj, part, None)
    return obj


NUMERIC_KEYS = [k for k in all_keys() if k.split(".")[0] in ("optim", "schedule", "train")
                and isinstance(_default(k), (int, float)) and not isinstance(_default(k), bool)]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fast", "airbench94", "resnet18"])
def test_zero_in_any_numeric_key_builds_or_is_one_config_error(recipe: str):
    """A zero in any numeric optim/schedule/train key (optim.lr=0 and optim.muon_lr=0 freeze a
    group, the natural way to do it) loads and builds the optimiser and schedule, or is refused by
    the validator with ConfigError; never a ZeroDivisionError (optim.lr=0 with airbench's per-lr
    weight decay was one). A group frozen by a zero lr gets no weight decay."""
    import torch

    from cifarkit.engine.optimizers import build_optimizer, lr_lambdas
    from cifarkit.models import create_model

    model = create_model("airnet", 10, widths=(8, 8, 8))
    built = 0
    for key in NUMERIC_KEYS:
        try:
            cfg = load_config(recipe, [f"{key}=0"])
        except ConfigError:
            continue
        opt = build_optimizer(cfg, model, None)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambdas(cfg, opt, 100, 10))
        frozen = [p for g in opt.param_groups if g["initial_lr"] == 0 for p in g["params"]]
        before = [p.detach().clone() for p in frozen]
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            opt.step()
            sched.step()
        # a group with lr 0 is frozen: no step and no weight decay moves it
        assert all(torch.equal(p, b) for p, b in zip(frozen, before)), key
        built += 1
    assert built > 10 and "optim.lr" in NUMERIC_KEYS and "optim.muon_lr" in NUMERIC_KEYS
