"""Grad-CAM and friends for every registered model, on top of pytorch-grad-cam.

The target layer is the registry's (`cam_layer`) or, for any other model, found by running one
input and taking the last module whose output is still a spatial map (H, W > 1): the last
feature block. `--layer` overrides it and `--list-layers` prints the candidates. The heatmap is
computed in fp32 on the exact evaluation input and resized to the original image's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cifarkit.errors import CifarkitError, ConfigError
from cifarkit.extras import require

if TYPE_CHECKING:
    from torch import nn

METHODS = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "eigencam": "EigenCAM",
    "layercam": "LayerCAM", "scorecam": "ScoreCAM", "hirescam": "HiResCAM",
}


def spatial_layers(model: nn.Module, input_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, output shape) of every module with a 4-D output larger than 1x1, in call order."""
    import torch

    found: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(m, inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
                found.append((name, tuple(out.shape[1:])))

        hooks.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return found


def default_layer(model: nn.Module, model_name: str, input_size: int) -> str:
    """The layer Grad-CAM uses by default: the model's registered one, else the last spatial layer."""
    from cifarkit.models import get_entry

    entry = get_entry(model_name)
    names = dict(model.named_modules())
    if entry and entry.cam_layer and entry.cam_layer in names:
        shapes = dict(spatial_layers(model, input_size))
        if entry.cam_layer in shapes:
            return entry.cam_layer
    cands = spatial_layers(model, input_size)
    if not cands:
        raise CifarkitError(f"{model_name}: no layer keeps a spatial map at {input_size} px; Grad-CAM needs one")
    # prefer the last *block* (a module with children) over its last activation
    last_blocks = [n for n, _ in cands if list(names[n].children())]
    return (last_blocks or [cands[-1][0]])[-1]


@dataclass
class CamResult:
    """A class-activation map and what it explains.

    Attributes:
        heatmap: (H, W) float32 in [0, 1], the input image's size.
        target: the class id explained.
        target_label: its name.
        score: the target's softmax probability, 0..1.
        predicted: the predicted class id.
        layer: the module the map was read from.
        method: the CAM method.
    """
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], the original image's size
    target: int
    target_label: str
    score: float  # softmax probability of the target class
    predicted: int
    layer: str
    method: str


