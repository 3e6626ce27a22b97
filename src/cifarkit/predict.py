"""Predict: one image, a folder, a batch; from a checkpoint or an exported ONNX file.

    model = cifarkit.load("work_dirs/cifar10_fast/best.pt")
    result = model.predict("cat.jpg")          # Prediction(label='cat', score=0.93, topk=[...])
    fig = cifarkit.show_result("cat.jpg", result)

Logits come from `infer.inference.Inference`, the one path that `cifarkit eval` uses too: the
checkpoint's evaluation transform, its TTA (`eval.tta`, overridable) and the precision this
machine is fast at (bf16 autocast only on CUDA or a CPU with AMX / AVX512-BF16), so predicting
an exported test folder gives, image for image, the predictions `cifarkit eval` scores. Files
are decoded in a thread pool and the network runs on batches, which is what makes a folder fast.
"""

from __future__ import annotations

import glob
import itertools
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cifarkit.data.decode import DECODE_MAX_SIDE, is_image_name, load_rgb, reduce_while_decoding, to_rgb
from cifarkit.errors import CifarkitError, ConfigError, DataError
from cifarkit.infer.evaluate import ranked
from cifarkit.infer.inference import Inference, check_precision
from cifarkit.options import DEVICE_DEFAULT
from cifarkit.saferead import Within
from cifarkit.userfile import read_user_lines

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        label: the top-1 class name.
        label_id: its class id.
        score: its softmax probability, 0..1.
        topk: the best classes as dicts (label, label_id, score), best first.
        path: the image's path, when it was given as one.
        tta: the test-time augmentation the logits were computed with.
        precision: "fp32", "bf16" or "fp16": what this machine computed in (`--precision`, default auto).
        logit_adjust: the post-hoc logit adjustment tau (0 = none).
        temperature: the softmax temperature of a calibrated model (1 = none; `cifarkit calibrate`).
    """
    label: str
    label_id: int
    score: float  # softmax probability of `label`
    topk: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None
    tta: str = "none"  # what the logits were computed with
    precision: str = "fp32"
    logit_adjust: float = 0.0
    temperature: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, path first (what `cifarkit predict --json` prints)."""
        return {"path": self.path, **{k: v for k, v in asdict(self).items() if k != "path"}}


ImageLike = "str | Path | np.ndarray | PIL.Image.Image"
MAX_STDIN_PATHS = 10_000_000  # `predict -`: more paths than any dataset holds (each at most 4096 characters)
CHUNK_PIXELS = 1 << 26  # predict_files: decoded pixels held before a forward pass (67 Mpx, ~200 MB of uint8)


