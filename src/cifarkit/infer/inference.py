"""The one inference path: checkpoint or ONNX file -> evaluation transform -> optional TTA -> logits.

`cifarkit eval`, `predict`, `analyze`, `report`, `cam` and the export's parity check all get their
logits from `Inference.logits`, so a test folder exported from a dataset is predicted exactly as
`eval` scores that dataset: same transform (`data.loader.eval_transform`), same TTA, same
precision, same argmax tie-break (`evaluate.ranked`: the lowest class id wins a tie).

Defaults: TTA from the checkpoint's `eval.tta` (an ONNX file's metadata); precision from the
machine that runs the inference, not the one that trained (`--precision auto`, the rule of
`infer.device.amp_dtype`: bf16 autocast only on CUDA or a CPU with AMX / AVX512-BF16, fp32
elsewhere; fp32 logits out either way; an ONNX file runs in fp32); post-hoc logit adjustment from
`eval.logit_adjust` (an ONNX file has it in its graph). TTA can be overridden per call, precision
and (for a checkpoint) the adjustment when the model is loaded; every result says which were used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarkit.config import Config
from cifarkit.data.loader import Preprocess, to_chw_tensor
from cifarkit.data.splits import load_eval_set, load_eval_split
from cifarkit.data.stats import pixel_hashes
from cifarkit.errors import CheckpointError, CifarkitError, ConfigError, DataError
from cifarkit.extras import require
from cifarkit.infer.device import amp_dtype, precision_name, resolve_device, warn_slow_precision
from cifarkit.infer.evaluate import TTA_MODES, metrics_from_logits, model_forward, predict_logits
from cifarkit.infer.prior import posthoc_bias
from cifarkit.infer.restore import check_classes, check_preprocess, load_for_inference
from cifarkit.options import DEVICE_DEFAULT, PRECISIONS

PRECISION_CHOICES = PRECISIONS


def check_precision(precision: str | None) -> str:
    """`precision` ("auto" when None) when it is one of auto | fp32 | bf16 | fp16 (or none = fp32).

    Raises:
        ConfigError: it is anything else.
    """
    if precision is None:
        return "auto"
    if precision not in (*PRECISION_CHOICES, "none"):
        raise ConfigError(f"--precision {precision!r}: choose {', '.join(PRECISION_CHOICES)}")
    return precision


def check_tta(tta: str | None) -> str | None:
    """`tta` unchanged when it is None (the model's own default) or a known mode.

    Raises:
        ConfigError: `tta` is not one of none, flip, flip_translate.
    """
    if tta is not None and tta not in TTA_MODES:
        raise ConfigError(f"--tta {tta!r}: choose one of {', '.join(TTA_MODES)}")
    return tta


@dataclass(frozen=True)
class InferOptions:
    """How to run a checkpoint: the options every command that loads one shares (eval, predict,
    analyze, robustness, calibrate, cam, serve, export parity), each with the checkpoint's own
    value as its default.

    Attributes:
        data: the dataset to evaluate on (None: the run's `data.root`).
        split: its split (None: the run's evaluation split).
        tta: none | flip | flip_translate (`options.TTA_LEVELS`; None: the run's `eval.tta`).
        precision: auto | fp32 | bf16 | fp16 (`options.PRECISIONS`; None: auto).
        device: auto | cpu | cuda | cuda:N (`options.DEVICE_DEFAULT`: auto).
        logit_adjust: post-hoc tau >= 0 (None: the run's `eval.logit_adjust`).
        temperature: the logits' divisor (None: the checkpoint's, 1 unless calibrated).
    """

    data: str | None = None
    split: str | None = None
    tta: str | None = None
    precision: str | None = None
    device: str = DEVICE_DEFAULT
    logit_adjust: float | None = None
    temperature: float | None = None

    def load(self, path: str | Path) -> Inference:
        """The checkpoint at `path`, ready to turn pixels into logits with these options."""
        return Inference.from_checkpoint(path, device=self.device, tta=self.tta, precision=self.precision,
                                         logit_adjust=self.logit_adjust, temperature=self.temperature)


@dataclass
class Inference:
    """A trained model with everything needed to turn uint8 pixels into logits."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # normalised float (B, 3, S, S) -> float32 logits (B, C)
    classes: list[str]
    prep: Preprocess
    tta: str = "none"  # default test-time augmentation (from the model file)
    precision: str = "fp32"
    batch_size: int = 256
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    model: torch.nn.Module | None = None  # PyTorch checkpoints only: Grad-CAM needs the module
    config: Config | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # checkpoint: epoch, best_top1, class_counts; ONNX: model
    logit_adjust: float = 0.0  # post-hoc tau: `forward` already adds -tau * log prior to the logits
    logit_bias: torch.Tensor | None = None  # that (C,) bias, for an export to bake into its graph
    temperature: float = 1.0  # `forward` already divides the logits by it (`cifarkit calibrate`)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = DEVICE_DEFAULT, tta: str | None = None,
                        precision: str | None = None, logit_adjust: float | None = None,
                        temperature: float | None = None) -> Inference:
        """`precision`: auto (None) = what this machine is fast at (`infer.device.amp_dtype`), whatever
        the run trained in; or fp32 | bf16 | fp16 (none = fp32).
        `logit_adjust`: None = the run's `eval.logit_adjust`, or the post-hoc tau to use (>= 0).
        `temperature`: None = the checkpoint's (1 unless `cifarkit calibrate` wrote it), or the one
        to use; the logits (after any logit adjustment) are divided by it, which leaves top-1 as is."""
        precision = check_precision(precision)
        dev = resolve_device(device)
        model, ck, cfg, prep = load_for_inference(path, dev)
        tau = cfg.eval.logit_adjust if logit_adjust is None else check_tau(logit_adjust)
        counts = ck.get("class_counts")
        if tau and not (isinstance(counts, list) and len(counts) == len(ck["classes"])
                        and all(isinstance(c, int) and c >= 0 for c in counts)):
            raise CheckpointError(f"{path}: post-hoc logit adjustment needs the training class counts, which this "
                                  "checkpoint does not record; set eval.logit_adjust 0 (or pass --logit-adjust 0)")
        bias = posthoc_bias(tau, counts)
        amp = amp_dtype(precision, dev)
        if precision != "auto":
            warn_slow_precision(amp, dev, f"--precision {precision}")
        temp = check_temperature(ck.get("temperature", 1.0) if temperature is None else temperature, path)
        forward = model_forward(model, dev, amp, cfg.train.channels_last, bias)
        if temp != 1.0:
            unscaled = forward
            forward = lambda x: unscaled(x) / temp  # noqa: E731
        return cls(forward, list(ck["classes"]), prep, check_tta(tta) or cfg.eval.tta, precision_name(amp),
                   cfg.eval.batch_size, str(path), dev, model, cfg,
                   {"epoch": ck.get("epoch"), "class_counts": counts, "best_top1": ck.get("best_top1"),
                    "calibration": ck.get("calibration")},
                   float(tau), bias, temp)

    @classmethod
    def from_onnx(cls, path: str | Path, tta: str | None = None) -> Inference:
        """An `Inference` over an exported ONNX file, run on the CPU by onnxruntime.

        Classes, preprocessing and the default TTA come from the file's cifarkit metadata. A model
        exported with a fixed batch size is fed batches of that size, the last one zero-padded.

        Args:
            path: the .onnx file.
            tta: test-time augmentation to use instead of the file's own.

        Raises:
            CheckpointError: the file is missing, not a loadable ONNX model, or its metadata is missing
                or invalid.
            CifarkitError: onnxruntime is not installed.
            ConfigError: `tta` is not a known mode.
        """
        session, meta = load_onnx(path)
        name = session.get_inputs()[0].name
        fixed = session.get_inputs()[0].shape[0]

        def forward(x: torch.Tensor) -> torch.Tensor:
            arr = x.detach().cpu().numpy().astype(np.float32)
            if isinstance(fixed, int):  # exported without --dynamic-batch: fixed-size batches, last one padded
                n = len(arr)
                pad = (-n) % fixed
                arr = np.concatenate([arr, np.zeros((pad, *arr.shape[1:]), np.float32)]) if pad else arr
                outs = [session.run(None, {name: arr[i:i + fixed]})[0] for i in range(0, len(arr), fixed)]
                return torch.from_numpy(np.concatenate(outs)[:n]).float()
            return torch.from_numpy(session.run(None, {name: arr})[0]).float()

        return cls(forward, meta["classes"], meta["preprocess"], check_tta(tta) or meta.get("tta", "none"),
                   "fp32", 256, str(path), meta={"model": meta["model"]}, logit_adjust=meta["logit_adjust"],
                   temperature=meta["temperature"])  # both already in the graph; here for display

    # ---- inference --------------------------------------------------------------------------
    def logits(self, images: torch.Tensor | Sequence[torch.Tensor], tta: str | None = None) -> torch.Tensor:
        """uint8 images, (N, 3, H, W) or a list of (3, H, W) of any sizes -> float32 logits (N, C) on the CPU."""
        return predict_logits(self.forward, images, self.prep, self.batch_size, check_tta(tta) or self.tta,
                              self.device)

    def settings(self, tta: str | None = None) -> dict[str, Any]:
        """What a result was computed with (tta, precision, logit_adjust, and the temperature when a
        calibrated model has one): in every --json record and metrics file; `describe` is the text
        commands print."""
        return {"tta": check_tta(tta) or self.tta, "precision": self.precision, "logit_adjust": self.logit_adjust,
                **({"temperature": self.temperature} if self.temperature != 1.0 else {})}


def describe(settings: dict[str, Any]) -> str:
    """`settings()` as commands print it: "tta flip_translate, bf16" (+ ", logit-adjust 1" when on)."""
    tau = settings.get("logit_adjust") or 0.0
    temp = settings.get("temperature")
    return (f"tta {settings['tta']}, {settings['precision']}" + (f", logit-adjust {tau:g}" if tau else "")
            + (f", temperature {temp:.3g}" if temp else ""))


# What `cifarkit calibrate` can fit (infer.calibration searches this range): a temperature outside
# it was not written by cifarkit, and a tiny one (1e-300) turns every score into NaN.
TEMPERATURE_RANGE = (0.05, 20.0)


def check_temperature(t: Any, path: str | Path) -> float:
    """A checkpoint's (or the caller's) softmax temperature: a finite number in TEMPERATURE_RANGE.

    Raises:
        CheckpointError: anything else (NaN, 0, 1e-300, a string): the file is damaged or edited.
    """
    lo, hi = TEMPERATURE_RANGE
    # the fitted T can sit on an end of the range up to rounding (exp(log(0.05)))
    if isinstance(t, bool) or not (isinstance(t, int | float) and math.isfinite(t)
                                   and lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)):
        raise CheckpointError(f"{path}: its temperature {t!r} is not a number in [{lo:g}, {hi:g}] (what cifarkit "
                              "calibrate fits); the file is damaged or was edited (recalibrate with cifarkit "
                              "calibrate)")
    return float(t)


def checkpoint_label(result: dict[str, Any]) -> str:
    """Where a printed top-1 comes from: "run/best.pt (epoch 4)" (a checkpoint's stored epoch counts
    from 1; an exported model has none)."""
    epoch = result.get("epoch")
    return str(result["checkpoint"]) + (f" (epoch {epoch})" if isinstance(epoch, int) else "")


def check_tau(tau: float) -> float:
    """`tau` unchanged when it is a finite number >= 0 (a post-hoc logit adjustment).

    Raises:
        ConfigError: it is negative, NaN or infinite.
    """
    if isinstance(tau, bool) or not (isinstance(tau, int | float) and math.isfinite(tau) and tau >= 0):
        raise ConfigError(f"--logit-adjust {tau!r}: give a finite number >= 0 (0 = off, 1 = Menon et al.'s tau)")
    return float(tau)


def load_onnx(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(onnxruntime session, validated cifarkit metadata: classes, Preprocess, tta, model, logit_adjust)."""
    ort = require("onnxruntime", "ONNX inference")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        raise CheckpointError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:160]})") from None
    raw = session.get_modelmeta().custom_metadata_map.get("cifarkit")
    if raw is None:
        raise CheckpointError(f"{path}: has no cifarkit metadata (classes, preprocessing); export it with "
                              "`cifarkit export`")
    try:
        meta = json.loads(raw) if len(raw) < 1 << 20 else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its cifarkit metadata is not a JSON object; re-export it with "
                              "`cifarkit export`")
    classes = check_classes(meta.get("classes"), path)
    prep = check_preprocess(meta.get("preprocess"), path)
    out = session.get_outputs()[0].shape
    if len(out) == 2 and isinstance(out[1], int) and out[1] != len(classes):
        raise CheckpointError(f"{path}: the model gives {out[1]} logits but its metadata names {len(classes)} "
                              "classes; re-export it with `cifarkit export`")
    tta = meta.get("tta", "none")
    if tta not in TTA_MODES:
        raise CheckpointError(f"{path}: metadata tta {tta!r} is not one of {', '.join(TTA_MODES)}")
    tau = meta.get("logit_adjust", 0.0)
    if not (isinstance(tau, int | float) and not isinstance(tau, bool) and math.isfinite(tau) and tau >= 0):
        raise CheckpointError(f"{path}: metadata logit_adjust {tau!r} is not a number >= 0")
    temperature = check_temperature(meta.get("temperature", 1.0), path)
    return session, {"classes": classes, "preprocess": prep, "tta": tta, "model": str(meta.get("model", "")),
                     "logit_adjust": float(tau), "temperature": temperature}


def evaluate_checkpoint(ckpt: str | Path, *, data: str | None = None, split: str | None = None,
                        tta: str | None = None, device: str = DEVICE_DEFAULT, logit_adjust: float | None = None,
                        precision: str | None = None,
                        exclude: Callable[[str], dict[tuple[str, int], str | None]] | None = None
                        ) -> dict[str, Any]:
    """Loss, top-1 and top-5 [%] of a checkpoint on its own evaluation split (or `data`/`split`).

    Returns also `split`, `n`, `tta`, `precision`, `logit_adjust`, `checkpoint`, `epoch` and `classes`;
    `predictions` holds the per-image predicted class ids, in the split's order. With `exclude`, a
    function of the evaluated split's name giving the (path, index) of images to leave out, as the
    data audit names them, each with its pixel hash or None (from `audit.leaked_images`),
    `without_excluded` holds the same metrics over the split without those images, and `excluded`
    their number.

    Raises:
        DataError: an image to exclude is not in the split or has other pixels there (the list is
            of another dataset or split).
        ConfigError: `exclude` on a run's validation carve-out (an audit names splits, not carve-outs).
    """
    inf = InferOptions(data=data, split=split, tta=tta, precision=precision, device=device,
                       logit_adjust=logit_adjust).load(ckpt)
    if inf.config is None:
        raise CifarkitError(f"{inf.source}: evaluating on a dataset needs the PyTorch checkpoint")
    if exclude is not None and split is None and data is None and inf.config.data.val_fraction > 0:
        raise ConfigError(f"{ckpt}: its run evaluates on a validation carve-out of train, which an audit does not "
                          f"name; pass --split {inf.config.data.test_split} (or --data and --split) with --exclude")
    ds, name = load_eval_set(inf.config, inf.classes, data, split)
    images, labels = to_chw_tensor(ds.images), torch.from_numpy(ds.labels)
    logits = inf.logits(images)
    m = metrics_from_logits(logits, labels)
    predicted = m.pop("predicted")
    extra: dict[str, Any] = {}
    if exclude is not None:
        keys = list(zip(ds.sources, ds.indices.tolist()))
        drop = exclude(name)
        at = {k: i for i, k in enumerate(keys)}
        missing = sorted(k for k in drop if k not in at)
        listed = [k for k in drop if k in at and drop[k]]
        hashes = pixel_hashes(ds.images[[at[k] for k in listed]]) if listed else []
        missing += sorted(k for k, h in zip(listed, hashes) if h.hex() != drop[k])
        if missing:
            path, index = missing[0]
            raise DataError(f"{len(missing)} images to exclude are not in the {name} split of "
                            f"{data or inf.config.data.root} (e.g. {path} #{index}: missing or other pixels); "
                            "exclude with the duplicates.csv of an audit of this dataset")
        keep = torch.tensor([k not in drop for k in keys], dtype=torch.bool)
        kept = metrics_from_logits(logits[keep], labels[keep])
        kept.pop("predicted")
        extra = {"excluded": int((~keep).sum()), "without_excluded": kept}
    return {**m, "split": name, **inf.settings(), "checkpoint": str(ckpt), "epoch": inf.meta.get("epoch"),
            "classes": inf.classes, "predictions": predicted, **extra}


def eval_data(inf: Inference, data: str | None = None, split: str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The evaluation images of a checkpoint's run (or of `data`/`split`): uint8 (N, 3, H, W), labels, name."""
    if inf.config is None:
        raise CifarkitError(f"{inf.source}: evaluating on a dataset needs the PyTorch checkpoint")
    return load_eval_split(inf.config, inf.classes, data, split)

