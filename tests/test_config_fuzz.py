"""Hypothesis fuzzing of the config validator: any override of any key either loads or raises
`ConfigError` (never another exception), and every loaded config round-trips unchanged."""

from __future__ import annotations

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
