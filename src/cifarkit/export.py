"""Export a checkpoint for deployment (ONNX or TorchScript) and prove the export is faithful.

Class names and preprocessing (input size, mean, std, eval resize/crop) travel inside the file
as metadata, so `cifarkit predict model.onnx ...` needs nothing else. After writing, the
exported model and the checkpoint (fp32) run the same images through the one inference path:
real evaluation images of `--data` or the run's data root, or, when that data is not on this
machine, random pixels, and the report says which. The max abs logit difference and top-1
agreement are reported, and a disagreement fails the export. The file is written under a
temporary name and renamed, and an existing one is only replaced with `overwrite`.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarkit.errors import CifarkitError
from cifarkit.extras import require
from cifarkit.infer.inference import Inference, eval_data
from cifarkit.safepath import check_apart, output_file, real_path


@contextlib.contextmanager
def torchscript_quiet():
    """torch 2.10+ deprecates torch.jit (a FutureWarning per trace, save and load, pointing at
    torch.export). We keep the TorchScript format — a .ts file runs in C++ LibTorch without Python,
    which torch.export's .pt2 does not without AOTInductor — and say so once in the CLI and the
    docs instead of printing torch's four warnings to the user; ONNX is the recommended format."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.\w+` is deprecated")
        yield


@dataclass
class ExportReport:
    """What `export_model` wrote and how well it matched the checkpoint.

    Attributes:
        path: the exported file.
        format: "onnx" or "torchscript".
        max_abs_diff: the largest logit difference to the checkpoint.
        top1_agreement: the fraction of check images with the same top-1, 0..1.
        images: how many images the check ran on.
        image_source: what they were ("real images" or random pixels).
    """
    path: Path
    format: str
    max_abs_diff: float
    top1_agreement: float
    images: int
    image_source: str = "real images"  # what the parity check ran on


def _metadata(inf: Inference) -> str:
    """What `Inference.from_onnx` needs: classes, preprocessing, the run's TTA, the model's name and
    the post-hoc logit adjustment baked into the graph (for display: the graph already adds it)."""
    return json.dumps({"classes": inf.classes, "preprocess": inf.prep.as_dict(), "model": inf.config.model.name,
                       "tta": inf.config.eval.tta, "logit_adjust": inf.logit_adjust, "temperature": inf.temperature})


class _PostHoc(torch.nn.Module):
    """The model with what the one inference path adds after it baked in: (logits + bias) / T, the
    run's post-hoc logit adjustment (C,) and the calibration temperature."""

    def __init__(self, model: torch.nn.Module, bias: torch.Tensor | None, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("bias", (bias if bias is not None else torch.zeros(0)).float().clone())
        self.has_bias = bias is not None
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        if self.has_bias:
            z = z + self.bias
        return z / self.temperature if self.temperature != 1.0 else z


def _parity_images(inf: Inference, data: str | None, n: int) -> tuple[torch.Tensor, str]:
    """Up to `n` evaluation images of `data` (default: the run's data.root), or, when that data is
    not there, random pixels, said so."""
    try:
        images, _, name = eval_data(inf, data)
        return images[:n], f"real images ({data or inf.config.data.root} [{name}])"
    except CifarkitError as e:
        if data is not None:
            raise
        g = torch.Generator().manual_seed(0)
        s = inf.prep.input_size
        return (torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g),
                f"random-pixel images (the run's data is not readable here: {e}; pass --data)")


