"""Model factories by name; input shape and class count come from the dataset."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from hessvalley.models.convnet import convnet4, ws_cnn
from hessvalley.models.densenet import densenet
from hessvalley.models.mlp import mlp
from hessvalley.models.preact_resnet import preact_resnet18
from hessvalley.models.resnet_cifar import resnet56
from hessvalley.models.vgg import vgg11, vgg16

FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "ws_cnn": ws_cnn,
    "convnet4": convnet4,
    "preact_resnet18": preact_resnet18,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "densenet": densenet,
    "resnet56": resnet56,
}


def build_model(spec: Mapping[str, Any], input_shape: Sequence[int], n_classes: int) -> nn.Module:
    """Instantiate ``spec["name"]`` with the remaining keys as keyword arguments."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        factory = FACTORIES[spec["name"]]
    except KeyError:
        raise ValueError(f"unknown model {spec['name']!r}; known: {sorted(FACTORIES)}") from None
    return factory(tuple(input_shape), int(n_classes), **kwargs)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