def _resolve_target(target: str | int | None, classes: list[str]) -> int | None:
    if target is None or target == "":
        return None
    if isinstance(target, int) or str(target).isdigit():
        t = int(target)
        if not 0 <= t < len(classes):
            raise ConfigError(f"--target {t}: outside 0..{len(classes) - 1}")
        return t
    if target not in classes:
        import difflib

        near = difflib.get_close_matches(str(target), classes, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; classes are {', '.join(classes)}"
        raise ConfigError(f"--target {target!r}: not a class of this model{hint}")
    return classes.index(target)


def compute_cam(classifier: Any, image: Any, target: str | int | None = None, method: str = "gradcam",
                layer: str | None = None, aug_smooth: bool = False, eigen_smooth: bool = False) -> CamResult:
    """Class-activation heatmap for one image with a checkpoint-loaded `Classifier`.

    The predicted class and the target's score come from `classifier.logits` (its TTA and
    precision, as `predict` reports them); the heatmap is computed in fp32 on the plain view.

    Args:
        classifier: from `cifarkit.load("best.pt")` (not an .onnx file: no gradients).
        image: a path, a PIL image or an (H, W, 3) uint8 array.
        target: the class to explain, by name or id; None explains the predicted class.
        method: gradcam, gradcam++, xgradcam, eigencam, layercam, scorecam or hirescam.
        layer: a module name (see `spatial_layers`); None takes `default_layer`.
        aug_smooth: average over flips and scales (slower, smoother).
        eigen_smooth: keep the first principal component (less noise).

    Returns:
        A `CamResult` with the heatmap at the image's size.

    Raises:
        CifarkitError: grad-cam is not installed or the model is an ONNX file.
        ConfigError: an unknown method, target or layer.
    """
    import torch

    pgc = require("pytorch_grad_cam", "Grad-CAM")
    ClassifierOutputTarget = require("pytorch_grad_cam.utils.model_targets", "Grad-CAM").ClassifierOutputTarget
    from cifarkit.data.loader import eval_transform
    from cifarkit.infer.evaluate import ranked
    from cifarkit.predict import to_uint8_chw

    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    model = getattr(classifier, "model", None)
    if model is None:
        raise CifarkitError(f"{classifier.source}: Grad-CAM needs the PyTorch checkpoint (.pt) the model was "
                            "exported from; an exported .onnx file has no gradients to read")
    img = to_uint8_chw(image)  # (3, H, W)
    # predicted class and score from the one inference path (TTA, precision): what predict says
    logits = classifier.logits([img])  # (1, C)
    probs = torch.softmax(logits, 1)[0]
    pred = int(ranked(logits, 1)[0, 0])
    t = _resolve_target(target, classifier.classes)
    t = pred if t is None else t
    # the heatmap itself in fp32 on the plain evaluation view
    model = model.float().eval().to(memory_format=torch.contiguous_format)
    device = next(model.parameters()).device
    name = classifier.config.model.name
    layer = layer or default_layer(model, name, classifier.prep.input_size)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ConfigError(f"--layer {layer!r}: no such module; see --list-layers")
    if layer not in dict(spatial_layers(model, classifier.prep.input_size)):
        raise ConfigError(f"--layer {layer!r}: its output is not a spatial map (B, C, H, W) with H, W > 1, "
                          "which Grad-CAM needs; pick one from --list-layers")
    x = eval_transform(img[None], classifier.prep).to(device)  # (1, 3, S, S)
    cam_cls = getattr(pgc, METHODS[method])
    try:
        with cam_cls(model=model, target_layers=[modules[layer]]) as cam:
            if method == "scorecam":
                cam.batch_size = 32
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(t)], aug_smooth=aug_smooth,
                       eigen_smooth=eigen_smooth)[0]  # (S, S) in [0, 1]
    finally:
        if classifier.config is not None and classifier.config.train.channels_last:
            model.to(memory_format=torch.channels_last)  # give the classifier its model back as it was
    heat = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    h, w = img.shape[-2:]
    heat = torch.nn.functional.interpolate(heat, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    heat = heat.clamp(0, 1).numpy()
    return CamResult(heat, t, classifier.classes[t], float(probs[t]), pred, layer, method)


def overlay(image_hwc: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Jet-coloured heatmap blended over the image; both (H, W[, 3]), uint8 out."""
    from matplotlib import colormaps

    colored = colormaps["jet"](heat)[..., :3]
    return np.clip((1 - alpha) * image_hwc / 255.0 + alpha * colored, 0, 1).__mul__(255).astype(np.uint8)


def save_cam_figure(image: Any, res: CamResult, out: str | Path, true: str | None = None) -> Path:
    """Save the image and its heatmap overlay side by side, the class and score in the title.

    Args:
        image: the image `res` was computed for (path, PIL image or array).
        res: `compute_cam`'s result.
        out: the image file to write.
        true: the image's true label when known (e.g. its class folder): shown in the title.

    Returns:
        `out`, as a Path.
    """
    from cifarkit.plotting import pyplot, save
    from cifarkit.predict import to_uint8_chw

    plt = pyplot()
    arr = to_uint8_chw(image).permute(1, 2, 0).numpy()
    small = max(arr.shape[:2]) <= 64
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.5))
    panels = ((axes[0], arr, "input"), (axes[1], overlay(arr, res.heatmap), f"{res.method} ({res.layer})"))
    for ax, img, title in panels:
        ax.imshow(img, interpolation="nearest" if small else "antialiased")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    title = f"{res.target_label}: {res.score:.2f}"
    if res.target != res.predicted:
        title += " (not the predicted class)"
    if true is not None:
        wrong = res.target == res.predicted and true != res.target_label
        title += f"; true: {true}" + (" (the prediction is wrong)" if wrong else "")
    fig.suptitle(title, fontsize=11)
    save(fig, out)
    return Path(out)