def to_uint8_chw(img: Any) -> torch.Tensor:
    """A path, PIL image or (H, W, 3) / (H, W) uint8 array -> (3, H, W) uint8 tensor, decoded like
    training. An image over DECODE_MAX_SIDE px a side is reduced by an integer box filter (a file
    while it is decoded, `data.decode.load_rgb`), so one huge input never becomes several
    full-size copies.

    Raises:
        DataError: the file cannot be decoded, or the array is empty or of another shape or dtype.
    """
    if isinstance(img, (str, Path)):
        arr = load_rgb(img, max_side=DECODE_MAX_SIDE)
    elif isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3) \
                or 0 in img.shape:
            raise DataError(f"image array must be (H, W, 3) or (H, W) uint8 with H, W >= 1, got {img.shape} "
                            f"{img.dtype}")
        arr = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        if max(arr.shape[:2]) > DECODE_MAX_SIDE:
            from PIL import Image

            arr = np.asarray(reduce_while_decoding(Image.fromarray(arr), DECODE_MAX_SIDE))
    else:
        from PIL import Image

        if not isinstance(img, Image.Image):
            raise DataError(f"cannot predict a {type(img).__name__}: give a path, a PIL image or an (H, W, 3) "
                            "uint8 array")
        if 0 in img.size:
            raise DataError(f"image is empty ({img.size[0]}x{img.size[1]} pixels)")
        arr = np.asarray(to_rgb(reduce_while_decoding(img, DECODE_MAX_SIDE)), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class Classifier(Inference):
    """`Inference` (the one checkpoint/ONNX -> logits path) plus prediction records."""

    def records(self, logits: torch.Tensor, topk: int, paths: list[str | None], tta: str | None = None
                ) -> list[Prediction]:
        """Prediction records for logits (N, C) from `logits(...)`: what `--json` prints and serve returns."""
        probs = torch.softmax(logits.float(), dim=1)
        k = min(topk, len(self.classes))
        ids = ranked(logits, k)  # the same order (and tie-break) as eval's top-1 / top-5
        settings = self.settings(tta)
        res = []
        for i in range(len(probs)):
            top = [{"label": self.classes[j], "label_id": int(j), "score": float(probs[i, j])} for j in ids[i].tolist()]
            res.append(Prediction(top[0]["label"], top[0]["label_id"], top[0]["score"], top, paths[i], **settings))
        return res

    def predict(self, inputs: Any, topk: int = 5, tta: str | None = None) -> Prediction | list[Prediction]:
        """Predict one image or a list of images.

        Args:
            inputs: a path, a PIL image or an (H, W, 3) uint8 array, or a list of them.
            topk: how many classes each `Prediction.topk` holds.
            tta: none | flip | flip_translate (default: the model's own).

        Returns:
            A `Prediction` for one image, a list of them for a list.

        Raises:
            DataError: an image cannot be read.
            ConfigError: `topk` below 1 or an unknown `tta`.
        """
        check_topk(topk)
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        if not items:
            raise DataError("nothing to predict: the list of images is empty")
        tensors = [to_uint8_chw(x) for x in items]
        paths = [str(x) if isinstance(x, (str, Path)) else None for x in items]
        res = self.records(self.logits(tensors, tta), topk, paths, tta)
        return res[0] if single else res

    def predict_files(self, paths: Iterable[Path], topk: int = 5, workers: int = 4, chunk: int = 1024,
                      tta: str | None = None) -> Iterator[tuple[Path, Prediction | None, str | None]]:
        """Yield (path, prediction, None) or (path, None, error) for each file, in order.

        Memory is bounded for the whole command, not per image: at most 2 x `workers` files are
        being decoded or waiting at once (each reduced to DECODE_MAX_SIDE while decoding; large raw
        decodes take turns), and decoded images are run through the model once `chunk` of them or
        CHUNK_PIXELS pixels are held, whichever comes first."""
        check_topk(topk)

        def decode(p: Path) -> tuple[torch.Tensor | None, str | None]:
            try:
                return to_uint8_chw(p), None
            except CifarkitError as e:
                return None, str(e)

        def run(held: list[tuple[Path, torch.Tensor | None, str | None]]):
            ok = [i for i, (_, t, _) in enumerate(held) if t is not None]
            recs = self.records(self.logits([held[i][1] for i in ok], tta), topk, [str(held[i][0]) for i in ok],
                                tta) if ok else []  # a chunk of unreadable files runs no forward pass
            by_index = dict(zip(ok, recs))
            return [(p, by_index.get(i), err) for i, (p, _, err) in enumerate(held)]

        todo = iter(list(paths))
        held: list[tuple[Path, torch.Tensor | None, str | None]] = []
        pixels = 0
        with ThreadPoolExecutor(workers) as pool:
            window = deque((p, pool.submit(decode, p)) for p in itertools.islice(todo, 2 * workers))
            while window:
                p, fut = window.popleft()
                for nxt in itertools.islice(todo, 1):
                    window.append((nxt, pool.submit(decode, nxt)))
                t, err = fut.result()
                held.append((p, t, err))
                pixels += t.shape[1] * t.shape[2] if t is not None else 0
                if len(held) >= chunk or pixels >= CHUNK_PIXELS:
                    yield from run(held)
                    held, pixels = [], 0
        if held:
            yield from run(held)


def check_topk(topk: int) -> int:
    """Return `topk` if it is a whole number >= 1.

    Raises:
        ConfigError: otherwise.
    """
    if not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"--topk {topk}: must be a whole number >= 1")
    return topk


