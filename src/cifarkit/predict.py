"""Predict: one image, a folder, a batch; from a checkpoint or an exported ONNX file.

    model = cifarkit.load("work_dirs/cifar10_fast/best.pt")
    result = model.predict("cat.jpg")          # Prediction(label='cat', score=0.93, topk=[...])
    fig = cifarkit.show_result("cat.jpg", result)

The preprocessing comes from the checkpoint and is the evaluation transform itself
(`data.loader.eval_transform`), so predicting an exported test folder gives, image for image,
the predictions `cifarkit eval` scores. Files are decoded in a thread pool and the network runs
on batches (bf16 on CPU), which is what makes a folder fast.
"""

from __future__ import annotations

import glob
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.data.decode import is_image_name, load_rgb
from cifarkit.data.loader import Preprocess, eval_transform
from cifarkit.errors import CifarkitError, DataError


@dataclass
class Prediction:
    label: str
    label_id: int
    score: float
    topk: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, **{k: v for k, v in asdict(self).items() if k != "path"}}


ImageLike = "str | Path | np.ndarray | PIL.Image.Image"


def to_uint8_chw(img: Any) -> torch.Tensor:
    """A path, PIL image or (H, W, 3) uint8 array -> (3, H, W) uint8 tensor, decoded like training."""
    if isinstance(img, (str, Path)):
        arr = load_rgb(img)
    elif isinstance(img, np.ndarray):
        arr = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        if arr.dtype != np.uint8 or arr.shape[2] != 3:
            raise DataError(f"image array must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    else:
        from cifarkit.data.decode import to_rgb

        arr = np.asarray(to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class Classifier:
    """A trained model plus everything needed to use it: classes and preprocessing."""

    def __init__(self, forward, classes: list[str], prep: Preprocess, batch_size: int = 256, source: str = ""):
        self._forward = forward  # float (B, 3, S, S) -> logits (B, C) float32 CPU tensor
        self.classes = list(classes)
        self.prep = prep
        self.batch_size = batch_size
        self.source = source

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> Classifier:
        from cifarkit.engine.evaluate import autocast_ctx
        from cifarkit.engine.restore import load_for_inference
        from cifarkit.engine.setup import amp_dtype, resolve_device

        dev = resolve_device(device)
        model, ck, cfg, prep = load_for_inference(path, dev)
        amp = amp_dtype(cfg.train.amp, dev)

        @torch.no_grad()
        def forward(x: torch.Tensor) -> torch.Tensor:
            x = x.to(dev)
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_ctx(dev, amp):
                return model(x).float().cpu()

        c = cls(forward, ck["classes"], prep, cfg.eval.batch_size, str(path))
        c.model = model  # type: ignore[attr-defined]  # for Grad-CAM and export
        c.config = cfg  # type: ignore[attr-defined]
        return c

    @classmethod
    def from_onnx(cls, path: str | Path) -> Classifier:
        from cifarkit.export import load_onnx

        session, meta = load_onnx(path)
        name = session.get_inputs()[0].name
        fixed = session.get_inputs()[0].shape[0]

        def forward(x: torch.Tensor) -> torch.Tensor:
            arr = x.numpy().astype(np.float32)
            if isinstance(fixed, int):  # exported without --dynamic-batch: fixed-size batches, last one padded
                n = len(arr)
                pad = (-n) % fixed
                arr = np.concatenate([arr, np.zeros((pad, *arr.shape[1:]), np.float32)]) if pad else arr
                outs = [session.run(None, {name: arr[i:i + fixed]})[0] for i in range(0, len(arr), fixed)]
                return torch.from_numpy(np.concatenate(outs)[:n])
            return torch.from_numpy(session.run(None, {name: arr})[0])

        prep = Preprocess(**meta["preprocess"])
        return cls(forward, meta["classes"], prep, 256, str(path))

    # ---- prediction -------------------------------------------------------------------------
    def logits(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 (3, H, W) images of any sizes -> logits (N, C), in batches."""
        out = []
        for k in range(0, len(images), self.batch_size):
            chunk = images[k:k + self.batch_size]
            if all(t.shape == chunk[0].shape for t in chunk):
                x = eval_transform(torch.stack(chunk), self.prep)  # the exact evaluation transform
            else:
                x = torch.cat([eval_transform(t[None], self.prep) for t in chunk])
            out.append(self._forward(x))
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def _results(self, logits: torch.Tensor, topk: int, paths: list[str | None]) -> list[Prediction]:
        probs = torch.softmax(logits.float(), dim=1)
        k = min(topk, len(self.classes))
        scores, ids = probs.topk(k, dim=1)
        res = []
        for i in range(len(probs)):
            top = [{"label": self.classes[j], "label_id": int(j), "score": float(s)}
                   for s, j in zip(scores[i].tolist(), ids[i].tolist())]
            res.append(Prediction(top[0]["label"], top[0]["label_id"], top[0]["score"], top, paths[i]))
        return res

    def predict(self, inputs: Any, topk: int = 5) -> Prediction | list[Prediction]:
        """One image (path, PIL image or array) -> Prediction; a list -> list of Predictions."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        tensors = [to_uint8_chw(x) for x in items]
        paths = [str(x) if isinstance(x, (str, Path)) else None for x in items]
        res = self._results(self.logits(tensors), topk, paths)
        return res[0] if single else res

    def predict_files(self, paths: Iterable[Path], topk: int = 5, workers: int = 4,
                      chunk: int = 1024) -> Iterator[tuple[Path, Prediction | None, str | None]]:
        """Yield (path, prediction, None) or (path, None, error) for each file, in order."""
        def decode(p: Path):
            try:
                return to_uint8_chw(p), None
            except CifarkitError as e:
                return None, str(e)

        paths = list(paths)
        with ThreadPoolExecutor(workers) as pool:
            for k in range(0, len(paths), chunk):
                part = paths[k:k + chunk]
                decoded = list(pool.map(decode, part))
                ok = [i for i, (t, _) in enumerate(decoded) if t is not None]
                preds = self._results(self.logits([decoded[i][0] for i in ok]), topk, [str(part[i]) for i in ok])
                by_index = dict(zip(ok, preds))
                for i, p in enumerate(part):
                    yield p, by_index.get(i), decoded[i][1]


def load(path: str | Path, device: str = "auto") -> Classifier:
    """`cifarkit.load`: a checkpoint (.pt) or an exported model (.onnx) ready to predict."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return Classifier.from_onnx(p)
    return Classifier.from_checkpoint(p, device)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursive), globs and '-' (paths from stdin) -> (image files, problems)."""
    files: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        if item == "-":
            files += [Path(line.strip()) for line in sys.stdin if line.strip()]
            continue
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_name(f)
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
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


def show_result(img: Any, result: Prediction, classes_shown: int = 5):
    """A matplotlib figure: the image (upscaled if tiny) beside a top-k bar chart."""
    from cifarkit.analysis.plotting import pyplot

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
