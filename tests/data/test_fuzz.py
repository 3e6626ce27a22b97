"""Fuzzing (hypothesis): random and mutated bytes into the batch reader, the manifest reader and
the image decoder only ever produce our clean DataError, never another exception or a hang."""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifarkit.data.cifar import safe_load_pickle
from cifarkit.data.decode import load_rgb
from cifarkit.data.folder import read_manifest
from cifarkit.errors import DataError
from conftest import cifar_batch, write_py2_pickle

FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


def _valid_batch(tmp: Path) -> bytes:
    write_py2_pickle(cifar_batch(np.arange(4) % 10, "b", 0), tmp / "b")
    return (tmp / "b").read_bytes()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, val in edits:
        buf[pos % len(buf)] = val
    return bytes(buf[:cut] if cut is not None else buf)


@FAST
@given(st.binary(max_size=4096))
def test_batch_reader_random_bytes(data: bytes):
    with contextlib.suppress(DataError):
        safe_load_pickle(data, "fuzz")


@FAST
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 20000)))
def test_batch_reader_mutated_real_batch(tmp_path_factory, edits, cut):
    from cifarkit.data.cifar import CifarSource

    d = tmp_path_factory.mktemp("fz") / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(_mutate(_valid_batch(d.parent), edits, cut))
    write_py2_pickle({"label_names": [str(i) for i in range(10)]}, d / "batches.meta")
    with contextlib.suppress(DataError):
        CifarSource(d).read_batch("test_batch")


@FAST
@given(st.binary(max_size=2048))
def test_manifest_reader_random_bytes(tmp_path_factory, data: bytes):
    p = tmp_path_factory.mktemp("mf") / "m.csv"
    p.write_bytes(b"path,label\n" + data)
    with contextlib.suppress(DataError):
        read_manifest(p)


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@FAST
@given(base=st.sampled_from(["png", "jpg", "random"]),
       edits=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 3000)), noise=st.binary(max_size=512))
def test_image_decoder_mutated_files(tmp_path_factory, base, edits, cut, noise):
    data = {"png": _png_bytes, "jpg": _jpg_bytes, "random": lambda: noise or b"x"}[base]()
    p = tmp_path_factory.mktemp("im") / f"x.{base if base != 'random' else 'png'}"
    p.write_bytes(_mutate(data, edits, cut))
    try:
        arr = load_rgb(p)
    except DataError:
        return
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


def test_fuzz_targets_accept_the_valid_inputs(tmp_path: Path):
    d = tmp_path
    assert isinstance(safe_load_pickle(_valid_batch(d), "ok"), dict)
    assert pickle.loads(_valid_batch(d), encoding="latin1")["labels"] == [0, 1, 2, 3]
    (d / "a.png").write_bytes(_png_bytes())
    assert load_rgb(d / "a.png").shape == (16, 16, 3)


# ---- issue 12: names from input -> one safe path component; validators never expand input --------
_NAMES = st.text(st.characters(codec="utf-8"), max_size=200) | st.sampled_from(
    ["", ".", "..", "...", "__init__", "_x", "a/b", "a%2Fb", "a~b", "~", "%", "CON", " ", "a.", "\x00"])


@settings(max_examples=400, deadline=None)
@given(a=_NAMES, b=_NAMES)
def test_safe_component_is_one_safe_injective_component(a: str, b: str):
    from cifarkit.safepath import MAX_COMPONENT, safe_component

    for name in (a, b):
        s = safe_component(name)
        assert s not in ("", ".", "..") and not s.startswith((".", "__"))
        assert not set(s) & {"/", "\\", "\x00"} and len(s.encode("utf-8")) <= MAX_COMPONENT
        assert safe_component(name) == s  # deterministic
    if a != b:
        assert safe_component(a) != safe_component(b)


_VALUES = st.recursive(st.integers(-3, 12) | st.floats(allow_nan=True) | st.text(max_size=3) | st.binary(max_size=3)
                       | st.none() | st.booleans(), lambda inner: st.lists(inner, max_size=4), max_leaves=30)


@FAST
@given(value=_VALUES | st.lists(st.integers(-(2 ** 80), 2 ** 80), max_size=6), n=st.integers(0, 6))
def test_int_labels_accepts_only_flat_in_range_ints(value, n: int):
    from cifarkit.data.validate import int_labels

    try:
        out = int_labels(value, "f", "labels", n, 10)
    except DataError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(value, list) and len(value) == n
    assert all(type(v) is int and 0 <= v < 10 for v in value)
    assert out.dtype == np.int64 and out.tolist() == value


@FAST
@given(value=_VALUES | st.lists(st.text(max_size=1100), max_size=5), n=st.none() | st.integers(0, 5))
def test_name_list_returns_bounded_flat_text(value, n):
    from cifarkit.data.validate import MAX_NAME_BYTES, name_list

    try:
        out = name_list(value, "f", "names", n=n)
    except DataError as e:
        assert "\n" not in str(e)
        return
    assert isinstance(value, list) and (n is None or len(out) == n) and len(out) == len(value)
    assert all(isinstance(s, str) and len(s.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES for s in out)
