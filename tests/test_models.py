"""Model factories: shapes for every family, parameter counts of the paper architectures."""

from __future__ import annotations

import inspect

import pytest
import torch

from hessvalley.config import MODEL_KWARGS
from hessvalley.models import FACTORIES, build_model, has_batch_norm


def test_config_table_matches_factory_signatures():
    assert set(MODEL_KWARGS) == set(FACTORIES)
    for name, factory in FACTORIES.items():
        params = set(inspect.signature(factory).parameters) - {"input_shape", "n_classes"}
        assert params == MODEL_KWARGS[name], name


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)])
def test_every_family_maps_batches_to_logits(name, shape):
    model = build_model({"name": name}, shape, 7)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize(
    ("spec", "n_classes", "count"),
    [
        ({"name": "resnet56"}, 10, 853_018),  # He et al. 2016: 0.85M
        ({"name": "vgg16"}, 10, 14_724_042),
        ({"name": "mlp", "widths": [70]}, 10, 49 * 70 + 70 + 70 * 10 + 10),  # W&S A.4 on 7x7
    ],
)
def test_parameter_counts(spec, n_classes, count):
    shape = (1, 7, 7) if spec["name"] == "mlp" else (3, 32, 32)
    model = build_model(spec, shape, n_classes)
    assert sum(p.numel() for p in model.parameters()) == count


def test_densenet_widths_follow_growth_and_compression():
    # W&S A.2.1: blocks [6, 12, 24, 16], k = 12, compression 0.5: 24 -> 96 -> 48 -> 192 -> 96
    # -> 384 -> 192 -> 384 channels into the classifier.
    model = build_model({"name": "densenet"}, (3, 32, 32), 100)
    assert model.linear.in_features == 384 and model.linear.out_features == 100
    bottlenecks = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(bottlenecks) == 6 + 12 + 24 + 16


def test_batch_norm_flag():
    assert has_batch_norm(build_model({"name": "vgg11", "batch_norm": True}, (3, 32, 32), 10))
    assert not has_batch_norm(build_model({"name": "vgg11", "batch_norm": False}, (3, 32, 32), 10))
    assert not has_batch_norm(build_model({"name": "ws_cnn"}, (3, 32, 32), 10))
