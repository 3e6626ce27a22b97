"""Read the CIFAR-10 / CIFAR-100 "python version" batches without ever running pickled code.

The snippet on the dataset's home page (`pickle.load`) executes whatever a tampered file asks
for. `SafeUnpickler` only resolves the handful of globals the genuine files reference (numpy's
array reconstruction, under its numpy-1 `numpy.core` and numpy-2 `numpy._core` names), so a
hostile file fails with `DataError` before any of its code can run.

Accepted locations: the `cifar-10-batches-py` / `cifar-100-python` folder, its parent, or the
downloaded `.tar.gz` itself (members are read straight from the archive). A batch file (or the
batches folder) that is a symlink leading out of the folder given is refused (`saferead.Within`).

Every size that comes from the file is bounded before memory is spent (see `validate`): a batch
file or tar member over `MAX_BATCH_BYTES` is refused from its size alone (the tar header or the
file's stat), and labels, file names and class names are checked for type and length before any
array or string is built from them.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cifarkit.data.imageset import ImageSet
from cifarkit.data.validate import MAX_BATCH_BYTES, check_file_size, int_labels, name_list, name_text
from cifarkit.errors import DataError
from cifarkit.saferead import Within

if TYPE_CHECKING:  # pandas is optional: imported inside to_dataframe
    import pandas as pd

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

_MAX_TAR_MEMBERS = 10_000  # the official archives hold 8 (CIFAR-10) and 5 (CIFAR-100) entries

# The layouts we know: folder name, train files, test files, meta file, label key per kind.
LAYOUTS = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta"),
}


def _numpy_reconstruct():
    from numpy._core import multiarray  # numpy >= 2

    return multiarray._reconstruct


def _numpy_frombuffer():
    from numpy._core import numeric

    return numeric._frombuffer


def _numpy_scalar():
    from numpy._core import multiarray

    return multiarray.scalar


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 writes `bytes` in protocol-2 pickles as _codecs.encode(text, 'latin1'); allow only that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused global _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> how to obtain the object. Nothing else is ever imported.
_ALLOWED = {
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that knows only dict/list/str/bytes/int/float and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the constructor for an allow-listed global; refuse every other one.

        Raises:
            pickle.UnpicklingError: `module.name` is not on the allow-list (turned into a `DataError` by
                `safe_load_pickle`).
        """
        make = _ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return make()


_MAX_PICKLE_OPS = 2_000_000  # CIFAR-100's `train` (the biggest batch) has ~200,000 opcodes
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _check_opcodes(data: bytes, name: str) -> None:
    """Refuse pickles whose opcodes alone would make the C unpickler spend memory or time.

    Why: a `LONG_BINPUT 2**31` makes the C unpickler grow its memo table to that index (tens of
    GB zeroed; a 1-byte fuzz edit of a real batch took 37 s and gigabytes). Genuine pickles
    number memo slots in order, so an index beyond the opcodes seen so far is refused. The scan
    costs ~0.3 s for CIFAR-100's train file, 1.4x its load time.
    """
    import pickletools

    with warnings.catch_warnings():  # genops warns on odd escapes in a text-protocol STRING
        warnings.simplefilter("ignore", DeprecationWarning)
        for k, (op, arg, _pos) in enumerate(pickletools.genops(data)):
            if k >= _MAX_PICKLE_OPS:
                raise DataError(f"{name}: more than {_MAX_PICKLE_OPS:,} pickle opcodes, far more than a CIFAR "
                                "batch holds; the file is corrupt or hostile, re-download it")
            if op.name in _MEMO_PUTS and int(arg) > k:
                raise DataError(f"{name}: corrupt pickle (memo slot {arg} at opcode {k}); re-download the dataset")


def safe_load_pickle(data: bytes, name: str) -> Any:
    """Unpickle `data` (the contents of file `name`) with the allow-list; errors name the file."""
    try:
        _check_opcodes(data, name)
        # latin1: Python-2 `str` pickled by cPickle holds raw bytes; numpy needs them 1:1.
        return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "refused global" in str(e):
            raise DataError(f"{name}: the pickle asks for {str(e)[15:]}, which a CIFAR batch never "
                            "needs; refusing to load it (the file may be tampered with)") from None
        raise DataError(f"{name}: truncated or corrupt pickle ({e}); re-download the dataset") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            MemoryError, UnicodeDecodeError, struct.error,
            RuntimeError, SystemError) as e:  # numpy's dtype __setstate__ on corrupt state raises these
        raise DataError(f"{name}: truncated or corrupt pickle ({type(e).__name__}: {e}); "
                        "re-download the dataset") from None


def _text(x: Any) -> Any:
    return x.decode("latin1") if isinstance(x, bytes) else x


