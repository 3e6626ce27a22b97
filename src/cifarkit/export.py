"""Export a checkpoint for deployment (ONNX or TorchScript) and prove the export is faithful.

Class names and preprocessing (input size, mean, std, eval resize/crop) travel inside the file
as metadata, so `cifarkit predict model.onnx ...` needs nothing else. After writing, the
exported model and PyTorch run the same batch of real images; the max abs logit difference and
top-1 agreement are reported, and a disagreement fails the export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.errors import CheckpointError, CifarkitError


@dataclass
class ExportReport:
    path: Path
    format: str
    max_abs_diff: float
    top1_agreement: float
    images: int


def _metadata(ck: dict[str, Any]) -> dict[str, str]:
    return {"cifarkit": json.dumps({"classes": ck["classes"], "preprocess": ck["preprocess"],
                                    "model": ck.get("model_name", "")})}


def load_onnx(path: str | Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise CifarkitError("ONNX needs onnxruntime: pip install 'cifarkit[onnx]'") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise CheckpointError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if "cifarkit" not in meta:
        raise CheckpointError(f"{path}: has no cifarkit metadata (classes, preprocessing); export it with "
                              "`cifarkit export`")
    return session, json.loads(meta["cifarkit"])


def export_model(ckpt: str | Path, fmt: str = "onnx", out: str | Path | None = None, dynamic_batch: bool = False,
                 check_images: torch.Tensor | None = None, tol: float = 1e-3) -> ExportReport:
    from cifarkit.data.loader import Preprocess, eval_transform
    from cifarkit.engine.restore import load_for_inference

    model, ck, cfg, prep = load_for_inference(ckpt, torch.device("cpu"))
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    s = prep.input_size
    ext = {"onnx": ".onnx", "torchscript": ".ts"}.get(fmt)
    if ext is None:
        raise CifarkitError(f"--format {fmt!r}: use onnx or torchscript")
    out = Path(out) if out else Path(ckpt).with_suffix(ext)
    batch = 8 if dynamic_batch else 1  # a fixed-shape export takes one image at a time
    dummy = torch.zeros(batch, 3, s, s)
    if fmt == "onnx":
        import onnx

        torch.onnx.export(model, (dummy,), str(out), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
                          opset_version=17, dynamo=False)
        m = onnx.load(str(out))
        for k, v in _metadata(ck).items():
            m.metadata_props.add(key=k, value=v)
        onnx.save(m, str(out))
    else:
        traced = torch.jit.trace(model, dummy)
        torch.jit.save(traced, str(out), _extra_files={"cifarkit.json": _metadata(ck)["cifarkit"]})

    # ---- parity check on real images ------------------------------------------------------------
    if check_images is None:
        from cifarkit.engine.setup import load_eval_split

        try:
            images, _, _ = load_eval_split(cfg, ck["classes"])
            check_images = images[:8]
        except CifarkitError:
            g = torch.Generator().manual_seed(0)  # data moved away: fall back to random pixels
            check_images = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, generator=g)
    x = eval_transform(check_images[:8], Preprocess(**ck["preprocess"]))  # (8, 3, S, S) real images
    with torch.no_grad():
        ref = model(x).float().numpy()
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    if fmt == "onnx":
        session, _ = load_onnx(out)
        got = np.concatenate([session.run(None, {"input": c.numpy()})[0] for c in chunks])
    else:
        loaded = torch.jit.load(str(out))
        with torch.no_grad():
            got = np.concatenate([loaded(c).float().numpy() for c in chunks])
    diff = float(np.abs(ref - got).max())
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    report = ExportReport(out, fmt, diff, agree, len(x))
    if agree < 1.0 or diff > tol * max(1.0, float(np.abs(ref).max())):
        raise CifarkitError(f"{out}: the exported model disagrees with PyTorch (max abs diff {diff:.2e}, "
                            f"top-1 agreement {agree * 100:.1f}%); do not deploy it")
    return report