def export_model(ckpt: str | Path, fmt: str = "onnx", out: str | Path | None = None, *, dynamic_batch: bool = False,
                 check_images: torch.Tensor | None = None, tol: float = 1e-3, data: str | None = None,
                 overwrite: bool = False, logit_adjust: float | None = None) -> ExportReport:
    """Write a checkpoint as ONNX (opset 17) or TorchScript and check it against the checkpoint.

    The parity check runs the exported file and the checkpoint (fp32, no TTA) through the one
    inference path on `check_images`, else on 8 images of `data` / the run's evaluation split, else
    on random pixels (and says so). ONNX files carry the classes, preprocessing and TTA in their
    metadata, so `cifarkit.load("model.onnx")` predicts like the checkpoint. A post-hoc logit
    adjustment (the run's `eval.logit_adjust`, or `logit_adjust`) is baked into the graph.

    Args:
        ckpt: the checkpoint (.pt).
        fmt: "onnx" or "torchscript".
        out: the file to write (default: `ckpt` with .onnx or .ts).
        dynamic_batch: ONNX with a variable batch dimension.
        check_images: (N, 3, H, W) uint8 images for the parity check.
        tol: the largest relative logit difference accepted.
        data: a dataset path to take the check images from.
        overwrite: replace an existing `out`.
        logit_adjust: post-hoc logit adjustment tau to bake in (default: the run's `eval.logit_adjust`).

    Returns:
        An `ExportReport`.

    Raises:
        CifarkitError: an unknown format, `out` exists without `overwrite` or is not a regular file
            (a folder, device, FIFO, link), is the checkpoint or lies inside `data`, the
            exporter package is missing, or the exported model disagrees with the checkpoint.
    """
    ext = {"onnx": ".onnx", "torchscript": ".ts"}.get(fmt)
    if ext is None:
        raise CifarkitError(f"--format {fmt!r}: use onnx or torchscript")
    if fmt == "onnx":  # both before any work: the export and its parity check
        onnx = require("onnx", "ONNX export")
        require("onnxruntime", "ONNX export's parity check")
    out = Path(out) if out else Path(ckpt).with_suffix(ext)
    if out.is_dir() and not out.is_symlink():
        raise CifarkitError(f"{out}: is a folder; give --out a file name ending in {ext}")
    if real_path(out) == real_path(ckpt):
        raise CifarkitError(f"--out {out}: that is the input checkpoint; give the export a name of its own")
    output_file(out, overwrite)  # nothing there or a regular file (never a device, FIFO or link), before any work
    check_apart(out, [data])
    ref = Inference.from_checkpoint(ckpt, device="cpu", tta="none", precision="fp32", logit_adjust=logit_adjust)
    model = ref.model.float().eval().to(memory_format=torch.contiguous_format)
    if ref.logit_bias is not None or ref.temperature != 1.0:
        model = _PostHoc(model, ref.logit_bias, ref.temperature).eval()
    s = ref.prep.input_size
    batch = 8 if dynamic_batch else 1  # a fixed-shape export takes one image at a time
    dummy = torch.zeros(batch, 3, s, s)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        if fmt == "onnx":
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                              opset_version=17, dynamo=False)
            m = onnx.load(str(tmp))
            m.metadata_props.add(key="cifarkit", value=_metadata(ref))
            onnx.save(m, str(tmp))
        else:
            with torchscript_quiet():
                traced = torch.jit.trace(model, dummy)
                torch.jit.save(traced, str(tmp), _extra_files={"cifarkit.json": _metadata(ref)})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)

    # ---- parity check: both through the one inference path -----------------------------------
    source = "the given images"
    if check_images is None:
        check_images, source = _parity_images(ref, data, 8)
    if fmt == "onnx":
        exported = Inference.from_onnx(out, tta="none")
    else:
        with torchscript_quiet():
            loaded = torch.jit.load(str(out))
        exported = Inference(torch.no_grad()(lambda x: loaded(x).float()), ref.classes, ref.prep, "none")
    want, got = ref.logits(check_images).numpy(), exported.logits(check_images).numpy()
    diff = float(np.abs(want - got).max())
    agree = float((want.argmax(1) == got.argmax(1)).mean())
    report = ExportReport(out, fmt, diff, agree, len(check_images), source)
    if agree < 1.0 or diff > tol * max(1.0, float(np.abs(want).max())):
        raise CifarkitError(f"{out}: the exported model disagrees with PyTorch (max abs diff {diff:.2e}, "
                            f"top-1 agreement {agree * 100:.1f}%); do not deploy it")
    return report
