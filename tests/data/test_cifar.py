"""The CIFAR reader: real formats, hostile pickles, and every malformed-file error."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cifarkit.data.cifar import open_cifar, read_cifar, safe_load_pickle, to_dataframe
from cifarkit.errors import DataError
from conftest import CLASSES, cifar_batch, make_cifar10, write_py2_pickle


def test_reads_python2_batches_exactly(cifar10_dir: Path):
    raw = cifar_batch(np.arange(20) % 10, "x", 1)
    ds = read_cifar(cifar10_dir, "train")
    assert ds.images.shape == (100, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.classes == CLASSES
    # row 0 of data_batch_1: R plane, G plane, B plane -> (32, 32, 3)
    expect = raw["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(ds.images[0], expect)
    assert ds.sources[0] == "data_batch_1" and ds.indices[20] == 0 and ds.sources[20] == "data_batch_2"
    assert ds.filenames[0] == raw["filenames"][0]
    assert read_cifar(cifar10_dir, "test").images.shape[0] == 40
    assert read_cifar(cifar10_dir, "all").images.shape[0] == 140


def test_py2_file_really_has_byte_string_opcodes(cifar10_dir: Path):
    data = (cifar10_dir / "data_batch_1").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in data
    assert pickle.SHORT_BINSTRING + bytes([4]) + b"data" in data


def test_reads_python3_pickles_and_parent_folder(tmp_path: Path):
    make_cifar10(tmp_path, py2=False)
    ds = read_cifar(tmp_path, "train")  # the parent of cifar-10-batches-py
    assert len(ds) == 100 and ds.classes == CLASSES


def test_python3_protocol2_bytes_keys(tmp_path: Path):
    d = make_cifar10(tmp_path)
    b = cifar_batch(np.arange(20) % 10, "b1", 1)
    (d / "data_batch_1").write_bytes(pickle.dumps({k.encode(): v for k, v in b.items()}, protocol=2))
    assert len(read_cifar(d, "train")) == 100


def test_reads_straight_from_tar_gz(tmp_path: Path):
    d = make_cifar10(tmp_path / "x")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(d, arcname="cifar-10-batches-py")
    ds = read_cifar(archive, "test")
    assert len(ds) == 40 and ds.images.dtype == np.uint8


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path: Path):
    d = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    (d / "data_batch_1").write_bytes(pickle.dumps({"data": _Evil(str(marker))}, protocol=2))
    with pytest.raises(DataError, match="data_batch_1.*refusing"):
        read_cifar(d, "train")
    assert not marker.exists()
    # the plain pickle.load the dataset page shows *would* have run it: the payload is real
    pickle.loads((d / "data_batch_1").read_bytes())
    assert marker.exists()


def test_codecs_encode_only_for_latin1(tmp_path: Path):
    import codecs

    payload = pickle.dumps(codecs.encode, protocol=2)[:-1]  # GLOBAL _codecs encode
    evil = b"\x80\x02" + payload[2:] + b"X\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(DataError):
        safe_load_pickle(evil, "x")


def test_truncated_file(tmp_path: Path):
    d = make_cifar10(tmp_path)
    data = (d / "data_batch_2").read_bytes()
    (d / "data_batch_2").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data_batch_2.*truncated or corrupt"):
        read_cifar(d, "train")


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.update(data=b["data"][:, :100]), r"\(20, 100\) uint8, expected an \(N, 3072\)"),
    (lambda b: b.update(data=b["data"].astype(np.float32)), "float32"),
    (lambda b: b.update(labels=b["labels"][:-1]), "19 labels for 20 images"),
    (lambda b: b.update(labels=[12] * 20), "label 12 is outside 0..9"),
    (lambda b: b.pop("labels"), "no 'labels' entry"),
    (lambda b: b.pop("data"), "no 'data' entry"),
])
def test_malformed_batches_name_file_and_problem(tmp_path: Path, mutate, message):
    d = make_cifar10(tmp_path)
    b = cifar_batch(np.arange(20) % 10, "b", 3)
    mutate(b)
    write_py2_pickle(b, d / "data_batch_3")
    with pytest.raises(DataError, match=message) as e:
        read_cifar(d, "train")
    assert "data_batch_3" in str(e.value)


def test_not_a_dict(tmp_path: Path):
    d = make_cifar10(tmp_path)
    write_py2_pickle([1, 2, 3], d / "test_batch")
    with pytest.raises(DataError, match="expected a dict"):
        read_cifar(d, "test")


def test_missing_batch_is_incomplete(tmp_path: Path):
    d = make_cifar10(tmp_path)
    (d / "data_batch_4").unlink()
    with pytest.raises(DataError, match="'data_batch_4' is missing"):
        read_cifar(d, "train")


def test_missing_meta_falls_back_with_warning(tmp_path: Path):
    d = make_cifar10(tmp_path)
    (d / "batches.meta").unlink()
    with pytest.warns(UserWarning, match="batches.meta is missing"):
        ds = read_cifar(d, "test")
    assert ds.classes == CLASSES


def test_missing_path_and_non_cifar_folder(tmp_path: Path):
    with pytest.raises(DataError, match="no such file or folder"):
        read_cifar(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR batches here"):
        read_cifar(tmp_path / "empty")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not a readable tar archive"):
        read_cifar(bad)


def make_cifar100(root: Path, n: int = 30) -> Path:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    fine = np.arange(n) % 100
    for name in ("train", "test"):
        imgs = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
        write_py2_pickle({"batch_label": name, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                          "data": imgs, "filenames": [f"f{i}.png" for i in range(n)]}, d / name)
    write_py2_pickle({"fine_label_names": [f"fine{i}" for i in range(100)],
                      "coarse_label_names": [f"coarse{i}" for i in range(20)]}, d / "meta")
    return d


def test_cifar100_fine_default_and_coarse(tmp_path: Path):
    d = make_cifar100(tmp_path)
    src = open_cifar(tmp_path)
    assert src.variant == "cifar100"
    fine = read_cifar(d, "train")
    assert len(fine.classes) == 100 and fine.labels[7] == 7
    assert np.array_equal(fine.extra["coarse_labels"], np.arange(30) // 5)
    coarse = read_cifar(d, "train", label_kind="coarse")
    assert len(coarse.classes) == 20 and coarse.labels[7] == 1


def test_to_dataframe_is_the_tutorials_table(cifar10_dir: Path):
    pytest.importorskip("pandas")
    ds = read_cifar(cifar10_dir, "train")
    df = to_dataframe(ds)
    assert list(df.columns) == ["split", "source", "index", "path", "label_id", "label_name", "image"]
    assert df.loc[0, "label_name"] == CLASSES[df.loc[0, "label_id"]]
    assert df.loc[0, "image"].shape == (32, 32, 3)
    assert df.loc[25, "source"] == "data_batch_2" and df.loc[25, "index"] == 5
