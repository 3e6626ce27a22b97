"""Model registry: `create_model(name, num_classes, ...)` and `list_models()`.

Registered: `airnet` (the speed recipe's network), CIFAR ResNets (`resnet18_cifar`, ...),
`mobilenet_v2`, any other torchvision classifier by its own name, and `timm/<name>` when timm is
installed. Each entry may name its Grad-CAM layer; otherwise `cam.default_layer` finds the
last spatial block. Model-specific training behaviour is declared on the entry as `TrainHooks`, so the
generic engine calls hooks by name instead of probing models with `hasattr`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cifarkit.errors import ConfigError


@dataclass(frozen=True)
class TrainHooks:
    """What a model needs from the training loop beyond forward/backward (all optional).

    data_init(model, images): data-dependent init from normalised training images (N, 3, H, W),
        run once on a fresh (not pretrained, not resumed) model; airnet's whitening filters.
    epoch_start(model, epoch, train_cfg): before each epoch (0-based); airnet freezes its
        whitening bias after `train.whiten_bias_epochs`.
    own_lr_params(model): parameters that get their own lr group and schedule when
        `optim.whiten_bias_decay` is set (airnet's whitening bias)."""
    data_init: Callable[[nn.Module, torch.Tensor], None] | None = None
    epoch_start: Callable[[nn.Module, int, Any], None] | None = None
    own_lr_params: Callable[[nn.Module], list[nn.Parameter]] | None = None


@dataclass
class ModelEntry:
    """A registered model: how to build it and what `cifarkit models`, Grad-CAM and training read.

    Attributes:
        name: the registry name (`model.name`).
        build: the constructor, called as `build(num_classes, **kwargs)`.
        description: one line for `cifarkit models`.
        cam_layer: the module Grad-CAM uses; None lets `cam.default_layer` find the last spatial block.
        input_size: the input size the model is meant for [px], used for its MACs.
        hooks: its `TrainHooks`.
    """
    name: str
    build: Callable[..., nn.Module]
    description: str
    cam_layer: str | None = None
    input_size: int = 32
    hooks: TrainHooks = field(default_factory=TrainHooks)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, description: str, cam_layer: str | None = None, input_size: int = 32,
             hooks: TrainHooks | None = None):
    """A decorator that registers a model constructor under `name`.

    Args:
        name: the registry name, used as `model.name`.
        description: one line for `cifarkit models`.
        cam_layer: the dotted name of Grad-CAM's target module, or None.
        input_size: the input size the model is meant for [px].
        hooks: its model-specific training hooks.

    Returns:
        The decorator; it returns the constructor unchanged.
    """
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, fn, description, cam_layer, input_size, hooks or TrainHooks())
        return fn

    return deco


def _airnet_epoch_start(model: nn.Module, epoch: int, train_cfg: Any) -> None:
    if train_cfg.whiten_bias_epochs:  # airbench94: the whitening bias trains for the first 3 epochs only
        model.set_whiten_bias_trainable(epoch < train_cfg.whiten_bias_epochs)


_AIRNET_HOOKS = TrainHooks(data_init=lambda model, images: model.data_init(images),
                           epoch_start=_airnet_epoch_start,
                           own_lr_params=lambda model: [model.whiten.bias])


@register("airnet", "airbench94 network: whitening conv + 3 conv groups, 2.0M params", "layers.2",
          hooks=_AIRNET_HOOKS)
def _airnet(num_classes: int, **kw) -> nn.Module:
    from cifarkit.models.airnet import AirNet

    return AirNet(num_classes, **kw)


def _cifar_resnet(arch: str):
    def build(num_classes: int, **kw) -> nn.Module:
        from cifarkit.models.torchvision_models import torchvision_model

        kw.pop("cifar_stem", None)  # always on for these; model.cifar_stem=true only restates it
        return torchvision_model(arch, num_classes, cifar_stem=True, **kw)

    return build


for _arch in ("resnet18", "resnet34", "resnet50"):
    register(f"{_arch}_cifar", f"torchvision {_arch} with a 3x3 stride-1 stem and no max-pool (32 px)",
             "layer4")(_cifar_resnet(_arch))


@register("mobilenet_v2", "torchvision MobileNetV2 (model.cifar_stem: true for 32 px inputs)", "features",
          input_size=224)
def _mobilenet_v2(num_classes: int, **kw) -> nn.Module:
    from cifarkit.models.torchvision_models import torchvision_model

    return torchvision_model("mobilenet_v2", num_classes, **kw)


def list_models(include_torchvision: bool = False) -> list[str]:
    """The registered model names, sorted; with `include_torchvision`, then every other torchvision classifier."""
    names = sorted(_REGISTRY)
    if include_torchvision:
        import torchvision

        names += [n for n in torchvision.models.list_models(module=torchvision.models) if n not in _REGISTRY]
    return names


def get_entry(name: str) -> ModelEntry | None:
    """The registry entry of model `name`, or None when it is not registered (torchvision or timm)."""
    return _REGISTRY.get(name)


def train_hooks(name: str) -> TrainHooks:
    """The training hooks of model `name` (none for unregistered torchvision/timm models)."""
    entry = _REGISTRY.get(name)
    return entry.hooks if entry is not None else TrainHooks()


# what create_model itself passes to the constructor, so model.kwargs must not (cifar_stem, pretrained)
_SET_BY_CREATE = {"self", "num_classes", "cifar_stem", "pretrained", "weights", "progress"}


