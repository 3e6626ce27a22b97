"""torchvision classifiers in the registry, with a CIFAR stem option for 32 px inputs.

`resnet*_cifar` is torchvision's ResNet with the usual CIFAR changes (3x3 stride-1 stem, no
max-pool): at 32 px the ImageNet stem would shrink the image to 8x8 before the first block.
Keeping torchvision's module names means MMClassification/torchvision ResNet weights map 1:1.
"""

from __future__ import annotations

from torch import nn

from cifarkit.errors import CheckpointError, ConfigError


def cifar_stem_(model: nn.Module, name: str) -> nn.Module:
    """Adapt an ImageNet torchvision model to 32 px inputs in place."""
    if hasattr(model, "conv1") and hasattr(model, "maxpool"):  # ResNet family
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif name.startswith("mobilenet_v2"):
        model.features[0][0].stride = (1, 1)  # 32 -> 32 instead of 16
        model.features[2].conv[1][0].stride = (1, 1)  # second downsampling too: final map 4x4
    else:
        raise ConfigError(f"model.cifar_stem: no CIFAR stem is defined for {name!r}; set it to false")
    return model


def torchvision_model(name: str, num_classes: int, cifar_stem: bool = False, pretrained: str = "",
                      **kwargs) -> nn.Module:
    """A torchvision classifier by name, with `num_classes` outputs.

    Args:
        name: a torchvision classification model (`resnet18`, `mobilenet_v2`, ...).
        num_classes: the number of outputs.
        cifar_stem: adapt the stem to 32 px inputs (ResNet and MobileNetV2 only).
        pretrained: "torchvision" loads torchvision's ImageNet weights and replaces the classifier;
            "" builds the model untrained.
        **kwargs: passed to torchvision's constructor.

    Raises:
        ConfigError: `name` is not a torchvision classifier, its classifier layer cannot be found,
            or no CIFAR stem is defined for it.
        CheckpointError: torchvision's weights could not be downloaded.
    """
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.name: {name!r} is not a torchvision classification model")
    if pretrained == "torchvision":
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
        except Exception as e:  # network errors come in many types (URLError, OSError, ...)
            raise CheckpointError(f"model.pretrained: torchvision weights for {name} could not be "
                                  f"downloaded ({type(e).__name__}); download them elsewhere and set "
                                  "model.pretrained to the local .pth file") from None
        _replace_classifier(model, num_classes)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if cifar_stem:
        cifar_stem_(model, name)
    return model


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    for attr in ("fc", "classifier", "head", "heads"):
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Linear):
            setattr(model, attr, nn.Linear(mod.in_features, num_classes))
            return
        if isinstance(mod, nn.Sequential) and isinstance(mod[-1], nn.Linear):
            mod[-1] = nn.Linear(mod[-1].in_features, num_classes)
            return
    raise ConfigError("cannot find the classifier layer to resize for num_classes")