def load(path: str | Path, *, device: str = DEVICE_DEFAULT, tta: str | None = None,
         logit_adjust: float | None = None, precision: str | None = None) -> Classifier:
    """Open a checkpoint (.pt) or an exported model (.onnx), ready to predict.

    Args:
        path: the model file; it carries the classes and the preprocessing, nothing else is needed.
        device: "auto" (a GPU when there is one), "cpu", "cuda", ...
        tta: none | flip | flip_translate; default the model's own (its run's `eval.tta`), so
            predictions match `cifarkit eval` image for image.
        logit_adjust: post-hoc logit adjustment tau (a checkpoint only); default the run's
            `eval.logit_adjust`.
        precision: auto (default: what this machine is fast at, whatever the run trained in) |
            fp32 | bf16 | fp16; an .onnx file always runs in fp32.

    Returns:
        A `Classifier` (`predict`, `predict_files`, `logits`, `classes`).

    Raises:
        CheckpointError: the file is missing, edited or not a cifarkit model.
        ConfigError: `logit_adjust` differs from the one an ONNX file was exported with.
    """
    if Path(path).suffix.lower() == ".onnx":
        if check_precision(precision) not in ("auto", "fp32", "none"):
            raise ConfigError(f"{path}: an ONNX model runs in fp32 (onnxruntime on the CPU); drop --precision "
                              f"{precision}")
        clf = Classifier.from_onnx(path, tta)
        if logit_adjust is not None and logit_adjust != clf.logit_adjust:
            raise ConfigError(f"{path}: has logit adjustment {clf.logit_adjust:g} in its graph; drop --logit-adjust, "
                              "or export the checkpoint again with `cifarkit export --logit-adjust TAU`")
        return clf
    return Classifier.from_checkpoint(path, device=device, tta=tta, precision=precision, logit_adjust=logit_adjust)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursive), globs and '-' (paths from stdin) -> (image files, problems).

    A file found in a folder is skipped (one problem) when it is a symlink leading out of that
    folder (`saferead.Within`); files named on the command line or on stdin are the user's own choice."""
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        if item == "-":
            # bounded: `predict -` fed from /dev/zero (no newline, ever) is one error, not a MemoryError
            files += [Path(line) for line in read_user_lines(sys.stdin, "the paths on stdin (-)", MAX_STDIN_PATHS)]
            continue
        p = Path(item)
        if p.is_dir():
            within = Within(p)  # a folder's files stay inside it: a link out is named, not read
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f)
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            files += [f for f in found if not within.link_out(f)]
            problems += [f"{f}: a link leading outside {p} (to {within.target(f)}); skipped, name the file "
                         "itself to predict it" for f in found if within.link_out(f)]
        elif p.exists():
            files.append(p)
        elif any(ch in item for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
            files += matched
            if not matched:
                problems.append(f"{item}: the pattern matches no file")
        else:
            problems.append(f"{item}: no such file or folder")
    return files, problems


def show_result(img: Any, result: Prediction, classes_shown: int = 5) -> Figure:
    """A matplotlib figure: the image (upscaled without smoothing if tiny) beside a top-k bar chart.

    Args:
        img: what was predicted: a path, a PIL image or an (H, W, 3) uint8 array.
        result: its `Prediction`.
        classes_shown: how many of the top classes the bar chart shows.

    Returns:
        The `matplotlib.figure.Figure`; save it with `fig.savefig(path)`.
    """
    from cifarkit.plotting import pyplot

    plt = pyplot()
    arr = to_uint8_chw(img).permute(1, 2, 0).numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.5, 3.2), gridspec_kw={"width_ratios": [1, 1.3]})
    a.imshow(arr, interpolation="nearest" if max(arr.shape[:2]) <= 64 else "antialiased")
    a.axis("off")
    a.set_title(f"{result.label} ({result.score:.2f})")
    top = result.topk[:classes_shown][::-1]
    b.barh([t["label"] for t in top], [t["score"] for t in top], color=["#999"] * (len(top) - 1) + ["#1f77b4"])
    b.set_xlim(0, 1)
    b.set_xlabel("probability")
    fig.tight_layout()
    return fig