def _normalise_keys(obj: Any, name: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a dict of arrays, found {type(obj).__name__}; "
                        "this is not a CIFAR batch file")
    return {_text(k): v for k, v in obj.items()}


@dataclass
class BatchInfo:
    """What `inspect` reports for one batch file."""

    file: str
    split: str
    batch_label: str
    count: int
    shape: tuple[int, ...]
    dtype: str
    class_counts: dict[str, int]


class CifarSource:
    """One CIFAR "python version" copy: a folder or a .tar.gz; knows its files and variant."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder; point at cifar-10-batches-py, "
                            "its parent, or cifar-10-python.tar.gz (or run `cifarkit data fetch`)")
        self._members: dict[str, Any] = {}
        self._tar: tarfile.TarFile | None = None
        if self.path.is_file():
            self._open_tar()
        else:
            self._open_folder()
        self.variant = self._detect_variant()
        self.layout = LAYOUTS[self.variant]
        self.classes, self.coarse_classes = self._read_meta()

    # ---- locating files -------------------------------------------------------------------
    def _open_tar(self) -> None:
        known = {f for lay in LAYOUTS.values() for f in (*lay["train"], *lay["test"], lay["meta"])}
        try:
            self._tar = tarfile.open(self.path, "r:*")
            for k, m in enumerate(self._tar):  # one header at a time: a member is judged before its data
                if k >= _MAX_TAR_MEMBERS:
                    raise DataError(f"{self.path}: more than {_MAX_TAR_MEMBERS:,} entries, far more than a CIFAR "
                                    "archive holds; re-download it")
                name = Path(m.name).name
                if m.isfile() and name in known:
                    check_file_size(m.size, f"{self.path}:{name}")
                    self._members[name] = m
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            # tarfile's own message lists every compression it tried, one per line
            lines = str(e).splitlines()
            why = lines[0] if len(lines) == 1 else "not a gzip, bzip2, xz or plain tar file"
            raise DataError(f"{self.path}: not a readable tar archive ({why}); re-download it") from None

    def _open_folder(self) -> None:
        # every batch file must lie inside the folder given (saferead): a data_batch_1 that links
        # to a file elsewhere is refused by name, not read
        within = Within(self.path)
        known = {f for lay in LAYOUTS.values() for f in (*lay["train"], *lay["test"], lay["meta"])}
        for layout in LAYOUTS.values():
            for cand in (self.path, self.path / layout["folder"]):
                if (cand / layout["test"][0]).is_file() or (cand / layout["train"][0]).is_file():
                    within.check(cand, f"{cand} (the CIFAR batches folder)")
                    self._members = {p.name: p for p in cand.iterdir() if p.is_file()}
                    for name in sorted(known & set(self._members)):
                        within.check(self._members[name], f"{self._members[name]} (a CIFAR batch file)")
                    self.folder = cand
                    return
        raise DataError(f"{self.path}: no CIFAR batches here (looked for data_batch_1/test_batch or "
                        "train/test); point at cifar-10-batches-py, its parent, or the .tar.gz")

    def _detect_variant(self) -> str:
        if "data_batch_1" in self._members or "test_batch" in self._members:
            return "cifar10"
        if "train" in self._members or "test" in self._members:
            return "cifar100"
        raise DataError(f"{self.path}: the archive holds no CIFAR batches (data_batch_1, test_batch, "
                        "train or test); is it the 'python version' download?")

    def read_bytes(self, name: str) -> bytes:
        """The raw bytes of batch file `name`, from the folder or the archive.

        Raises:
            DataError: the file is missing, over the 200 MB size limit or unreadable.
        """
        m = self._members.get(name)
        if m is None:
            raise DataError(f"{self.path}: batch file {name!r} is missing; the copy is incomplete, "
                            "re-download or re-extract it")
        try:
            if self._tar is not None:
                check_file_size(m.size, self.display(name))  # header size; extractfile reads exactly that
                f = self._tar.extractfile(m)
                assert f is not None
                return f.read(MAX_BATCH_BYTES + 1)
            with open(m, "rb") as fh:
                check_file_size(os.fstat(fh.fileno()).st_size, self.display(name))
                data = fh.read(MAX_BATCH_BYTES + 1)  # a file still growing cannot pass the bound either
            check_file_size(len(data), self.display(name))
            return data
        except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
            raise DataError(f"{self.display(name)}: cannot be read ({e}); re-download it") from None

    def close(self) -> None:
        """Close the archive, if one is open (also done on leaving a `with` block)."""
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> CifarSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def display(self, name: str) -> str:
        """How batch file `name` is named in messages: `archive.tar.gz:member` or the file path."""
        return f"{self.path}:{name}" if self._tar is not None else str(Path(self._members.get(name, name)))

    def files(self, split: str) -> list[str]:
        """The batch file names of `split` ("train", "test" or "all"), in the official order.

        Raises:
            DataError: `split` is not one of the three.
        """
        if split == "all":
            return self.layout["train"] + self.layout["test"]
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} for {self.path}; use train, test or all")
        return list(self.layout[split])

    # ---- meta --------------------------------------------------------------------------
    def _read_meta(self) -> tuple[list[str], list[str] | None]:
        meta_name = LAYOUTS[self.variant]["meta"]
        if meta_name not in self._members:
            if self.variant == "cifar100":
                raise DataError(f"{self.path}: 'meta' is missing, and CIFAR-100 class names cannot be "
                                "guessed; re-download the dataset")
            warnings.warn(f"{self.path}: batches.meta is missing; using the standard CIFAR-10 class "
                          "names", stacklevel=3)
            return list(CIFAR10_CLASSES), None
        meta = _normalise_keys(safe_load_pickle(self.read_bytes(meta_name), self.display(meta_name)),
                               self.display(meta_name))
        key = "label_names" if self.variant == "cifar10" else "fine_label_names"
        shown = self.display(meta_name)
        if key not in meta:
            raise DataError(f"{shown}: has no {key!r} entry; re-download the dataset")
        classes = name_list(meta[key], shown, key, unique=True)
        coarse = (name_list(meta["coarse_label_names"], shown, "coarse_label_names", unique=True)
                  if "coarse_label_names" in meta else None)
        return classes, coarse

    # ---- batches ------------------------------------------------------------------------
    def read_batch(self, name: str, label_kind: str = "fine") -> dict[str, Any]:
        """One validated batch: data (N, 3072) uint8, labels (N,), filenames, batch_label."""
        shown = self.display(name)
        d = _normalise_keys(safe_load_pickle(self.read_bytes(name), shown), shown)
        if "data" not in d:
            raise DataError(f"{shown}: has no 'data' entry; this is not a CIFAR batch file")
        data = d["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3072:
            desc = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{shown}: 'data' is {desc}, expected an (N, 3072) uint8 array")
        n = data.shape[0]
        if self.variant == "cifar10":
            label_key = "labels"
        else:
            label_key = "coarse_labels" if label_kind == "coarse" else "fine_labels"
        if label_key not in d:
            raise DataError(f"{shown}: has no {label_key!r} entry; this batch is incomplete")
        num = len(self.coarse_classes or []) if label_kind == "coarse" else len(self.classes)
        labels = int_labels(d[label_key], shown, label_key, n, num)
        names = d.get("filenames")
        # absent in some re-packed copies: name rows after the batch; present, it must be right
        names = [f"{name}_{i:05d}.png" for i in range(n)] if names is None else \
            name_list(names, shown, "filenames", n=n)
        extra = {}
        if self.variant == "cifar100" and "coarse_labels" in d and label_kind != "coarse":
            extra["coarse_labels"] = int_labels(d["coarse_labels"], shown, "coarse_labels", n,
                                                len(self.coarse_classes or []) or 1 << 62)
        batch_label = name_text(d.get("batch_label", name), shown, "batch_label")
        return dict(data=data, labels=labels, filenames=names, batch_label=batch_label, extra=extra)

    def batch_info(self, name: str) -> BatchInfo:
        """Read and validate batch file `name` and summarise it for `inspect` (count, shape, class counts)."""
        b = self.read_batch(name)
        counts = np.bincount(b["labels"], minlength=len(self.classes))
        split = "test" if name in self.layout["test"] else "train"
        return BatchInfo(name, split, b["batch_label"], len(b["labels"]), tuple(b["data"].shape),
                         str(b["data"].dtype), dict(zip(self.classes, counts.tolist())))

    def read(self, split: str = "train", label_kind: str = "fine") -> ImageSet:
        """Read every batch of `split` into one `ImageSet`.

        Args:
            split: "train", "test" or "all" (train then test).
            label_kind: "fine" (CIFAR-100's 100 classes; the only kind in CIFAR-10) or "coarse"
                (CIFAR-100's 20 superclasses).

        Returns:
            The images as uint8 (N, 32, 32, 3) with labels, class names and each image's batch file and
            row.

        Raises:
            DataError: a batch is missing, hostile or malformed, or `label_kind` does not apply.
        """
        classes = self.classes
        if label_kind == "coarse":
            if self.coarse_classes is None:
                raise DataError(f"{self.path}: coarse labels exist only for CIFAR-100")
            classes = self.coarse_classes
        parts = []
        for name in self.files(split):
            b = self.read_batch(name, label_kind)
            n = len(b["labels"])
            # (N, 3072) rows are R plane, G plane, B plane of 32x32 -> (N, 32, 32, 3)
            images = b["data"].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1)
            parts.append(ImageSet(
                images=np.ascontiguousarray(images), labels=b["labels"], classes=list(classes),
                sources=[name] * n, indices=np.arange(n, dtype=np.int64), filenames=b["filenames"],
                origin=str(self.path), split=split if split != "all" else
                ("test" if name in self.layout["test"] else "train"), extra=b["extra"],
            ))
        out = ImageSet.concat(parts)
        out.split = split
        return out


def open_cifar(path: str | Path) -> CifarSource:
    """Open a CIFAR "python version" copy without reading its batches yet.

    Use it as a context manager when reading several splits from one archive.

    Args:
        path: the `cifar-10-batches-py` / `cifar-100-python` folder, its parent, or the downloaded
            `.tar.gz`.

    Returns:
        A `CifarSource` that knows the variant (cifar10 or cifar100), the class names and the files.

    Raises:
        DataError: `path` does not exist or holds no CIFAR batches.
    """
    return CifarSource(path)


def read_cifar(path: str | Path, split: str = "train", label_kind: str = "fine") -> ImageSet:
    """Read a CIFAR-10/100 split with the safe unpickler.

    Args:
        path: the `cifar-10-batches-py` folder, its parent, or the downloaded `.tar.gz` (read
            straight from the archive).
        split: "train", "test" or "all".
        label_kind: "fine" (default) or "coarse" (CIFAR-100's 20 superclasses).

    Returns:
        An `ImageSet` of uint8 (N, 32, 32, 3) RGB images, int64 labels and the class names.

    Raises:
        DataError: the copy is incomplete, tampered with (a pickle that would run code) or
            malformed (wrong shapes, labels out of range).
    """
    with CifarSource(path) as src:
        return src.read(split, label_kind)


def is_cifar(path: str | Path) -> bool:
    """Whether `path` looks like CIFAR batches (an archive, or a folder with `data_batch_1`/`test_batch`/...)."""
    p = Path(path)
    if p.is_file():
        return p.name.endswith((".tar.gz", ".tgz", ".tar"))
    return any((c / f).is_file() for c in (p, p / "cifar-10-batches-py", p / "cifar-100-python")
               for f in ("data_batch_1", "test_batch", "train", "test"))


def to_dataframe(ds: ImageSet) -> pd.DataFrame:
    """The tutorial's table: one row per image of `ds`.

    Args:
        ds: any `ImageSet`.

    Returns:
        A pandas DataFrame with columns split, source, index, path (where `cifarkit data export`
        puts the image), label_id, label_name and image (the (H, W, 3) uint8 pixels).

    Raises:
        DataError: pandas is not installed (`pip install 'cifarkit[pandas]'`).
    """
    try:
        import pandas as pd
    except ImportError:
        raise DataError("to_dataframe needs pandas: pip install 'cifarkit[pandas]'") from None
    return pd.DataFrame({
        "split": [ds.split] * len(ds), "source": ds.sources, "index": ds.indices,
        "path": [f"{ds.split}/{ds.classes[y]}/{f}" for y, f in zip(ds.labels.tolist(), ds.filenames)],
        "label_id": ds.labels, "label_name": [ds.classes[y] for y in ds.labels.tolist()],
        "image": list(ds.images),
    })


def write_cifar_batches(train: ImageSet, test: ImageSet, out: str | Path, num_train_batches: int = 5) -> Path:
    """Write two `ImageSet`s in the official CIFAR-10 "python version" layout.

    Args:
        train: the training images (32x32 for CIFAR tools to read them).
        test: the test images, written as `test_batch`.
        out: the folder to create `cifar-10-batches-py/` in.
        num_train_batches: how many `data_batch_N` files to split `train` over.

    Returns:
        The path of the `cifar-10-batches-py` folder (protocol-2 pickles, `batches.meta` included).
    """
    root = Path(out) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)

    def dump(ds: ImageSet, label: str, path: Path) -> None:
        rows = ds.images.transpose(0, 3, 1, 2).reshape(len(ds), -1)  # (N, 3072): R, G, B planes
        obj = {"batch_label": label, "labels": ds.labels.tolist(), "data": np.ascontiguousarray(rows),
               "filenames": list(ds.filenames)}
        path.write_bytes(pickle.dumps(obj, protocol=2))

    parts = np.array_split(np.arange(len(train)), num_train_batches)
    for b, idx in enumerate(parts, start=1):
        dump(train.subset(idx), f"training batch {b} of {num_train_batches}", root / f"data_batch_{b}")
    dump(test, "testing batch 1 of 1", root / "test_batch")
    meta = {"num_cases_per_batch": len(parts[0]), "label_names": list(train.classes), "num_vis": 3072}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root