def accepted_kwargs(name: str) -> list[str] | None:
    """The keyword arguments `model.kwargs` may give model `name` (None: not known here, e.g.
    timm models or an unknown name, which create_model reports). Read from the constructor's
    signature: AirNet's, or the class a torchvision builder is annotated to return; parameters
    without a default are the ones the builder fills in itself (ResNet's block and layers)."""
    import inspect

    if name == "airnet":
        from cifarkit.models.airnet import AirNet

        target = AirNet
    else:
        import torchvision

        arch = name.removesuffix("_cifar") if name in _REGISTRY else name
        if arch not in torchvision.models.list_models(module=torchvision.models):
            return None
        target = inspect.signature(torchvision.models.get_model_builder(arch)).return_annotation
        if not inspect.isclass(target):
            return None
    params = inspect.signature(target.__init__).parameters.values()
    return sorted(p.name for p in params if p.name not in _SET_BY_CREATE and p.default is not inspect.Parameter.empty
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def create_model(name: str, num_classes: int = 10, pretrained: str = "", cifar_stem: bool = False,
                 **kwargs) -> nn.Module:
    """Build a registered model; `pretrained` is a local weights file (or 'torchvision')."""
    tv_pretrained = pretrained == "torchvision"
    if name.startswith("timm/"):
        try:
            import timm
        except ImportError:
            raise ConfigError(f"model.name {name!r} needs timm: pip install 'cifarkit[timm]'") from None
        try:
            model = timm.create_model(name[5:], num_classes=num_classes, pretrained=tv_pretrained, **kwargs)
        except RuntimeError as e:
            raise ConfigError(f"model.name: {e}") from None
    elif name in _REGISTRY:
        if cifar_stem:
            kwargs["cifar_stem"] = True
        if tv_pretrained:
            kwargs["pretrained"] = "torchvision"
        if name == "airnet" and (cifar_stem or tv_pretrained):
            raise ConfigError("airnet has no torchvision weights or CIFAR stem option; unset "
                              "model.pretrained/model.cifar_stem")
        try:
            model = _REGISTRY[name].build(num_classes, **kwargs)
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as e:  # kwargs' names are checked
            # at load, their values only here: widths [] or [0, 0, 0] or 10^5 channels
            first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ConfigError(f"model.kwargs {kwargs}: model {name!r} cannot be built with them ({first}); "
                              "see `cifarkit models` for its defaults") from None
    else:
        import torchvision

        if name in torchvision.models.list_models(module=torchvision.models):
            from cifarkit.models.torchvision_models import torchvision_model

            model = torchvision_model(name, num_classes, cifar_stem,
                                      "torchvision" if tv_pretrained else "", **kwargs)
        else:
            import difflib

            near = difflib.get_close_matches(name, list_models(True), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else "; see `cifarkit models`"
            raise ConfigError(f"model.name: unknown model {name!r}{hint}")
    if pretrained and not tv_pretrained:
        from cifarkit.models.weights import load_pretrained

        report = load_pretrained(model, pretrained, name)
        model.pretrained_report = report.summary()  # type: ignore[attr-defined]
    return model


def count_params(model: nn.Module) -> int:
    """The number of parameters of `model`, trainable and frozen."""
    return sum(p.numel() for p in model.parameters())


MAX_INPUT_SIZE = 4096  # px; (1, 3, 4096, 4096) float32 is 200 MB of input, far past any classifier


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of one forward pass on a (1, 3, S, S) input (FLOPs / 2).

    `input_size` comes from the user (`cifarkit models --input-size`): a size the model cannot
    take (e.g. 1 px through stride-2 stages) is a ConfigError line, not a traceback.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if not 1 <= input_size <= MAX_INPUT_SIZE:
        raise ConfigError(f"--input-size {input_size}: use 1..{MAX_INPUT_SIZE} px (32 for CIFAR models)")
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, input_size, input_size))
    except RuntimeError as e:  # the forward on zeros can only fail on the shape
        raise ConfigError(f"--input-size {input_size}: too small for {type(model).__name__} "
                          f"({str(e).splitlines()[0]}); try 32") from None
    finally:
        model.train(was)
    return fc.get_total_flops() // 2


def model_stats(name: str, num_classes: int, input_size: int, compute: bool = True) -> tuple[int, int] | None:
    """(parameters, MACs at `input_size`) of model `name`, from a small cache when known.

    Counting MACs runs a forward pass under torch's FlopCounterMode (seconds for a large
    torchvision model, minutes for all of them), so each count is kept in
    `$CIFARKIT_CACHE/model_stats.json` keyed by name, classes, size and the torch, torchvision
    and cifarkit versions. With `compute=False` an uncached model gives None instead.

    Raises:
        ConfigError: an unknown model, or an input size it cannot take.
    """
    import json
    import os
    from importlib.metadata import version

    from cifarkit import __version__, cache_dir

    try:
        tv = version("torchvision")
    except Exception:  # noqa: BLE001 - a source checkout of torchvision has no metadata
        tv = "?"
    import torch

    key = f"{name}|{num_classes}|{input_size}|torch {torch.__version__}|torchvision {tv}|cifarkit {__version__}"
    path = cache_dir() / "model_stats.json"
    try:
        cached = json.loads(path.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}
    hit = cached.get(key)
    if isinstance(hit, list) and len(hit) == 2 and all(isinstance(v, int) for v in hit):
        return hit[0], hit[1]
    if not compute:
        return None
    model = create_model(name, num_classes)
    stats = (count_params(model), count_macs(model, input_size))
    cached[key] = list(stats)
    try:  # a cache that cannot be written only costs the next listing its time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=0))
        os.replace(tmp, path)
    except OSError:
        pass
    return stats
